"""One-run privacy audit: Steinke, Nasr & Jagielski, "Privacy Auditing with One (1) Training Run" (NeurIPS 2023).

**Setting.** ``m`` canaries; canary ``i`` is included in the training input by an independent fair coin
``S_i ∈ {−1 (out), +1 (in)}``. After the single run the auditor scores every canary from the output alone and
guesses ``T_i ∈ {−1, 0, +1}`` (0 = abstain): here the ``k₊`` highest scores are guessed "in", the ``k₋`` lowest
"out", the rest abstain, so ``r = k₊ + k₋`` guesses are made. ``v`` is the number of correct guesses
(``T_i = S_i``).

**Theorem (δ = 0; the paper's main theorem).** If the training algorithm is ε-DP with respect to each canary, then for
every ``v``: ``P[V ≥ v] ≤ f(v)`` with ``f(v) = P[Binomial(r, p) ≥ v]`` and ``p = e^ε / (1 + e^ε)`` — the correct
guesses are stochastically dominated by those of ε-randomised response.

**Theorem (δ > 0; the paper's extension to approximate DP).** If it is (ε, δ)-DP, then
``P[V ≥ v] ≤ f(v) + 2·m·δ · max_{i = 1..v} (f(v − i) − f(v)) / i``, where ``f(v − i) − f(v) = P[v − i ≤ B < v]``
(for ``i > v`` the ratio only shrinks, so ``i ≤ v`` suffices).

Either right-hand side is the p-value of the hypothesis "the algorithm is (ε, δ)-DP" given ``v`` correct guesses
(:func:`p_value`). The reported bound at confidence ``1 − β`` is
``ε̂ = inf {ε ≥ 0 : p_value(ε) > β}``: every ε below ε̂ is rejected at level β, so ``P[ε̂ > ε_true] ≤ β``
(:func:`epsilon_lower_bound`). The p-value is increasing in ε in every case we have checked
(``tests/metrics/test_one_run_audit.py`` scans a grid); the search brackets the *first* crossing on a fine grid before
bisecting, so a non-monotone stretch above it cannot raise ε̂.

**Validity needs** the coins: each canary's inclusion drawn independently with probability ½ and the guesses a
function of the run's output only. Choosing ``(k₊, k₋)`` after seeing the outcome is multiple testing;
:func:`one_run_audit_best` tries a fixed list of choices with a Bonferroni correction (β / number of choices).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy.optimize import brentq
from scipy.special import expit
from scipy.stats import binom

from fedleak.errors import FedleakError


def _check_mrv(m: int, r: int, v: int) -> None:
    if not 0 <= v <= r <= m:
        raise FedleakError(f"one-run audit needs 0 <= correct <= guesses <= canaries (got v={v}, r={r}, m={m})")


def _p_values(m: int, r: int, v: int, eps: np.ndarray, delta: float) -> np.ndarray:
    """:func:`p_value` for an array of ε (v >= 1 checked by the caller)."""
    p = expit(np.asarray(eps, dtype=np.float64))
    tail = binom.sf(v - 1, r, p)  # f(v) = P[B >= v]
    if delta == 0.0:
        return tail
    j = np.arange(v - 1, -1, -1)  # v − 1, v − 2, ..., 0
    slope = np.empty(p.size)
    step = max(1, 4_000_000 // v)  # bound the (ε × v) pmf block
    for a in range(0, p.size, step):
        # P[v − i <= B <= v − 1] for i = 1..v, summed downwards from v − 1
        window = np.cumsum(binom.pmf(j[None, :], r, p[a:a + step, None]), axis=1)
        slope[a:a + step] = np.max(window / np.arange(1, v + 1), axis=1)
    return np.minimum(1.0, tail + 2.0 * m * delta * slope)


def p_value(m: int, r: int, v: int, eps: float, delta: float = 0.0) -> float:
    """Upper bound on ``P[V ≥ v]`` for an (ε, δ)-DP algorithm (module docstring: the δ = 0 and δ > 0 theorems)."""
    _check_mrv(m, r, v)
    if eps < 0 or not 0.0 <= delta <= 1.0:
        raise FedleakError(f"need eps >= 0 and 0 <= delta <= 1 (got eps={eps}, delta={delta})")
    if v == 0:
        return 1.0
    return float(_p_values(m, r, v, np.array([eps]), delta)[0])


def epsilon_lower_bound(m: int, r: int, v: int, delta: float = 0.0, confidence: float = 0.95) -> float:
    """``inf {ε ≥ 0 : p_value(m, r, v, ε, δ) > 1 − confidence}`` (to 1e-9), 0 when ε = 0 is not rejected.

    For δ = 0 the p-value is a binomial tail, increasing in ε, so plain bisection finds the crossing. For δ > 0
    the first crossing is bracketed on a 256-step grid before bisecting (module docstring).
    """
    _check_mrv(m, r, v)
    if not 0.0 < confidence < 1.0:
        raise FedleakError(f"confidence must lie strictly between 0 and 1 (got {confidence}); e.g. 0.95")
    if not 0.0 <= delta <= 1.0:
        raise FedleakError(f"delta must lie in [0, 1] (got {delta})")
    beta = 1.0 - confidence
    if v == 0 or p_value(m, r, v, 0.0, delta) > beta:
        return 0.0

    def excess(e: float) -> float:
        return p_value(m, r, v, e, delta) - beta

    hi = 1.0
    while excess(hi) <= 0:  # p_value -> 1 > beta as eps -> inf (v <= r), so this stops
        hi *= 2.0
    lo = 0.0
    if delta > 0.0:
        grid = np.linspace(0.0, hi, 257)
        first = int(np.argmax(_p_values(m, r, v, grid, delta) > beta))
        lo, hi = float(grid[first - 1]), float(grid[first])
    return float(brentq(excess, lo, hi, xtol=1e-9, rtol=1e-12))


def guesses_from_scores(scores: np.ndarray, k_plus: int, k_minus: int = 0) -> np.ndarray:
    """``T ∈ {−1, 0, +1}^m``: +1 for the ``k_plus`` highest scores, −1 for the ``k_minus`` lowest, 0 otherwise.

    Ties are broken by position (a stable sort), which is a function of the output only.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or np.isnan(s).any():
        raise FedleakError("canary scores must be a 1-D array without NaN")
    if k_plus < 0 or k_minus < 0 or k_plus + k_minus > s.size:
        raise FedleakError(f"need k_plus, k_minus >= 0 and k_plus + k_minus <= {s.size} canaries "
                           f"(got {k_plus}, {k_minus})")
    order = np.argsort(-s, kind="stable")
    t = np.zeros(s.size, dtype=np.int8)
    t[order[:k_plus]] = 1
    if k_minus:
        t[order[s.size - k_minus:]] = -1
    return t


