"""The report's plain-language verdict, from the typed attack results (``attack/metrics.json``), at the headline FPR.

The strongest attack is the first in :func:`fedleak.report.ranking.ranked` (the attack table's order);
equal values are said to be equal ("as much as", "tied with").
"""

from __future__ import annotations

from dataclasses import dataclass

from fedleak.attacks.mia.evaluation import Evaluation
from fedleak.attacks.mia.result import AttackResult, same_fpr
from fedleak.metrics.roc import chance_p_value, fpr_text
from fedleak.report.intervals_text import ci_pct, pct
from fedleak.report.ranking import compare_word, ranked, same

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


def tie_note(order: list[AttackResult], fpr: float) -> str:
    """' (tied at <fpr> FPR with ...; ...)' when other attacks reach the best TPR at ``fpr``, else ''."""
    b = order[0]
    tied = [a for a in order[1:] if same(a.tpr_at(fpr), b.tpr_at(fpr))]
    if not tied:
        return ""
    labels = _names([a.label for a in tied])
    if all(not same(a.auc, b.auc) for a in tied):
        why = "listed first for its higher AUC"
    else:
        why = "listed first by name, the AUC being equal too"
    return f" (tied at {fpr_text(fpr)} FPR with {labels}; {why})"


def _level(p: float, tpr: float, eff_fpr: float) -> tuple[str, str]:
    if p >= 0.01 or tpr <= 2 * eff_fpr:
        return "none", "No clear membership leakage at low false-positive rates."
    if tpr < 0.05:
        return "low", "Low membership leakage: a few of the target's samples can be identified with confidence."
    if tpr < 0.20:
        return "moderate", "Moderate membership leakage: a minority of the target's samples can be identified with confidence."
    return "high", "High membership leakage: many of the target's training samples can be identified with confidence."


def fedmia_sentence(attacks: list[AttackResult], eligible: list[AttackResult], fpr: float) -> str | None:
    """FedMIA (target vs the other clients) against the best target-only attack, ties said as ties."""
    fed = [a for a in attacks if a.kind == "fedmia"]
    base = [a for a in eligible if a.kind != "fedmia"]
    if not fed or not base:
        return None
    bf, bb = ranked(fed, fpr)[0], ranked(base, fpr)[0]
    word = compare_word(bf.tpr_at(fpr), bb.tpr_at(fpr))
    rel = "as much as" if word == "as much as" else f"{word} than"
    return (
        f"Comparing the target's updates with the other clients' (FedMIA) reveals {rel} looking at the "
        f"target alone: {bf.label} {pct(bf.tpr_at(fpr))} vs {bb.label} {pct(bb.tpr_at(fpr))} at {fpr_text(fpr)} FPR."
    )


def ci_sentence(b: AttackResult, fpr: float, found: int, n_pos: int) -> str | None:
    """The strongest attack's 95% intervals, in words (None for metrics written without intervals)."""
    r, auc_iv = b.rate(fpr), b.auc_ci
    if not r.ci:
        return None
    auc = f"; that of its AUC is {auc_iv[0]:.3f}–{auc_iv[1]:.3f} (DeLong)" if auc_iv else ""
    return (
        f"The 95% confidence interval of the {pct(r.tpr)} found at {fpr_text(fpr)} FPR is {ci_pct(r.ci[0])}–"
        f"{ci_pct(r.ci[1])}% (exact Clopper–Pearson for {found} of {n_pos} members){auc}."
    )


def _eligible(ev: Evaluation) -> list[AttackResult]:
    """The attacks the verdict may name: all but the target-only temporal ones under the official-compat protocol."""
    compat = ev.protocol == "official-compat"
    return [a for a in ev.attacks.values() if not (compat and a.name in TEMPORAL_TARGET_ONLY)] or list(ev.attacks.values())


def verdict(ev: Evaluation) -> Verdict:
    """The plain-language verdict at the evaluation's headline FPR."""
    fpr = ev.headline_fpr
    eligible = _eligible(ev)
    order = ranked(eligible, fpr)
    b = order[0]
    n_pos, n_neg = ev.n_members, ev.n_nonmembers
    tpr = b.tpr_at(fpr)
    eff_fpr = max(fpr, 1.0 / n_neg) if ev.fpr_convention == "<=" else fpr
    n_tried = len(eligible)
    p = min(1.0, chance_p_value(n_pos, tpr, eff_fpr) * n_tried)  # Bonferroni: the best of n_tried attacks
    found = int(round(tpr * n_pos))
    level, headline = _level(p, tpr, eff_fpr)
    other = next((f for f in (0.01, 0.1) if not same_fpr(f, fpr) and f in b.tpr), None)  # the next column
    s = [
        f"The strongest attack, <b>{b.label}</b>{tie_note(order, fpr)}, lets a server that only watches the "
        f"uploaded updates pick out <b>{pct(tpr)}</b> of client {ev.target}'s training samples ({found} of {n_pos}) "
        f"while wrongly flagging at most {fpr_text(fpr)} of non-members. A blind guess at that false-alarm rate would "
        f"find about {fpr_text(fpr)} (probability that the best of these {n_tried} attacks does this well by chance: "
        f"{pfmt(p)}).",
        f"Its AUC is {b.auc:.3f} (0.5 = guessing, 1 = perfect ranking of members above non-members)"
        + (f"; at a {fpr_text(other)} false-alarm rate it finds {pct(b.tpr[other])}." if other else "."),
    ]
    s += [x for x in (ci_sentence(b, fpr, found, n_pos), fedmia_sentence(list(ev.attacks.values()), eligible, fpr))
          if x]
    r = b.rotating_tpr(fpr) if ev.rotation.done else None
    if r:
        s.append(
            f"With every one of the {len(ev.rotation.targets)} clients in turn as the target, {b.label} reaches "
            f"{pct(r.mean)} ± {pct(r.std)} (mean ± std over clients)."
        )
    s += _caveats(ev, fpr)
    return Verdict(level, headline, s)


def _caveats(ev: Evaluation, fpr: float) -> list[str]:
    out = []
    if ev.protocol == "official-compat":
        out.append(
            "⚠ This run used the <i>official-compat</i> candidate protocol: non-member rows change sample from round "
            "to round, which inflates the target-only temporal attacks (Loss-Series, Avg-*) at low FPR. They are left "
            "out of this verdict; rerun with candidates.protocol=aligned for valid numbers."
        )
    if 1.0 / ev.n_nonmembers > fpr:
        out.append(
            f"Note: with {ev.n_nonmembers} non-members, FPR cannot be resolved below {pct(1.0 / ev.n_nonmembers, 3)}; "
            f"TPR at {fpr_text(fpr)} is then the TPR with zero false positives."
        )
    return out
