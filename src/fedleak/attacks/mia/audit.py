"""Empirical ε of a run from its attack scores: what ``RUN/attack[/<subset>]/audit.json`` holds.

Two kinds of entry per attack (schema shared with the client-level ``RUN/audit/clients.json``: ``level, method,
attack, epsilon, confidence, delta, valid_dp_bound, note, details``):

* ``one-run`` (only in a run with canaries) — Steinke, Nasr & Jagielski (2023) on the canaries' scores and coins
  (:func:`fedleak.metrics.one_run_audit.one_run_audit_best`). The guesser abstains except on a pre-declared grid of
  ``(k₊, k₋)`` (:func:`k_choices`: ``r = ⌈f·m⌉`` guesses for f in 10%, 20%, 50%, 100% of the canaries, half of them
  "in" for the highest scores, half "out" for the lowest), each tested at ``β / len(grid)`` (Bonferroni), so the
  entry is a lower bound on ε at the stated confidence. ``one-run, best attack`` takes the largest over all attacks
  with a further Bonferroni factor (each attack at ``β / (attacks · grid)``), so it too is a bound at the stated
  confidence — the number the report's plain-language reading quotes.
* ``roc-split-half`` and ``roc-optimistic`` on the ordinary candidates
  (:func:`fedleak.metrics.epsilon.empirical_epsilon`): the threshold chosen on one random half, the bound evaluated
  on the other; and the maximum over thresholds on the same data. Neither is a DP bound here: which candidates are
  members is fixed by the data split, not randomised (``valid_dp_bound: false``; docs/auditing.md).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fedleak.attacks.mia.attacks import ATTACKS, run_attacks
from fedleak.errors import FedleakError
from fedleak.metrics.epsilon import empirical_epsilon
from fedleak.metrics.one_run_audit import one_run_audit_best
from fedleak.signals.canaries import CanarySet
from fedleak.signals.loading import Signals

ONE_RUN = "one-run"
ONE_RUN_BEST = "one-run, best attack"
ROC_SPLIT = "roc-split-half"
ROC_OPTIMISTIC = "roc-optimistic"
CHOICE_FRACTIONS = (0.1, 0.2, 0.5, 1.0)
DEFAULT_DELTA = 1e-5

ONE_RUN_NOTE = ("lower bound on the run's ε for one sample (Steinke et al. 2023): canaries inserted by independent "
                "fair coins; guesses on a pre-declared grid, Bonferroni-corrected")
BEST_NOTE = ("the largest one-run bound over all attacks, each tested at the level divided by the number of attacks "
             "(Bonferroni): still a lower bound at the stated confidence")
ROC_NOTE = ("not a DP bound: membership not randomised (the data split decides which candidates are members); a "
            "summary of the attack's strength in ε units")
OPTIMISTIC_NOTE = ("optimistic: threshold chosen on the same scores it is evaluated on; not a confidence bound, and "
                   "not a DP bound (membership not randomised)")


def k_choices(m: int) -> list[tuple[int, int]]:
    """The pre-declared ``(k₊, k₋)`` grid for ``m`` canaries (module docstring), fixed before any score is seen."""
    out: list[tuple[int, int]] = []
    for f in CHOICE_FRACTIONS:
        r = min(m, max(1, math.ceil(f * m)))
        kp = math.ceil(r / 2)
        if (kp, r - kp) not in out:
            out.append((kp, r - kp))
    return out


def resolve_delta(configured: float | None, privacy: dict[str, Any] | None) -> tuple[float, str]:
    """δ of the bounds and where it came from: ``audit.delta``, else the accountant's δ, else 1e-5."""
    if configured is not None:
        return float(configured), "audit.delta"
    if privacy and isinstance(privacy.get("delta"), (int, float)) and 0 < privacy["delta"] < 1:
        return float(privacy["delta"]), "the accountant's δ"
    return DEFAULT_DELTA, "default (no accountant)"


def _entry(method: str, attack: str | None, epsilon: float, confidence: float | None, delta: float, valid: bool,
           note: str, details: dict[str, Any]) -> dict[str, Any]:
    return {"level": "sample", "method": method, "attack": attack, "epsilon": float(epsilon),
            "confidence": confidence, "delta": float(delta), "valid_dp_bound": valid, "note": note,
            "details": details}


