"""ROC curves and the membership-inference metrics derived from them.

Conventions (used everywhere in fedleak):

* ``labels`` are booleans or 0/1 (1 = member), ``scores`` are floats, **higher = member**.
  ``+inf``/``-inf`` scores are allowed (they rank first/last); NaN scores are an error.
* The ROC curve is the *full* empirical curve: one point per distinct score value, starting at
  (0, 0) (threshold ``+inf``) and ending at (1, 1). A sample is predicted "member" when
  ``score >= threshold``. Tied scores form one point (a diagonal step), never an arbitrary order.
* **TPR at FPR t** is the largest TPR among ROC points whose FPR is ``<= t`` (default), or ``< t``
  with ``strict=True``, which is what the original FedMIA code computes
  (``idx = #{fpr < t}; tpr[idx - 1]``). With ``n_neg`` non-members, FPR can only take the values
  ``j / n_neg``; when ``t < 1 / n_neg`` the ``<=`` convention reports the TPR at zero false
  positives (see :func:`fpr_resolution`).
* **AUC** is the trapezoidal area under the full curve, which equals the Mann-Whitney probability
  that a random member outscores a random non-member, ties counting one half.
* **log-AUC** (the original code's definition, kept for comparability): map every ROC point to
  ``u = (max(log10 FPR, -5) + 5) / 5`` and ``v = (max(log10 TPR, -5) + 5) / 5`` (so both axes run
  over ``[1e-5, 1]`` on a log scale, rescaled to ``[0, 1]``, values below ``1e-5`` clipped to it) and
  take the trapezoidal area of the resulting polyline. A classifier on the diagonal TPR = FPR
  scores 0.5, a perfect one 1. It weighs the low-FPR region, where membership inference matters,
  far more than AUC does.
* **Balanced accuracy at the best threshold** is ``max over ROC points of (TPR + 1 - FPR) / 2``; the
  threshold is chosen with the labels, so it is an optimistic (oracle) summary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from fedleak.errors import FedleakError

DEFAULT_FPRS: tuple[float, ...] = (0.1, 0.01, 0.001, 0.0001)
#: The default of ``--headline-fpr``: the FPR the headline numbers, ranking and verdict are read at; defined here only.
HEADLINE_FPR = 0.001
LOG_FLOOR = -5.0  # log-AUC axes start at 1e-5


def fpr_text(t: float) -> str:
    """An FPR target as the reports write it: 0.001 -> '0.1%'."""
    return f"{100.0 * t:g}%"


def fpr_key(t: float) -> str:
    """Readable metric key for an FPR target: 0.001 -> 'tpr@0.1%'."""
    return f"tpr@{fpr_text(t)}"


#: ``fpr_key(HEADLINE_FPR)``, the metrics key of the default headline TPR
HEADLINE_KEY = fpr_key(HEADLINE_FPR)


def check_headline_fpr(value: object, where: str = "--headline-fpr") -> float:
    """``value`` as a headline FPR (a number strictly between 0 and 1), else a one-line FedleakError naming ``where``."""
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        f = float("nan")
    if isinstance(value, bool) or not 0.0 < f < 1.0:
        raise FedleakError(f"{where} must be a false-positive rate strictly between 0 and 1, e.g. 0.001 for 0.1% "
                           f"(got {value!r})")
    return f


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.ndim != 1 or y.shape != s.shape:
        raise FedleakError(
            f"labels and scores must be 1-D arrays of the same length (got {y.shape} and {s.shape})"
        )
    if y.dtype != bool:
        if not np.isin(y, (0, 1)).all():
            raise FedleakError("labels must be 0/1 or booleans (1 = member)")
        y = y.astype(bool)
    if np.isnan(s).any():
        raise FedleakError(
            f"{int(np.isnan(s).sum())} scores are NaN; drop those candidates or check the run's signals"
        )
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise FedleakError(
            f"need at least one member and one non-member to compute a ROC (got {n_pos} members of {y.size})"
        )
    return y, s


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full ROC curve: ``(fpr, tpr, thresholds)``, each of length (number of distinct scores + 1).

    Point ``i`` is the rate of samples with ``score >= thresholds[i]``; point 0 is (0, 0) at
    threshold ``+inf``. FPR and TPR are non-decreasing.
    """
    y, s = _check(labels, scores)
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    y_sorted = y[order]
    # last index of each group of equal scores
    ends = np.flatnonzero(s_sorted[1:] != s_sorted[:-1])  # (not np.diff: inf - inf is NaN)
    ends = np.append(ends, s_sorted.size - 1)
    tps = np.cumsum(y_sorted, dtype=np.int64)[ends]
    fps = (ends + 1) - tps
    n_pos, n_neg = tps[-1], fps[-1]
    fpr = np.concatenate([[0.0], fps / n_neg])
    tpr = np.concatenate([[0.0], tps / n_pos])
    thr = np.concatenate([[np.inf], s_sorted[ends]])
    return fpr, tpr, thr


