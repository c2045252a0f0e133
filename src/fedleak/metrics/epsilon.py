"""Empirical ε from an attack's ROC: the standard statistical lower bound for (ε, δ)-DP, and the μ-GDP curve.

**The bound** (Kairouz, Oh & Viswanath 2015; used for auditing by Jagielski, Ullman & Oprea 2020 and Nasr et al.
2021). If a mechanism is (ε, δ)-DP with respect to one record, every test that decides "member" from its output
has a true-positive rate TPR and false-positive rate FPR with

    TPR ≤ e^ε · FPR + δ      and      1 − FPR ≤ e^ε · (1 − TPR) + δ,

hence ``ε ≥ max(log((TPR − δ)/FPR), log((1 − FPR − δ)/(1 − TPR)), 0)``. A threshold ``t`` on the attack's score
("member" when ``score >= t``) is such a test. With ``tp`` of ``n_pos`` members and ``fp`` of ``n_neg``
non-members above ``t``, the one-sided Clopper–Pearson bounds ``TPR_lo = CP_lower(tp, n_pos; α/2)`` and
``FPR_hi = CP_upper(fp, n_neg; α/2)`` hold together with probability ≥ 1 − α (union bound), and the right-hand
side above is increasing in TPR and decreasing in FPR, so it evaluated at ``(TPR_lo, FPR_hi)`` is a lower bound
on ε at confidence 1 − α — **for a threshold fixed before looking at the counts.**

:func:`empirical_epsilon` therefore splits the candidates at random (seeded, stratified by label) into halves,
picks the threshold that maximises the bounded ε on the *selection* half, and evaluates the bound at that threshold
on the *evaluation* half only. The maximum over all thresholds of the bounded ε on all candidates is returned as
``optimistic``: it reuses the data that chose the threshold, so it is not a confidence bound.

**When it means anything.** The bound is about the mechanism that decided membership at random: it is a valid DP
lower bound only when each audited record was included by an independent random draw (canaries), so that TPR and
FPR are the rates of the test on two neighbouring input distributions. In a plain federated run the membership of
the candidates is fixed by the data split, not randomised, and ε̂ from that ROC is a summary of the attack's
strength, not a lower bound on the run's ε (see docs/auditing.md).

**μ-GDP** (Dong, Roth & Su 2022, Cor. 2.13; Balle & Wang 2018): telling N(0, 1) from N(μ, 1) is (ε, δ(ε))-DP for
every ε ≥ 0 with ``δ(ε) = Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2)``, and for no smaller δ. :func:`gdp_epsilon` inverts it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import brentq
from scipy.special import log_ndtr

from fedleak.errors import FedleakError
from fedleak.metrics.intervals import cp_lower, cp_upper
from fedleak.metrics.roc import _check, roc_curve


def _check_delta(delta: float) -> None:
    if not 0.0 <= delta < 1.0:
        raise FedleakError(f"delta must lie in [0, 1) (got {delta}); e.g. 1e-5")


def gdp_delta(eps: float, mu: float) -> float:
    """δ(ε) of μ-GDP: ``Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2)`` (difference taken in log space)."""
    if mu < 0 or eps < 0:
        raise FedleakError(f"gdp_delta needs mu >= 0 and eps >= 0 (got mu={mu}, eps={eps})")
    if mu == 0:
        return 0.0
    if math.isinf(mu):
        return 1.0
    la = float(log_ndtr(-eps / mu + mu / 2))
    lb = eps + float(log_ndtr(-eps / mu - mu / 2))
    return math.exp(la) * -math.expm1(min(lb - la, 0.0))


def gdp_epsilon(mu: float, delta: float) -> float:
    """Smallest ε with ``gdp_delta(ε, μ) <= δ``: the ε of the Gaussian mechanism with sensitivity/σ = μ."""
    _check_delta(delta)
    if delta == 0.0 and mu > 0:
        return math.inf
    if gdp_delta(0.0, mu) <= delta:
        return 0.0
    if math.isinf(mu):
        return math.inf
    hi = max(1.0, mu * mu)
    while gdp_delta(hi, mu) > delta:
        hi *= 2.0
    return float(brentq(lambda e: gdp_delta(e, mu) - delta, 0.0, hi, xtol=1e-12, rtol=1e-12))


def epsilon_from_rates(tpr: np.ndarray | float, fpr: np.ndarray | float, delta: float) -> np.ndarray:
    """``max(log((TPR − δ)/FPR), log((1 − FPR − δ)/(1 − TPR)), 0)`` element-wise (inf where a denominator is 0)."""
    tpr, fpr = np.asarray(tpr, dtype=np.float64), np.asarray(fpr, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(tpr > delta, np.log(np.maximum(tpr - delta, 1e-300)) - np.log(fpr), -np.inf)
        b = np.where(1.0 - fpr > delta, np.log(np.maximum(1.0 - fpr - delta, 1e-300)) - np.log1p(-tpr), -np.inf)
    return np.maximum(np.maximum(a, b), 0.0)


def bounded_epsilon(tp, n_pos, fp, n_neg, delta: float, alpha: float) -> np.ndarray:
    """ε lower bound at confidence 1 − alpha from counts at fixed thresholds (module docstring)."""
    return epsilon_from_rates(cp_lower(tp, n_pos, alpha / 2.0), cp_upper(fp, n_neg, alpha / 2.0), delta)


def threshold_counts(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(thresholds, tp, fp)``: members / non-members with ``score >= threshold`` at every ROC point."""
    y, _ = _check(labels, scores)
    fpr, tpr, thr = roc_curve(labels, scores)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    return thr, np.rint(tpr * n_pos).astype(np.int64), np.rint(fpr * n_neg).astype(np.int64)


