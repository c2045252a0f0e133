"""The report's plain-language verdict, from the attack metrics (``attack/metrics.json``).

The strongest attack is the first in :func:`fedleak.report.ranking.ranked` (the attack table's order);
equal values are said to be equal ("as much as", "tied with").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedleak.metrics.roc import chance_p_value, fpr_key
from fedleak.report.intervals_text import ci_pct, interval, pct
from fedleak.report.ranking import HEAD_FPR, HEAD_KEY, compare_word, ranked, same

TEMPORAL_TARGET_ONLY = ("loss-series", "avg-cosine", "avg-diff", "avg-norm")


@dataclass
class Verdict:
    level: str  # none | low | moderate | high
    headline: str
    sentences: list[str]


def pfmt(p: float) -> str:
    if p < 1e-10:
        return "p < 1e-10"
    return f"p = {p:.2g}"


def _names(labels: list[str], most: int = 3) -> str:
    if len(labels) <= most:
        return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]
    return f"{', '.join(labels[:most])} and {len(labels) - most} other(s)"


def tie_note(attacks: dict[str, dict[str, Any]], order: list[str]) -> str:
    """' (tied with ... at 0.1% FPR; ...)' when other attacks reach the best TPR@0.1%, else ''."""
    b = attacks[order[0]]
    tied = [n for n in order[1:] if same(attacks[n][HEAD_KEY], b[HEAD_KEY])]
    if not tied:
        return ""
    labels = _names([attacks[n]["label"] for n in tied])
    if all(not same(attacks[n]["auc"], b["auc"]) for n in tied):
        why = "listed first for its higher AUC"
    else:
        why = "listed first by name, the AUC being equal too"
    return f" (tied at 0.1% FPR with {labels}; {why})"


def _level(p: float, tpr: float, eff_fpr: float) -> tuple[str, str]:
    if p >= 0.01 or tpr <= 2 * eff_fpr:
        return "none", "No clear membership leakage at low false-positive rates."
    if tpr < 0.05:
        return "low", "Low membership leakage: a few of the target's samples can be identified with confidence."
    if tpr < 0.20:
        return "moderate", "Moderate membership leakage: a minority of the target's samples can be identified with confidence."
    return "high", "High membership leakage: many of the target's training samples can be identified with confidence."


def fedmia_sentence(attacks: dict[str, dict[str, Any]], eligible: dict[str, dict[str, Any]]) -> str | None:
    """FedMIA (target vs the other clients) against the best target-only attack, ties said as ties."""
    fed = {n: a for n, a in attacks.items() if a["kind"] == "fedmia"}
    base = {n: a for n, a in eligible.items() if a["kind"] != "fedmia"}
    if not fed or not base:
        return None
    bf, bb = fed[ranked(fed)[0]], base[ranked(base)[0]]
    word = compare_word(bf[HEAD_KEY], bb[HEAD_KEY])
    rel = "as much as" if word == "as much as" else f"{word} than"
    return (
        f"Comparing the target's updates with the other clients' (FedMIA) reveals {rel} looking at the "
        f"target alone: {bf['label']} {pct(bf[HEAD_KEY])} vs {bb['label']} {pct(bb[HEAD_KEY])} at 0.1% FPR."
    )


def ci_sentence(b: dict[str, Any], found: int, n_pos: int) -> str | None:
    """The strongest attack's 95% intervals, in words (None for metrics written without intervals)."""
    tpr_iv, auc_iv = interval(b, HEAD_KEY), interval(b, "auc")
    if not tpr_iv:
        return None
    auc = f"; that of its AUC is {auc_iv[0]:.3f}–{auc_iv[1]:.3f} (DeLong)" if auc_iv else ""
    return (
        f"The 95% confidence interval of the {pct(b[HEAD_KEY])} found at 0.1% FPR is {ci_pct(tpr_iv[0])}–"
        f"{ci_pct(tpr_iv[1])}% (exact Clopper–Pearson for {found} of {n_pos} members){auc}."
    )


def verdict(metrics: dict[str, Any]) -> Verdict:
    attacks = metrics["attacks"]
    compat = metrics.get("protocol") == "official-compat"
    eligible = {n: a for n, a in attacks.items() if not (compat and n in TEMPORAL_TARGET_ONLY)} or attacks
    order = ranked(eligible)
    b = eligible[order[0]]
    n_pos, n_neg = metrics["n_members"], metrics["n_nonmembers"]
    tpr = float(b[HEAD_KEY])
    eff_fpr = max(HEAD_FPR, 1.0 / n_neg) if metrics.get("fpr_convention") == "<=" else HEAD_FPR
    n_tried = len(eligible)
    p = min(1.0, chance_p_value(n_pos, tpr, eff_fpr) * n_tried)  # Bonferroni: the best of n_tried attacks
    t = metrics["target"]
    found = int(round(tpr * n_pos))
    level, headline = _level(p, tpr, eff_fpr)
    s = [
        f"The strongest attack, <b>{b['label']}</b>{tie_note(eligible, order)}, lets a server that only watches the "
        f"uploaded updates pick out <b>{pct(tpr)}</b> of client {t}'s training samples ({found} of {n_pos}) while "
        f"wrongly flagging at most 0.1% of non-members. A blind guess at that false-alarm rate would find about 0.1% "
        f"(probability that the best of these {n_tried} attacks does this well by chance: {pfmt(p)}).",
        f"Its AUC is {b['auc']:.3f} (0.5 = guessing, 1 = perfect ranking of members above non-members)"
        + (f"; at a 1% false-alarm rate it finds {pct(b[fpr_key(0.01)])}." if fpr_key(0.01) in b else "."),
    ]
    ci = ci_sentence(b, found, n_pos)
    if ci:
        s.append(ci)
    fs = fedmia_sentence(attacks, eligible)
    if fs:
        s.append(fs)
    rot = metrics.get("rotation", {})
    r = b.get("rotating", {}).get(HEAD_KEY) if rot.get("done") else None
    if r:
        s.append(
            f"With every one of the {len(rot['targets'])} clients in turn as the target, {b['label']} reaches "
            f"{pct(r['mean'])} ± {pct(r['std'])} (mean ± std over clients)."
        )
    if compat:
        s.append(
            "⚠ This run used the <i>official-compat</i> candidate protocol: non-member rows change sample from round "
            "to round, which inflates the target-only temporal attacks (Loss-Series, Avg-*) at low FPR. They are left "
            "out of this verdict; rerun with candidates.protocol=aligned for valid numbers."
        )
    if 1.0 / n_neg > HEAD_FPR:
        s.append(
            f"Note: with {n_neg} non-members, FPR cannot be resolved below {pct(1.0 / n_neg, 3)}; "
            "TPR at 0.1% is then the TPR with zero false positives."
        )
    return Verdict(level, headline, s)
