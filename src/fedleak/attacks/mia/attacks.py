"""Membership inference attacks as pure functions over a run's stored signals.

Every attack takes a :class:`~fedleak.signals.loading.Signals` (``[R, K, N]`` arrays: R recorded
rounds, K clients, N candidates) and returns one float score per candidate, **higher = member**.
Nothing here trains or touches a model, so re-scoring a run with other options is instant.

Notation: ``t`` is the target client, ``r`` a recorded round, ``m[r, k, n]`` a per-candidate
measure recorded for client ``k`` (its loss under k's uploaded model, or the cosine between the
candidate's gradient at the round's global model and k's update Δ_k = θ_global − θ_k).

Single round (at one recorded round ``r``, default the last one the target took part in):

* ``blackbox-loss``  −loss[r, t]           (Yeom et al. 2018)
* ``grad-cosine``    cos[r, t]             (Li et al. 2023)
* ``grad-diff``      diff[r, t] = 2⟨g, Δ_t⟩ − ‖g‖² = ‖Δ_t‖² − ‖Δ_t − g‖²
* ``grad-norm``      −gnorm2[r, t] = −‖g‖²  (g at the global model: client-agnostic, spec W7)

Temporal (mean over every recorded round in which the target took part):

* ``loss-series``  mean_r −loss[r, t];  ``avg-cosine``  mean_r cos[r, t];
  ``avg-diff``  mean_r diff[r, t];  ``avg-norm``  mean_r −gnorm2[r, t]

FedMIA (Zhu et al., arXiv:2402.06289v3, Eq. 8-12) — ``fedmia-i`` uses m = −loss, ``fedmia-ii``
m = cos. For each round r and candidate n, a Gaussian null is fitted to the values of the
*shadows* (the non-target clients that took part in round r)::

    μ_r(n) = mean_k m[r, k, n],   σ²_r(n) = Σ_k (m[r, k, n] − μ_r(n))² / (S_r − ddof) + eps
    z_r(n) = (m[r, t, n] − μ_r(n)) / σ_r(n),        Λ̂_r(n) = Φ(z_r(n))

and the per-round scores are aggregated over the rounds (``aggregation``):

* ``mean`` (the paper, Eq. 12):   mean_r Φ(z_r)
* ``mean-log``:                   mean_r log Φ(z_r)  (the original's ``log_lira`` with the sign fixed)
* ``stouffer``:                   Σ_r z_r / √R   (Stouffer's Z of the one-tailed p-values p_r = 1 − Φ(z_r))
* ``fisher``:                     −2 Σ_r log(1 − Φ(z_r))   (Fisher's χ² statistic of the same p-values)
* ``max``:                        max_r z_r

Options: ``ddof`` (0 = population variance, as the paper and the code), ``eps`` (1e-8),
``outlier_filter`` (the paper's 3σ rule, Eq. 8: drop shadows with m ≥ μ + 3·std, then refit; with
ddof = 0 the largest z-score any one of S values can have is √(S − 1), with ddof = 1 it is
(S − 1)/√S, so the filter **cannot remove anything with S ≤ 9 shadows**; S = 10 with ddof = 0 reaches
exactly 3 only when nine shadows are identical; in practice it first acts at S ≥ 11, i.e. K ≥ 12),
``robust`` (null μ = median, σ = 1.4826·MAD of the shadows, + eps).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
from scipy.special import log_ndtr, ndtr

from fedleak.attacks.mia.names import (  # noqa: F401 - AGGREGATIONS, FEDMIA_OPTIONS, resolve_names re-exported
    AGGREGATIONS,
    ATTACKS,
    FEDMIA_OPTIONS,
    AttackInfo,
    check_fedmia_options,
    resolve_names,
    runnable_names,
)
from fedleak.errors import FedleakError
from fedleak.signals.loading import Signals
from fedleak.signals.store import StoreError

MAD_TO_SIGMA = 1.482602218505602  # 1 / Φ^{-1}(3/4): MAD of a Gaussian times this = σ
_NEGATED = {"loss", "gnorm2"}  # measures where smaller means "member"


# --------------------------------------------------------------------------- helpers


def resolve_target(signals: Signals, target: int | None) -> int:
    t = signals.target if target is None else int(target)
    if not 0 <= t < signals.num_clients:
        raise StoreError(f"target client {t} does not exist; this run has clients 0..{signals.num_clients - 1}")
    return t


def round_index(signals: Signals, round: int | None, target: int) -> int:
    """Index into the recorded rounds of a round number (0-based, as stored).

    ``None`` picks the last recorded round in which the target took part; a negative value counts
    recorded rounds from the end (-1 = last).
    """
    part = np.asarray(signals.participated, bool)[:, target]
    rounds = [int(r) for r in signals.rounds]
    if round is None:
        ok = np.flatnonzero(part)
        if ok.size == 0:
            raise StoreError(f"target client {target} took part in none of the recorded rounds {rounds}")
        return int(ok[-1])
    if round < 0:
        if -round > len(rounds):
            raise StoreError(f"round {round}: only {len(rounds)} rounds were recorded ({rounds})")
        i = len(rounds) + round
    else:
        if round not in rounds:
            raise StoreError(f"round {round} was not recorded; recorded (0-based) rounds: {rounds}")
        i = rounds.index(round)
    if not part[i]:
        ok = [rounds[j] for j in np.flatnonzero(part)]
        raise StoreError(
            f"target client {target} did not take part in round {rounds[i]}; pick one of {ok}"
        )
    return i


def measure_values(signals: Signals, measure: str) -> np.ndarray:
    """[R, K, N] measure oriented so that higher = member (loss and gnorm2 are negated)."""
    m = signals.measure(measure)
    return -m if measure in _NEGATED else m


def _target_rounds(signals: Signals, target: int) -> np.ndarray:
    idx = np.flatnonzero(np.asarray(signals.participated, bool)[:, target])
    if idx.size == 0:
        raise StoreError(f"target client {target} took part in none of the recorded rounds {list(signals.rounds)}")
    return idx


# --------------------------------------------------------------------------- single round


def _single(measure: str, signals: Signals, round: int | None, target: int | None) -> np.ndarray:
    t = resolve_target(signals, target)
    i = round_index(signals, round, t)
    m = signals.measure(measure)[i, t]
    return (-m if measure in _NEGATED else m).astype(np.float64)


def blackbox_loss(signals: Signals, *, round: int | None = None, target: int | None = None, **_: Any) -> np.ndarray:
    """−loss of each candidate under the target's uploaded model at one round."""
    return _single("loss", signals, round, target)