def roc_entries(attack: str, labels: np.ndarray, scores: np.ndarray, delta: float, confidence: float,
                seed: int) -> list[dict[str, Any]]:
    """The split-half and optimistic ROC ε̂ of one attack on the ordinary candidates (none when a half would
    hold fewer than 2 members or non-members)."""
    try:
        b = empirical_epsilon(labels, np.nan_to_num(scores, nan=-np.inf), delta, confidence, seed)
    except FedleakError:
        return []
    d = b.as_dict()
    held = {k: d[k] for k in ("threshold", "tp", "n_pos", "fp", "n_neg", "seed")}
    return [_entry(ROC_SPLIT, attack, b.epsilon, confidence, delta, False, ROC_NOTE, held),
            _entry(ROC_OPTIMISTIC, attack, b.optimistic, None, delta, False, OPTIMISTIC_NOTE, {"seed": seed})]


def canary_scores(canary_sig: Signals, names: list[str], round: int, target: int,
                  **fedmia_options: Any) -> dict[str, np.ndarray]:
    """Every attack's score of every canary, computed exactly as for the candidates (NaN -> -inf: least member)."""
    raw = run_attacks(canary_sig, names, round=round, target=target, **fedmia_options)
    return {n: np.where(np.isnan(s), -np.inf, s) for n, s in raw.items()}


def one_run_entries(scores: dict[str, np.ndarray], canaries: CanarySet, delta: float, confidence: float,
                    kind: str) -> list[dict[str, Any]]:
    """One ``one-run`` entry per attack, then the ``one-run, best attack`` entry (module docstring)."""
    choices = k_choices(canaries.m)
    out, best = [], None
    level_all = 1.0 - (1.0 - confidence) / max(len(scores), 1)
    for name, s in scores.items():
        a = one_run_audit_best(s, canaries.inserted, choices, delta, confidence)
        details = {**a.as_dict(), "kind": kind, "k_choices": choices, "inserted": int(canaries.inserted.sum())}
        out.append(_entry(ONE_RUN, name, a.epsilon, confidence, delta, True, ONE_RUN_NOTE, details))
        strict = one_run_audit_best(s, canaries.inserted, choices, delta, level_all)
        if best is None or strict.epsilon > best[1].epsilon:
            best = (name, strict)
    if best is not None:
        name, a = best
        details = {**a.as_dict(), "confidence": confidence, "kind": kind, "k_choices": choices,
                   "attacks_tested": len(scores), "per_attack_confidence": level_all}
        out.append(_entry(ONE_RUN_BEST, name, a.epsilon, confidence, delta, True, BEST_NOTE, details))
    return out


def sample_audit(
    sig: Signals, labels: np.ndarray, scores: dict[str, np.ndarray], *, round: int, target: int,
    confidence: float, delta: float, seed: int, canaries: tuple[CanarySet, Signals] | None = None,
    kind: str | None = None, **fedmia_options: Any,
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Every entry of ``audit.json`` for the attacks in ``scores`` (the candidates' scores for ``target``), and
    the canaries' scores per attack (empty without canaries, or when ``target`` is not the client that holds
    them)."""
    names = [n for n in scores if n in ATTACKS]
    entries: list[dict[str, Any]] = []
    c_scores: dict[str, np.ndarray] = {}
    if canaries is not None and canaries[0].m > 0 and canaries[0].target == target:
        cset, csig = canaries
        c_scores = canary_scores(csig, names, round, target, **fedmia_options)
        entries += one_run_entries(c_scores, cset, delta, confidence, kind or "?")
    for n in names:
        entries += roc_entries(n, labels, scores[n], delta, confidence, seed)
    return entries, c_scores


__all__ = ["CHOICE_FRACTIONS", "ONE_RUN", "ONE_RUN_BEST", "ROC_OPTIMISTIC", "ROC_SPLIT", "canary_scores",
           "k_choices", "one_run_entries", "resolve_delta", "roc_entries", "sample_audit"]
