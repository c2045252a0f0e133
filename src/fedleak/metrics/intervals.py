"""Confidence intervals for membership-inference metrics: TPR at a fixed FPR, and AUC.

Conventions are those of :mod:`fedleak.metrics.roc` (1 = member, higher score = member, ties count one half).

**Clopper–Pearson** (Clopper & Pearson 1934). For ``k`` successes in ``n`` Bernoulli trials the exact two-sided
interval at confidence ``1 − α`` is ``[B(α/2; k, n−k+1), B(1−α/2; k+1, n−k)]`` with ``B(p; a, b)`` the
p-quantile of a Beta(a, b) law, and the conventions ``lower = 0`` when ``k = 0``, ``upper = 1`` when ``k = n``.
It inverts two one-sided binomial tests, so its coverage is at least ``1 − α`` for every true proportion
(it is conservative). The one-sided bounds :func:`cp_lower` / :func:`cp_upper` put all of ``α`` on one side.

**TPR at FPR t** (:func:`tpr_intervals`): the threshold is the ROC point that :func:`roc.tpr_at_fpr` picks; given
that threshold, the number ``k`` of the ``n_pos`` members above it is Binomial(n_pos, TPR), and the interval is
Clopper–Pearson on ``k``. It describes the uncertainty due to the finite member count only: the threshold was set
with the non-members, whose own sampling error (an FPR of ``j/n_neg``) it does not include.

**DeLong** (DeLong, DeLong & Clarke-Pearson 1988; fast midrank form of Sun & Xu 2014). With ``m`` members
``X_i``, ``n`` non-members ``Y_j`` and ``ψ(x, y) = 1[x > y] + ½·1[x = y]``, the placement values are
``V10_i = (1/n) Σ_j ψ(X_i, Y_j)`` and ``V01_j = (1/m) Σ_i ψ(X_i, Y_j)``; AUC = mean(V10) = mean(V01), and its
variance is estimated by ``S10/m + S01/n`` with ``S10``, ``S01`` the sample variances (ddof = 1) of the
placements. The interval is ``AUC ± z_{1−α/2}·SE``, clipped to [0, 1]. It is asymptotic: it needs enough members
and non-members on both sides of the overlap; at AUC = 1 (no overlap) the SE is 0 and the interval degenerate.

**Stratified bootstrap** (:func:`bootstrap_auc_interval`): members and non-members are resampled with replacement
separately (so every replicate keeps ``m`` and ``n``), the AUC recomputed, and the percentile interval reported.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable

import numpy as np
from scipy.stats import beta, norm

from fedleak.errors import FedleakError
from fedleak.metrics.roc import DEFAULT_FPRS, _check, roc_curve, tpr_at_fpr


def _check_level(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise FedleakError(f"confidence must lie strictly between 0 and 1 (got {confidence}); e.g. 0.95")
    return 1.0 - confidence


def _check_counts(k: np.ndarray, n: np.ndarray) -> None:
    if np.any(n < 1) or np.any(k < 0) or np.any(k > n):
        raise FedleakError(f"binomial counts need 0 <= k <= n and n >= 1 (got k={k.tolist()}, n={n.tolist()})")


def cp_lower(k: int | np.ndarray, n: int | np.ndarray, alpha: float) -> np.ndarray:
    """One-sided exact lower bound: P(p < bound) <= alpha. ``B(alpha; k, n−k+1)``, 0 when k = 0."""
    k, n = np.asarray(k, dtype=np.float64), np.asarray(n, dtype=np.float64)
    _check_counts(k, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        lo = beta.ppf(alpha, np.maximum(k, 1.0), n - k + 1.0)
    return np.where(k > 0, lo, 0.0)


def cp_upper(k: int | np.ndarray, n: int | np.ndarray, alpha: float) -> np.ndarray:
    """One-sided exact upper bound: P(p > bound) <= alpha. ``B(1−alpha; k+1, n−k)``, 1 when k = n."""
    k, n = np.asarray(k, dtype=np.float64), np.asarray(n, dtype=np.float64)
    _check_counts(k, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        hi = beta.isf(alpha, k + 1.0, np.maximum(n - k, 1.0))  # isf: accurate for small alpha
    return np.where(k < n, hi, 1.0)


def clopper_pearson(
    k: int | np.ndarray, n: int | np.ndarray, confidence: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Exact two-sided interval ``(lower, upper)`` for a binomial proportion (module docstring)."""
    alpha = _check_level(confidence)
    return cp_lower(k, n, alpha / 2.0), cp_upper(k, n, alpha / 2.0)