def grad_cosine(signals: Signals, *, round: int | None = None, target: int | None = None, **_: Any) -> np.ndarray:
    """cos(g(x), Δ_target) at one round."""
    return _single("cos", signals, round, target)


def grad_diff(signals: Signals, *, round: int | None = None, target: int | None = None, **_: Any) -> np.ndarray:
    """2⟨g(x), Δ_target⟩ − ‖g(x)‖² at one round."""
    return _single("diff", signals, round, target)


def grad_norm(signals: Signals, *, round: int | None = None, target: int | None = None, **_: Any) -> np.ndarray:
    """−‖g(x)‖² (gradient at the round's global model) at one round."""
    return _single("gnorm2", signals, round, target)


# --------------------------------------------------------------------------- temporal


def _temporal(measure: str, signals: Signals, target: int | None) -> np.ndarray:
    t = resolve_target(signals, target)
    idx = _target_rounds(signals, t)
    m = signals.measure(measure)[idx, t].astype(np.float64)
    s = m.mean(axis=0)
    return -s if measure in _NEGATED else s


def loss_series(signals: Signals, *, target: int | None = None, **_: Any) -> np.ndarray:
    """Mean over recorded rounds of −loss under the target's model."""
    return _temporal("loss", signals, target)


def avg_cosine(signals: Signals, *, target: int | None = None, **_: Any) -> np.ndarray:
    """Mean over recorded rounds of cos(g, Δ_target)."""
    return _temporal("cos", signals, target)


def avg_diff(signals: Signals, *, target: int | None = None, **_: Any) -> np.ndarray:
    """Mean over recorded rounds of the grad-diff."""
    return _temporal("diff", signals, target)


def avg_norm(signals: Signals, *, target: int | None = None, **_: Any) -> np.ndarray:
    """Mean over recorded rounds of −‖g‖²."""
    return _temporal("gnorm2", signals, target)


# --------------------------------------------------------------------------- FedMIA


