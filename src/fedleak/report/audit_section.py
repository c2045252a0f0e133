"""The report's "Privacy audit" section: the accountant's ε (an upper bound) beside every empirical ε̂.

Reads ``RUN/attack/audit.json`` (sample level, written by ``fedleak attack``) and, when present,
``RUN/audit/clients.json`` (client level: a JSON list of entries of the same schema). A plain-language reading
says what is proved at which confidence ("the strongest attack proves ε ≥ 0.9 at 95% confidence; the accountant
claims ε ≤ 8") and when a number is not a DP bound at all.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from fedleak.attacks.mia.names import ATTACKS
from fedleak.attacks.mia.audit import ONE_RUN, ONE_RUN_BEST, ROC_OPTIMISTIC, ROC_SPLIT
from fedleak.report.audit_outputs import AUDIT_FILE, CLIENTS_FILE, read_audit_entries
from fedleak.report.model import Block, Bullets, Heading, KeyValues, Paragraph, Table

ENTRY_HEAD = ["level", "method", "attack", "ε", "confidence", "δ", "DP bound?", "note"]


def _eps(x: Any) -> str:
    if isinstance(x, str):  # "inf" as written to JSON
        return "∞" if x == "inf" else x
    return "–" if x is None else f"{float(x):.3g}"


def _label(attack: Any) -> str:
    return ATTACKS[attack].label if attack in ATTACKS else ("–" if attack is None else str(attack))


def _conf(c: Any) -> str:
    return "–" if c is None else f"{100 * float(c):g}%"


def entry_row(e: dict[str, Any]) -> list[str]:
    valid = e.get("valid_dp_bound")
    return [str(e.get("level", "?")), str(e.get("method", "?")), _label(e.get("attack")),
            ("≥ " if valid else "") + _eps(e.get("epsilon")), _conf(e.get("confidence")), f"{e.get('delta', '–')}",
            "lower bound" if valid else "no", str(e.get("note", ""))]


def _counts(e: dict[str, Any]) -> str:
    d = e.get("details") or {}
    if "correct" in d:
        return f"{d['correct']} of {d['guesses']} guesses right (k₊ {d['k_plus']}, k₋ {d['k_minus']}; m {d['m']})"
    if "tp" in d:
        return f"held-out half: {d['tp']}/{d['n_pos']} members, {d['fp']}/{d['n_neg']} non-members flagged"
    return ""


def sample_table(entries: list[dict[str, Any]], confidence: Any) -> tuple[list[str], list[list[str]]]:
    """One row per attack: its one-run bound (with the canary guesses) and its two ROC ε̂."""
    by: dict[str, dict[str, dict[str, Any]]] = {}
    for e in entries:
        by.setdefault(str(e.get("attack")), {})[str(e.get("method"))] = e
    one_run = any(ONE_RUN in d for d in by.values())
    head = ["attack"] + ([f"one-run ε (lower bound, {_conf(confidence)})", "canary guesses"] if one_run else [])
    head += ["ROC ε̂, held-out threshold (not a DP bound)", "ROC ε̂, optimistic (not a bound)", "held-out counts"]
    rows = []
    for attack, d in by.items():
        if set(d) == {ONE_RUN_BEST}:
            continue
        row = [_label(attack)]
        if one_run:
            o = d.get(ONE_RUN)
            row += ["≥ " + _eps(o["epsilon"]), _counts(o)] if o else ["–", ""]
        row += [_eps(d[m]["epsilon"]) if m in d else "–" for m in (ROC_SPLIT, ROC_OPTIMISTIC)]
        row.append(_counts(d[ROC_SPLIT]) if ROC_SPLIT in d else "")
        rows.append(row)
    return head, rows


def _best(entries: list[dict[str, Any]], method: str) -> dict[str, Any] | None:
    found = [e for e in entries if e.get("method") == method and isinstance(e.get("epsilon"), (int, float))]
    return max(found, key=lambda e: e["epsilon"]) if found else None


def accountant_text(acc: dict[str, Any] | None) -> str:
    if not acc or acc.get("epsilon") is None:
        return "no accountant: the run has no DP defense, so no ε is claimed"
    return (f"ε ≤ {_eps(acc['epsilon'])} at δ = {acc.get('delta')} ({acc.get('level', 'sample')} level; "
            f"{acc.get('accountant', '?')} accountant of defense {acc.get('defense', '?')}, after round "
            f"{acc.get('round')})")


def reading(audit: dict[str, Any] | None, clients: list[dict[str, Any]]) -> str:
    """The plain-language reading of the section (one paragraph of text)."""
    entries = (audit or {}).get("entries", [])
    acc = (audit or {}).get("accountant")
    claim = f"the accountant claims ε ≤ {_eps(acc['epsilon'])}" if acc and acc.get("epsilon") is not None else \
        "no accountant claims any ε (no DP defense)"
    best = _best(entries, ONE_RUN_BEST)
    out = []
    if best is not None:
        c = _conf(best.get("confidence"))
        if best["epsilon"] > 0:
            out.append(f"The strongest attack ({_label(best['attack'])}) proves ε ≥ {_eps(best['epsilon'])} at {c} "
                       f"confidence (one-run canary audit, δ = {best['delta']:g}); {claim}.")
        else:
            out.append(f"No attack proves any ε > 0 at {c} confidence with these canaries; {claim}. That is not "
                       "evidence of privacy: stronger attacks or more canaries may find more.")
        if acc and isinstance(acc.get("epsilon"), (int, float)) and best["epsilon"] > acc["epsilon"]:
            out.append("A lower bound above the accountant's upper bound means a bug in the implementation or "
                       "in the accounting.")
    else:
        out.append(f"This run has no canaries, so nothing here is a DP lower bound; {claim}. Train with "
                   "audit.canaries=m (docs/auditing.md) to audit it.")
    roc = _best(entries, ROC_SPLIT)
    if roc is not None:
        out.append(f"The ROC ε̂ of the ordinary candidates (largest: {_eps(roc['epsilon'])}, "
                   f"{_label(roc['attack'])}) is not a DP bound: which candidates are members is fixed by the data "
                   "split, not randomised; it measures the attacks' strength in ε units.")
    valid_clients = [e for e in clients if e.get("valid_dp_bound")]
    if clients:
        kind = "a lower bound" if valid_clients else "an estimate, not a bound"
        top = max(clients, key=lambda e: float(e["epsilon"]) if isinstance(e.get("epsilon"), (int, float)) else -1)
        out.append(f"Client level: {top.get('method')} gives ε ≈ {_eps(top.get('epsilon'))} ({kind}).")
    return " ".join(out)


def audit_summary(audit: dict[str, Any]) -> str:
    """One terminal line for ``fedleak attack``: the best one-run bound (or why there is none) and the accountant."""
    best = _best(audit.get("entries", []), ONE_RUN_BEST)
    acc = audit.get("accountant")
    claim = f"accountant ε ≤ {_eps(acc['epsilon'])}" if acc and acc.get("epsilon") is not None else "no accountant"
    if best is None:
        return f"privacy audit: no canaries, no DP lower bound (ROC ε̂ are not DP bounds); {claim}"
    return (f"privacy audit: ε ≥ {_eps(best['epsilon'])} at {_conf(best.get('confidence'))} confidence "
            f"({_label(best['attack'])}, one-run canary audit); {claim}")


def audit_blocks(run_dir: Path) -> list[Block]:
    """The section's blocks; empty when the run has neither audit.json nor audit/clients.json."""
    audit = read_audit_entries(Path(run_dir) / "attack" / AUDIT_FILE)
    raw_clients = read_audit_entries(Path(run_dir) / CLIENTS_FILE)
    clients = raw_clients if isinstance(raw_clients, list) else (raw_clients or {}).get("entries", [])
    if audit is None and not clients:
        return []
    audit = audit if isinstance(audit, dict) else {"entries": audit or []}
    text = reading(audit, clients)
    rows = [("accountant (upper bound)", accountant_text(audit.get("accountant")))]
    can = audit.get("canaries")
    if can:
        rows.append(("canaries", f"{can['m']} {can['kind']} canaries, {can['inserted']} inserted into client "
                                 f"{can['target']}'s data by fair coins; guesses on the (k₊, k₋) grid "
                                 f"{', '.join(f'({a}, {b})' for a, b in can['k_choices'])}, Bonferroni-corrected"))
    rows.append(("confidence, δ", f"{_conf(audit.get('confidence'))}, δ = {audit.get('delta', '–')} "
                                  f"({audit.get('delta_source', '?')})"))
    sample = audit.get("entries", [])
    best = _best(sample, ONE_RUN_BEST)
    if best is not None:
        rows.append(("best one-run bound", f"ε ≥ {_eps(best['epsilon'])} ({_label(best['attack'])}; "
                                           f"{_counts(best)}; Bonferroni over the attacks)"))
    blocks: list[Block] = [Heading(2, "Privacy audit"), Paragraph(html.escape(text), text), KeyValues(rows)]
    if sample:
        seen = list(dict.fromkeys((e["method"], e.get("note", "")) for e in sample))
        blocks += [Heading(3, "Sample level"), Table(*sample_table(sample, audit.get("confidence"))),
                   Bullets([f"{m}: {n}" for m, n in seen])]
    if clients:
        blocks += [Heading(3, "Client level"), Table(ENTRY_HEAD, [entry_row(e) for e in clients])]
    for note in audit.get("notes", []):
        blocks.append(Paragraph(html.escape(note), note))
    return blocks


__all__ = ["audit_blocks", "audit_summary", "entry_row", "reading", "sample_table"]