@dataclass(frozen=True)
class TprInterval:
    fpr_target: float
    tpr: float
    lower: float
    upper: float
    k: int  # members above the threshold
    n: int  # members
    confidence: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def tpr_intervals(
    labels: np.ndarray,
    scores: np.ndarray,
    fprs: Iterable[float] = DEFAULT_FPRS,
    confidence: float = 0.95,
    strict: bool = False,
) -> list[TprInterval]:
    """TPR at each FPR target with its Clopper–Pearson interval over the member count."""
    alpha = _check_level(confidence)
    fpr, tpr, _ = roc_curve(labels, scores)
    n_pos = int(np.asarray(labels).astype(bool).sum())
    out = []
    for t in fprs:
        rate = tpr_at_fpr(fpr, tpr, float(t), strict)
        k = int(round(rate * n_pos))
        lo, hi = cp_lower(k, n_pos, alpha / 2.0), cp_upper(k, n_pos, alpha / 2.0)
        out.append(TprInterval(float(t), k / n_pos, float(lo), float(hi), k, n_pos, confidence))
    return out


@dataclass(frozen=True)
class AucInterval:
    auc: float
    lower: float
    upper: float
    se: float
    method: str  # "delong" | "bootstrap"
    confidence: float

    def as_dict(self) -> dict[str, float | str]:
        return asdict(self)


def _split(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y, s = _check(labels, scores)  # shapes, NaN, both classes present
    return s[y], s[~y]


def placement_values(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong placements ``(V10, V01)``: each member's share of non-members below it and vice versa (ties ½)."""
    neg_sorted, pos_sorted = np.sort(neg), np.sort(pos)
    below = np.searchsorted(neg_sorted, pos, side="left")
    tied = np.searchsorted(neg_sorted, pos, side="right") - below
    v10 = (below + 0.5 * tied) / neg.size
    above = pos.size - np.searchsorted(pos_sorted, neg, side="right")
    tied = np.searchsorted(pos_sorted, neg, side="right") - np.searchsorted(pos_sorted, neg, side="left")
    v01 = (above + 0.5 * tied) / pos.size
    return v10, v01


def delong_interval(labels: np.ndarray, scores: np.ndarray, confidence: float = 0.95) -> AucInterval:
    """AUC with DeLong's asymptotic interval (module docstring)."""
    alpha = _check_level(confidence)
    pos, neg = _split(labels, scores)
    if pos.size < 2 or neg.size < 2:
        raise FedleakError(
            f"DeLong's variance needs at least 2 members and 2 non-members (got {pos.size} and {neg.size})"
        )
    v10, v01 = placement_values(pos, neg)
    auc = float(v10.mean())
    se = float(np.sqrt(v10.var(ddof=1) / pos.size + v01.var(ddof=1) / neg.size))
    z = float(norm.isf(alpha / 2.0))
    return AucInterval(auc, max(0.0, auc - z * se), min(1.0, auc + z * se), se, "delong", confidence)


def _auc_of(pos: np.ndarray, neg_sorted: np.ndarray) -> float:
    below = np.searchsorted(neg_sorted, pos, side="left")
    upto = np.searchsorted(neg_sorted, pos, side="right")
    return float((below + upto).sum() / (2.0 * pos.size * neg_sorted.size))


def bootstrap_auc_interval(
    labels: np.ndarray,
    scores: np.ndarray,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> AucInterval:
    """AUC with a stratified percentile-bootstrap interval over ``n_boot`` replicates (seeded)."""
    alpha = _check_level(confidence)
    if n_boot < 100:
        raise FedleakError(f"n_boot must be at least 100 for a percentile interval (got {n_boot})")
    pos, neg = _split(labels, scores)
    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot)
    for b in range(n_boot):
        p = pos[rng.integers(0, pos.size, pos.size)]
        q = np.sort(neg[rng.integers(0, neg.size, neg.size)])
        reps[b] = _auc_of(p, q)
    lo, hi = np.quantile(reps, [alpha / 2.0, 1.0 - alpha / 2.0])
    auc = _auc_of(pos, np.sort(neg))
    return AucInterval(auc, float(lo), float(hi), float(reps.std(ddof=1)), "bootstrap", confidence)


__all__ = [
    "AucInterval",
    "TprInterval",
    "bootstrap_auc_interval",
    "clopper_pearson",
    "cp_lower",
    "cp_upper",
    "delong_interval",
    "placement_values",
    "tpr_intervals",
]