@dataclass(frozen=True)
class OneRunAudit:
    epsilon: float  # lower bound at `confidence` (Bonferroni-corrected when chosen among several (k+, k-))
    m: int
    guesses: int  # r
    correct: int  # v
    k_plus: int
    k_minus: int
    delta: float
    confidence: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _included_bool(included: np.ndarray, m: int) -> np.ndarray:
    inc = np.asarray(included)
    if inc.shape != (m,) or not np.isin(inc, (0, 1)).all():
        raise FedleakError(f"'included' must be {m} booleans / 0-1 flags, one per canary score")
    return inc.astype(bool)


def one_run_audit(
    scores: np.ndarray, included: np.ndarray, k_plus: int, k_minus: int = 0,
    delta: float = 0.0, confidence: float = 0.95,
) -> OneRunAudit:
    """Audit one run from every canary's score and its coin (``included``), for one fixed ``(k_plus, k_minus)``."""
    t = guesses_from_scores(scores, k_plus, k_minus)
    s = np.where(_included_bool(included, t.size), 1, -1)
    r, v = int(np.count_nonzero(t)), int(np.sum(t == s))
    eps = epsilon_lower_bound(t.size, r, v, delta, confidence)
    return OneRunAudit(eps, t.size, r, v, k_plus, k_minus, float(delta), confidence)


def one_run_audit_best(
    scores: np.ndarray, included: np.ndarray, choices: Sequence[tuple[int, int]],
    delta: float = 0.0, confidence: float = 0.95,
) -> OneRunAudit:
    """The largest bound over a list of ``(k_plus, k_minus)`` fixed in advance, each tested at level
    ``β / len(choices)`` (Bonferroni), so the maximum is still a bound at confidence ``1 − β``."""
    if not choices:
        raise FedleakError("one_run_audit_best needs at least one (k_plus, k_minus) choice")
    level = 1.0 - (1.0 - confidence) / len(choices)
    best = max((one_run_audit(scores, included, kp, km, delta, level) for kp, km in choices),
               key=lambda a: a.epsilon)
    return OneRunAudit(best.epsilon, best.m, best.guesses, best.correct, best.k_plus, best.k_minus,
                       best.delta, confidence)


__all__ = [
    "OneRunAudit",
    "epsilon_lower_bound",
    "guesses_from_scores",
    "one_run_audit",
    "one_run_audit_best",
    "p_value",
]