def split_halves(labels: np.ndarray, seed: int, frac: float = 0.5) -> np.ndarray:
    """Boolean mask of the *selection* part: ``floor(frac·count)`` of the members and of the non-members,
    drawn uniformly with ``np.random.default_rng(seed)`` (members first, then non-members)."""
    y = np.asarray(labels).astype(bool)
    rng = np.random.default_rng(seed)
    mask = np.zeros(y.size, dtype=bool)
    for name, idx in (("members", np.flatnonzero(y)), ("non-members", np.flatnonzero(~y))):
        k = int(math.floor(frac * idx.size))
        if k < 1 or k >= idx.size:
            raise FedleakError(
                f"cannot split {idx.size} {name} into a threshold-selection and an evaluation part "
                f"(fraction {frac}); the held-out ε bound needs at least 2 members and 2 non-members"
            )
        mask[rng.permutation(idx)[:k]] = True
    return mask


@dataclass(frozen=True)
class EpsilonBound:
    epsilon: float  # lower bound at `confidence`: threshold chosen on the selection half, bound on the other half
    optimistic: float  # max over thresholds of the bounded ε on all candidates (threshold chosen on the same data)
    threshold: float  # the threshold chosen on the selection half ("member" when score >= threshold)
    tp: int  # evaluation-half members above the threshold
    n_pos: int
    fp: int  # evaluation-half non-members above the threshold
    n_neg: int
    delta: float
    confidence: float
    seed: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def empirical_epsilon(
    labels: np.ndarray, scores: np.ndarray, delta: float, confidence: float = 0.95, seed: int = 0
) -> EpsilonBound:
    """ε lower bound from an attack's scores with a held-out threshold choice (module docstring)."""
    _check_delta(delta)
    if not 0.0 < confidence < 1.0:
        raise FedleakError(f"confidence must lie strictly between 0 and 1 (got {confidence}); e.g. 0.95")
    alpha = 1.0 - confidence
    y, s = _check(labels, scores)
    sel = split_halves(y, seed)
    thr, tp, fp = threshold_counts(y[sel], s[sel])
    eps_sel = bounded_epsilon(tp, int(y[sel].sum()), fp, int((~y[sel]).sum()), delta, alpha)
    t = float(thr[int(np.argmax(eps_sel))])
    ev_y, ev_s = y[~sel], s[~sel]
    n_pos, n_neg = int(ev_y.sum()), int((~ev_y).sum())
    tp_ev, fp_ev = int((ev_s[ev_y] >= t).sum()), int((ev_s[~ev_y] >= t).sum())
    eps = float(bounded_epsilon(tp_ev, n_pos, fp_ev, n_neg, delta, alpha))
    _, tp_all, fp_all = threshold_counts(y, s)
    optimistic = float(np.max(bounded_epsilon(tp_all, int(y.sum()), fp_all, int((~y).sum()), delta, alpha)))
    return EpsilonBound(eps, optimistic, t, tp_ev, n_pos, fp_ev, n_neg, float(delta), confidence, seed)


__all__ = [
    "EpsilonBound",
    "bounded_epsilon",
    "empirical_epsilon",
    "epsilon_from_rates",
    "gdp_delta",
    "gdp_epsilon",
    "split_halves",
    "threshold_counts",
]
