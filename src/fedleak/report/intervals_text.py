"""How a rate and its 95% interval read in every table and sentence: "4 of 89 (4.49%, 95% CI 1.2–11.1%)".

The numbers come from an attack's intervals (:class:`fedleak.attacks.mia.result.Intervals`, the ``counts`` and
``ci95`` entries of ``attack/metrics.json``). Metrics written before those keys existed have none: then the plain
rate is shown, as before.
"""

from __future__ import annotations

from fedleak.attacks.mia.result import AttackResult, Interval, Rate


def pct(x: float | None, digits: int = 2) -> str:
    """A rate in percent, '–' for none."""
    if x is None:
        return "–"
    return f"{100 * float(x):.{digits}f}%"


def ci_pct(x: float) -> str:
    """An interval end in percent: one decimal from 1%, two significant digits below, '0' for zero."""
    v = 100.0 * float(x)
    if v == 0.0:
        return "0"
    return f"{v:.1f}" if v >= 1.0 else f"{v:.2g}"


def ci_text(iv: Interval | None) -> str:
    """'95% CI 1.2–11.1%' or '' without an interval."""
    return f"95% CI {ci_pct(iv[0])}–{ci_pct(iv[1])}%" if iv else ""


def rate_text(r: Rate) -> str:
    """'4 of 89 (4.49%, 95% CI 1.2–11.1%)': members flagged, the rate and its exact interval (else the rate)."""
    if r.k is None or not r.ci:
        return pct(r.tpr)
    return f"{r.k} of {r.n} ({pct(r.tpr)}, {ci_text(r.ci)})"


def tpr_text(a: AttackResult, fpr: float) -> str:
    """:func:`rate_text` of an attack's TPR at ``fpr``."""
    return rate_text(a.rate(fpr))


def auc_text(a: AttackResult) -> str:
    """'0.654 (95% CI 0.601–0.707)' (DeLong), or the AUC alone."""
    iv = a.auc_ci
    if not iv:
        return f"{a.auc:.3f}"
    return f"{a.auc:.3f} (95% CI {iv[0]:.3f}–{iv[1]:.3f})"


__all__ = ["auc_text", "ci_pct", "ci_text", "pct", "rate_text", "tpr_text"]