def auc_from_curve(fpr: np.ndarray, tpr: np.ndarray) -> float:
    return float(np.trapezoid(tpr, fpr)) if hasattr(np, "trapezoid") else float(np.trapz(tpr, fpr))


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the full ROC curve (= Mann-Whitney U / (n_pos n_neg), ties count 1/2)."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return auc_from_curve(fpr, tpr)


def log_auc_from_curve(fpr: np.ndarray, tpr: np.ndarray, floor: float = LOG_FLOOR) -> float:
    """log-AUC of a ROC curve (definition in the module docstring)."""
    with np.errstate(divide="ignore"):
        u = (np.maximum(np.log10(fpr), floor) - floor) / -floor
        v = (np.maximum(np.log10(tpr), floor) - floor) / -floor
    return auc_from_curve(u, v)


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float, strict: bool = False) -> float:
    """Largest TPR over ROC points with FPR <= target (``strict=True``: FPR < target)."""
    fpr = np.asarray(fpr)
    ok = fpr < target if strict else fpr <= target + 1e-12 * max(target, 1e-300)
    if not ok.any():  # only possible with strict=True and target <= 0
        return 0.0
    return float(np.asarray(tpr)[ok].max())


def fpr_resolution(n_neg: int) -> float:
    """Smallest non-zero FPR that n_neg non-members can resolve (1 / n_neg)."""
    return 1.0 / n_neg


def balanced_accuracy_best(fpr: np.ndarray, tpr: np.ndarray, thresholds: np.ndarray) -> tuple[float, float]:
    """(max balanced accuracy over thresholds, the threshold that reaches it)."""
    bal = (tpr + 1.0 - fpr) / 2.0
    i = int(np.argmax(bal))
    return float(bal[i]), float(thresholds[i])


@dataclass
class RocMetrics:
    auc: float
    log_auc: float
    tpr: dict[float, float]  # FPR target -> TPR
    balanced_accuracy: float
    threshold: float  # threshold of the best balanced accuracy (score >= threshold -> member)
    n_pos: int
    n_neg: int
    strict: bool

    def as_dict(self) -> dict[str, float | int | str]:
        out: dict[str, float | int | str] = {"auc": self.auc, "log_auc": self.log_auc}
        for t, v in self.tpr.items():
            out[fpr_key(t)] = v
        out["balanced_accuracy"] = self.balanced_accuracy
        out["best_threshold"] = self.threshold
        out["n_members"] = self.n_pos
        out["n_nonmembers"] = self.n_neg
        out["fpr_convention"] = "<" if self.strict else "<="
        return out


def roc_metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    fprs: Iterable[float] = DEFAULT_FPRS,
    strict: bool = False,
) -> RocMetrics:
    """All summary metrics of one attack's scores (see the module docstring for conventions)."""
    fpr, tpr, thr = roc_curve(labels, scores)
    y = np.asarray(labels).astype(bool)
    bal, t = balanced_accuracy_best(fpr, tpr, thr)
    return RocMetrics(
        auc=auc_from_curve(fpr, tpr),
        log_auc=log_auc_from_curve(fpr, tpr),
        tpr={float(f): tpr_at_fpr(fpr, tpr, float(f), strict) for f in fprs},
        balanced_accuracy=bal,
        threshold=t,
        n_pos=int(y.sum()),
        n_neg=int((~y).sum()),
        strict=strict,
    )


def tpr_at_fpr_scores(labels: np.ndarray, scores: np.ndarray, target: float, strict: bool = False) -> float:
    """Shortcut: TPR at one FPR target straight from labels and scores."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return tpr_at_fpr(fpr, tpr, target, strict)


def chance_p_value(n_pos: int, tpr: float, fpr: float) -> float:
    """P(at least tpr*n_pos members flagged | the attack is guessing at false-positive rate fpr).

    Under a score independent of membership, the number of members above a threshold that flags a
    fraction ``fpr`` of non-members is about Binomial(n_pos, fpr); a small value means the TPR is not
    explained by chance.
    """
    from scipy.stats import binom

    k = int(round(tpr * n_pos))
    if k <= 0:
        return 1.0
    return float(binom.sf(k - 1, n_pos, max(fpr, 0.0)))


__all__ = [
    "DEFAULT_FPRS",
    "RocMetrics",
    "auc_from_curve",
    "balanced_accuracy_best",
    "chance_p_value",
    "check_headline_fpr",
    "fpr_key",
    "fpr_text",
    "fpr_resolution",
    "log_auc_from_curve",
    "roc_auc",
    "roc_curve",
    "roc_metrics",
    "tpr_at_fpr",
    "tpr_at_fpr_scores",
]

