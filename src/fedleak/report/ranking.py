"""One order of the attacks for everything a person reads: tables, figure legends and the verdict.

Attacks are ranked by TPR at the headline FPR (``--headline-fpr``, default 0.1%; higher first), ties broken by
AUC (higher first) and then by the attack's name, so the verdict's "strongest attack" is always the first row of
the table. The sort keys are :func:`fedleak.attacks.mia.result.rank_key` / ``rotating_rank_key``.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from fedleak.attacks.mia.result import AttackResult, rank_key, same_fpr


def ranked(attacks: Iterable[AttackResult], fpr: float) -> list[AttackResult]:
    """The attacks, strongest at ``fpr`` first."""
    return sorted(attacks, key=lambda a: rank_key(a, fpr))


def same(x: Any, y: Any) -> bool:
    """Equal metric values (TPRs are counts over the same members: exact up to float rounding)."""
    return math.isclose(float(x), float(y), rel_tol=1e-9, abs_tol=1e-12)


def compare_word(x: float, y: float) -> str:
    """'more', 'less' or 'as much as' for x against y."""
    if same(x, y):
        return "as much as"
    return "more" if x > y else "less"


def secondary_fprs(fpr: float) -> list[float]:
    """The FPRs of the short tables (rotating targets, summaries): 1% and the headline (10% and the headline when
    the headline is 1%)."""
    return [0.1 if same_fpr(fpr, 0.01) else 0.01, fpr]
