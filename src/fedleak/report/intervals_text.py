"""How a rate and its 95% interval read in every table and sentence: "4 of 89 (4.49%, 95% CI 1.2–11.1%)".

The numbers come from an attack's ``counts`` and ``ci95`` entries in ``attack/metrics.json`` (written by
:func:`fedleak.attacks.mia.evaluate.interval_entries`). Metrics written before those keys existed have none:
then the plain rate is shown, as before.
"""

from __future__ import annotations

from typing import Any, Mapping



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


def interval(a: Mapping[str, Any], key: str) -> tuple[float, float] | None:
    """``(lower, upper)`` of ``key`` ('auc' or an FPR key) from an attack's ``ci95``, or None."""
    ci = (a.get("ci95") or {}).get(key)
    return (float(ci[0]), float(ci[1])) if ci else None


def tpr_ci(a: Mapping[str, Any], key: str) -> str:
    """'95% CI 1.2–11.1%' or '' without an interval."""
    iv = interval(a, key)
    return f"95% CI {ci_pct(iv[0])}–{ci_pct(iv[1])}%" if iv else ""


def tpr_text(a: Mapping[str, Any], key: str) -> str:
    """'4 of 89 (4.49%, 95% CI 1.2–11.1%)': members flagged, the rate and its exact interval."""
    counts = (a.get("counts") or {}).get(key)
    ci = tpr_ci(a, key)
    if not counts or not ci:
        return pct(a[key])
    return f"{counts[0]} of {counts[1]} ({pct(a[key])}, {ci})"


def auc_text(a: Mapping[str, Any]) -> str:
    """'0.654 (95% CI 0.601–0.707)' (DeLong), or the AUC alone."""
    iv = interval(a, "auc")
    if not iv:
        return f"{float(a['auc']):.3f}"
    return f"{float(a['auc']):.3f} (95% CI {iv[0]:.3f}–{iv[1]:.3f})"


__all__ = ["auc_text", "ci_pct", "interval", "pct", "tpr_ci", "tpr_text"]
