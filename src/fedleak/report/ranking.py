"""One order of the attacks for everything a person reads: tables, figure legends and the verdict.

Attacks are ranked by TPR at 0.1% FPR (higher first), ties broken by AUC (higher first) and then by
the attack's name, so the verdict's "strongest attack" is always the first row of the table.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

from fedleak.metrics.roc import HEADLINE_FPR, HEADLINE_KEY

HEAD_FPR, HEAD_KEY = HEADLINE_FPR, HEADLINE_KEY  # the names the report modules use


def _value(a: Mapping[str, Any], key: str) -> float:
    v = a.get(key)
    try:
        v = float(v)  # metrics.json stores non-finite numbers as strings
    except (TypeError, ValueError):
        return -math.inf
    return -math.inf if math.isnan(v) else v


def rank_key(name: str, a: Mapping[str, Any]) -> tuple[float, float, str]:
    """Sort key: TPR@0.1% descending, then AUC descending, then the attack name."""
    return (-_value(a, HEAD_KEY), -_value(a, "auc"), name)


def ranked(attacks: Mapping[str, Mapping[str, Any]], key: Callable[[str, Mapping[str, Any]], tuple] = rank_key) -> list[str]:
    """Attack names, strongest first."""
    return sorted(attacks, key=lambda n: key(n, attacks[n]))


def rotating_key(name: str, a: Mapping[str, Any]) -> tuple[float, float, str]:
    """The same order for the every-client-as-target means."""
    r = a.get("rotating", {})
    return (-_value(r.get(HEAD_KEY, {}), "mean"), -_value(r.get("auc", {}), "mean"), name)


def same(x: Any, y: Any) -> bool:
    """Equal metric values (TPRs are counts over the same members: exact up to float rounding)."""
    return math.isclose(float(x), float(y), rel_tol=1e-9, abs_tol=1e-12)


def compare_word(x: float, y: float) -> str:
    """'more', 'less' or 'as much as' for x against y."""
    if same(x, y):
        return "as much as"
    return "more" if x > y else "less"