@dataclass
class FedMIARounds:
    """Per-round FedMIA statistics: ``z[i, n]`` for the recorded rounds ``rounds[i]`` it could use."""

    rounds: np.ndarray  # [R'] round numbers used
    z: np.ndarray  # [R', N] standardised target value under the shadows' null
    n_shadows: np.ndarray  # [R'] shadows per round (before any filter)
    n_removed: int  # shadow values removed by the 3σ filter, over all rounds and candidates

    @property
    def cdf(self) -> np.ndarray:
        """Λ̂_r(n) = Φ(z): the paper's per-round score."""
        return ndtr(self.z)


def _null_dense(
    s: np.ndarray, ddof: int, eps: float, outlier_filter: bool, robust: bool
) -> tuple[np.ndarray, np.ndarray, int]:
    """Null mean and std over axis 1 of shadow values s [G, S, N] -> ([G, N], [G, N], n_removed)."""
    n_sh = s.shape[1]
    if robust:
        mu = np.median(s, axis=1)
        mad = np.median(np.abs(s - mu[:, None, :]), axis=1)
        return mu, np.sqrt((MAD_TO_SIGMA * mad) ** 2 + eps), 0
    mu = s.mean(axis=1)
    dev2 = (s - mu[:, None, :]) ** 2
    var = dev2.sum(axis=1) / (n_sh - ddof)
    if not outlier_filter:
        return mu, np.sqrt(var + eps), 0
    keep = s < (mu + 3.0 * np.sqrt(var))[:, None, :]  # the paper's strict rule
    cnt = keep.sum(axis=1)
    none = cnt == 0  # only when all shadow values are equal: keep them all (same μ, σ as "[min]")
    if none.any():
        keep |= none[:, None, :]
        cnt = keep.sum(axis=1)
    n_removed = int(keep.size - keep.sum())
    if n_removed == 0:
        return mu, np.sqrt(var + eps), 0
    mu2 = np.where(keep, s, 0.0).sum(axis=1) / cnt
    ss = np.where(keep, (s - mu2[:, None, :]) ** 2, 0.0).sum(axis=1)
    var2 = ss / np.maximum(cnt - ddof, 1)
    return mu2, np.sqrt(var2 + eps), n_removed


def fedmia_rounds(
    signals: Signals,
    measure: str = "cos",
    *,
    target: int | None = None,
    ddof: int = 0,
    eps: float = 1e-8,
    outlier_filter: bool = False,
    robust: bool = False,
) -> FedMIARounds:
    """Per-round one-tailed FedMIA statistics (see the module docstring).

    A round is used when the target took part in it and more than ``ddof`` shadows did
    (``robust``: at least one). Shadows that did not take part (NaN rows) are ignored.
    """
    check_fedmia_options({"ddof": ddof, "eps": eps, "outlier_filter": outlier_filter, "robust": robust})
    t = resolve_target(signals, target)
    m = measure_values(signals, measure)
    part = np.asarray(signals.participated, bool)
    shadow = part.copy()
    shadow[:, t] = False
    n_sh = shadow.sum(axis=1)
    need = max(ddof + 1, 1)
    use = np.flatnonzero(part[:, t] & (n_sh >= need))
    if use.size == 0:
        raise StoreError(
            f"FedMIA needs rounds where target client {t} "
            f"took part together with at least {need} other clients; none of the recorded rounds qualifies"
            + (f" (ddof={ddof} needs ddof+1 shadows; lower --ddof)" if ddof > 0 else "")
        )
    N = m.shape[2]
    z = np.empty((use.size, N), np.float64)
    removed = 0
    # rounds with the same set of shadows are processed together as one dense block
    patterns: dict[bytes, list[int]] = {}
    for j, i in enumerate(use):
        patterns.setdefault(shadow[i].tobytes(), []).append(j)
    for key, js in patterns.items():
        rows = use[js]
        ks = np.flatnonzero(np.frombuffer(key, dtype=bool))
        s = m[rows][:, ks, :].astype(np.float64)  # [G, S, N]
        mu, sd, nr = _null_dense(s, ddof, eps, outlier_filter, robust)
        removed += nr
        z[js] = (m[rows, t, :].astype(np.float64) - mu) / sd
    return FedMIARounds(rounds=np.asarray(signals.rounds)[use], z=z, n_shadows=n_sh[use], n_removed=removed)


def aggregate(z: np.ndarray, aggregation: str = "mean") -> np.ndarray:
    """Combine per-round statistics z [R, N] into one score per candidate (higher = member)."""
    R = z.shape[0]
    if aggregation == "mean":
        return ndtr(z).mean(axis=0)
    if aggregation == "mean-log":
        return log_ndtr(z).mean(axis=0)
    if aggregation == "stouffer":
        return z.sum(axis=0) / np.sqrt(R)
    if aggregation == "fisher":
        return -2.0 * log_ndtr(-z).sum(axis=0)
    if aggregation == "max":
        return z.max(axis=0)
    raise FedleakError(f"unknown FedMIA aggregation '{aggregation}'; choose from {', '.join(AGGREGATIONS)}")


def fedmia(
    signals: Signals,
    measure: str = "cos",
    *,
    target: int | None = None,
    aggregation: str = "mean",
    ddof: int = 0,
    eps: float = 1e-8,
    outlier_filter: bool = False,
    robust: bool = False,
    **_: Any,
) -> np.ndarray:
    """FedMIA score per candidate: per-round one-tailed Gaussian test against the shadows, aggregated."""
    check_fedmia_options({"aggregation": aggregation})
    fr = fedmia_rounds(
        signals, measure, target=target, ddof=ddof, eps=eps, outlier_filter=outlier_filter, robust=robust
    )
    return aggregate(fr.z, aggregation)


def fedmia_i(signals: Signals, **kw: Any) -> np.ndarray:
    """FedMIA-I: the loss measure (m = −loss)."""
    kw.pop("round", None)
    return fedmia(signals, "loss", **kw)


def fedmia_ii(signals: Signals, **kw: Any) -> np.ndarray:
    """FedMIA-II: the cosine measure."""
    kw.pop("round", None)
    return fedmia(signals, "cos", **kw)


# --------------------------------------------------------------------------- registry


# every membership attack, in the order of the reports (the registry is in names.py)
for _info in (
    AttackInfo("blackbox-loss", "Blackbox-Loss", "single", "loss", "−loss under the target's model, one round", blackbox_loss),
    AttackInfo("grad-cosine", "Grad-Cosine", "single", "cos", "cos(g, Δ_target), one round", grad_cosine),
    AttackInfo("grad-diff", "Grad-Diff", "single", "diff", "2⟨g, Δ_target⟩ − ‖g‖², one round", grad_diff),
    AttackInfo("grad-norm", "Grad-Norm", "single", "gnorm2", "−‖g‖² at the global model, one round", grad_norm),
    AttackInfo("loss-series", "Loss-Series", "temporal", "loss", "mean over rounds of −loss", loss_series),
    AttackInfo("avg-cosine", "Avg-Cosine", "temporal", "cos", "mean over rounds of cos(g, Δ_target)", avg_cosine),
    AttackInfo("avg-diff", "Avg-Diff", "temporal", "diff", "mean over rounds of the grad-diff", avg_diff),
    AttackInfo("avg-norm", "Avg-Norm", "temporal", "gnorm2", "mean over rounds of −‖g‖²", avg_norm),
    AttackInfo("fedmia-i", "FedMIA-I", "fedmia", "loss", "one-tailed test of −loss against the other clients", fedmia_i),
    AttackInfo("fedmia-ii", "FedMIA-II", "fedmia", "cos", "one-tailed test of the cosine against the other clients", fedmia_ii),
):
    ATTACKS.add(_info.name, _info)


def run_attacks(
    signals: Signals,
    names: Iterable[str] | str | None = None,
    *,
    round: int | None = None,
    target: int | None = None,
    **fedmia_options: Any,
) -> dict[str, np.ndarray]:
    """Scores of several attacks: {name: [N] float64}, higher = member.

    ``round`` (a recorded 0-based round number, default: the last one the target took part in) is
    used by the single-round attacks; ``fedmia_options`` (aggregation, ddof, eps, outlier_filter,
    robust) go to FedMIA-I/II.
    """
    check_fedmia_options(fedmia_options)
    out: dict[str, np.ndarray] = {}
    for name in runnable_names(signals, names):
        kind = ATTACKS[name].kind
        if kind == "single":
            out[name] = ATTACKS[name](signals, round=round, target=target)
        elif kind == "temporal":
            out[name] = ATTACKS[name](signals, target=target)
        else:
            out[name] = ATTACKS[name](signals, target=target, **fedmia_options)
    return out
