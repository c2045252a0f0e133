"""``fedleak report``: one self-contained HTML page (figures embedded as base64 PNG) and a Markdown
twin, written to ``RUN/report.html`` and ``RUN/report.md``.

Sections: verdict (plain language), setup, utility, attack table (fixed round; rotating targets;
oracle round as a labelled extra), figures, notes on conventions, how to reproduce.
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any

from fedleak.attacks.mia.evaluation import Evaluation
from fedleak.attacks.mia.names import ATTACKS
from fedleak.attacks.mia.result import same_fpr
from fedleak.metrics.roc import HEADLINE_FPR, fpr_text
from fedleak.report.audit_section import audit_blocks
from fedleak.report.model import (
    Bullets,
    Code,
    Document,
    Figure,
    Footer,
    Heading,
    KeyValues,
    Paragraph,
    Table,
    Title,
    VerdictBox,
    to_html,
    to_markdown,
)
from fedleak.report.ranking import secondary_fprs
from fedleak.report.render import FIG_CAPTIONS
from fedleak.report.intervals_text import auc_text, tpr_text
from fedleak.report.verdict import Verdict, pct as _pct, verdict
from fedleak.signals.runconfig import read_run_config
from fedleak.signals.store import atomic_write_text, read_meta, read_metrics

__all__ = ["FIG_CAPTIONS", "Verdict", "build_report", "report_document", "verdict"]


def _num(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{float(x):.{digits}f}"


# --------------------------------------------------------------------------- content


def _config(run_dir: Path) -> dict[str, Any]:
    return read_run_config(run_dir)  # {} when absent; StoreError when damaged or edited after training


def setup_rows(run_dir: Path, ev: Evaluation) -> list[tuple[str, str]]:
    cfg, meta = _config(run_dir), read_meta(run_dir)
    g = lambda *ks, d=None: _dig(cfg, ks, d)  # noqa: E731
    ds = meta.get("dataset", {})
    rows: list[tuple[str, str]] = []
    rows.append(("experiment", f"{g('name', d='?')} (seed {g('seed', d=meta.get('seed', '?'))})"))
    if meta.get("synthetic"):
        toy = meta.get("toy", {})
        rows.append(("data", f"synthetic signals (toy model of the FedMIA spec §10, member shift a = {toy.get('shift')}); no network trained"))
    else:
        dline = f"{ds.get('name', g('data', 'name', d='?'))}"
        if ds:
            dline += f": {ds.get('n_train')} train / {ds.get('n_test')} test, {ds.get('num_classes')} classes, input {ds.get('input_shape')}"
        rows.append(("data", dline))
        mline = str(g("model", "name", d="?"))
        if meta.get("model", {}).get("trainable_parameters"):
            mline += f" ({meta['model']['trainable_parameters']:,} trainable parameters)"
        rows.append(("model", mline))
    part = g("partition", d={}) or {}
    scheme = part.get("scheme", "iid")
    pl = f"{part.get('num_clients', ev.num_clients)} clients, {scheme}"
    if scheme == "dirichlet":
        pl += f" (β = {part.get('beta')})"
    if meta.get("client_sizes"):
        cs = meta["client_sizes"]
        pl += f"; {min(cs)}–{max(cs)} samples per client"
    rows.append(("partition", pl))
    fl = g("fl", d={}) or {}
    if fl:
        sch = fl.get("schedule", {}) or {}
        rows.append(
            (
                "training",
                f"FedAvg, {fl.get('rounds')} rounds, participation {fl.get('participation', 1.0):g}, "
                f"{fl.get('local_epochs')} local epoch(s), batch {fl.get('batch_size')}, {fl.get('optimizer')} "
                f"lr {fl.get('lr')} ({sch.get('kind', '?')} schedule), "
                + (f"momentum {fl.get('momentum')}, " if fl.get("optimizer", "sgd") == "sgd" else "")
                + f"weight decay {fl.get('weight_decay')}",
            )
        )
    dfn = g("defense", d={}) or {}
    rows.append(("defense", "none" if dfn.get("name", "none") == "none" else f"{dfn.get('name')} {dfn.get('params', {})}"))
    rows.append(
        (
            "candidates",
            f"{ev.n_members} members (client {ev.target}'s training samples) and "
            f"{ev.n_nonmembers} non-members (held-out test samples and other clients' samples)",
        )
    )
    rows.append(("candidate protocol", ev.protocol or "?"))
    rr = list(ev.recorded_rounds)
    rows.append(("recorded rounds", f"{len(rr)}: {_short_list(rr)} (0-based)"))
    rows.append(("target client", f"{ev.target}; single-round attacks at round {ev.round} (0-based)"))
    rows.append(("attacks", basis(ev)))
    rows.append(("headline", f"TPR at {fpr_text(ev.headline_fpr)} FPR (--headline-fpr {ev.headline_fpr:g})"))
    fo = ev.fedmia_options or {}
    rows.append(
        (
            "FedMIA options",
            f"aggregation {fo.get('aggregation')}, ddof {fo.get('ddof')}, eps {fo.get('eps')}, "
            f"3σ filter {'on' if fo.get('outlier_filter') else 'off'}, robust null {'on' if fo.get('robust') else 'off'}",
        )
    )
    return rows


def _dig(d: dict, keys: tuple, default: Any) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def _short_list(xs: list[int], n: int = 8) -> str:
    if len(xs) <= n:
        return ", ".join(map(str, xs))
    return ", ".join(map(str, xs[: n // 2])) + ", …, " + ", ".join(map(str, xs[-n // 2 :]))


def utility_rows(rows: list[dict[str, Any]], recorded: list[int], target: int, max_rows: int = 16) -> list[list[str]]:
    """One table row per recorded round (thinned to max_rows, the last one kept)."""
    by_round = {int(r["round"]): r for r in rows if "round" in r}
    keep = [r for r in recorded if r in by_round] or sorted(by_round)
    if len(keep) > max_rows:
        step = len(keep) / max_rows
        keep = sorted({keep[int(i * step)] for i in range(max_rows)} | {keep[-1]})
    out = []
    for r in keep:
        row = by_round[r]
        cta = row.get("client_test_acc")
        tacc = cta[target] if isinstance(cta, list) and target < len(cta) else None
        out.append(
            [
                str(r),
                f"{row['lr']:.4g}" if row.get("lr") is not None else "–",
                _pct(row.get("train_acc"), 1),
                _pct(row.get("test_acc"), 1),
                _pct(tacc, 1),
                _num(row.get("train_loss"), 3),
                _num(row.get("test_loss"), 3),
            ]
        )
    return out


def order_note(fpr: float) -> str:
    return (f"Sorted by TPR@{fpr_text(fpr)}, ties by AUC, then by name (the verdict's strongest attack is the first "
            "row); the best value in each column is highlighted.")


UTILITY_HEAD = ["round (0-based)", "lr", "train acc (global)", "test acc (global)", "test acc (target's upload)", "train loss", "test loss"]


def attack_table(ev: Evaluation) -> tuple[list[str], list[list[str]], dict[tuple[int, int], bool]]:
    fprs, head_fpr = ev.fprs, ev.headline_fpr
    head = ["attack", "type", "AUC", "log-AUC", *[f"TPR@{fpr_text(f)}" for f in fprs], "balanced acc."]
    rows, raw = [], []
    kinds = {"single": "one round", "temporal": "all rounds, target only", "fedmia": "all rounds, vs. other clients"}
    for a in ev.ranked():
        kind = kinds[a.kind] + (f" (round {a.round})" if a.kind == "single" else "")
        vals = [a.auc, a.log_auc, *[a.tpr_at(f) for f in fprs], a.balanced_accuracy]
        raw.append(vals)
        tprs = [tpr_text(a, f) if same_fpr(f, head_fpr) else _pct(a.tpr_at(f)) for f in fprs]
        rows.append([a.label, kind, auc_text(a), _num(a.log_auc), *tprs, _pct(a.balanced_accuracy, 1)])
    best = {}
    for j in range(len(head) - 2):
        col = [r[j] for r in raw]
        mx = max(col)
        for i, v in enumerate(col):
            best[(i, j + 2)] = v == mx and mx > 0
    return head, rows, best


def rotating_table(ev: Evaluation) -> tuple[list[str], list[list[str]]] | None:
    if not ev.rotation.done:
        return None
    fprs = secondary_fprs(ev.headline_fpr)
    head = ["attack", "AUC", *[f"TPR@{fpr_text(f)}" for f in fprs]]
    rows = []
    for a in ev.rotating_ranked():
        r = a.rotating
        cells = [a.label, f"{r.auc.mean:.3f} ± {r.auc.std:.3f}"]
        cells += [f"{_pct(s.mean)} ± {_pct(s.std)}" for s in (a.rotating_tpr(f) for f in fprs)]
        rows.append(cells)
    return head, rows


def oracle_table(ev: Evaluation) -> tuple[list[str], list[list[str]]] | None:
    rows = []
    f = ev.headline_fpr
    for a in ev.attacks.values():
        o = a.oracle
        if o:
            rows.append([a.label, str(a.round), _pct(a.tpr_at(f)), str(o.round), _pct(o.tpr), _num(o.auc)])
    if not rows:
        return None
    t = fpr_text(f)
    return ["attack", "fixed round", f"TPR@{t} (fixed)", "oracle round", f"TPR@{t} (oracle)", "AUC (oracle)"], rows


def basis(ev: Evaluation) -> str:
    """Which attacks the report is based on, and how many."""
    n, n_all = len(ev.attacks), len(ATTACKS)
    lacking = [a for a in ev.extra.get("attacks_not_recorded", []) if a in ATTACKS and a not in ev.attacks]
    what = f"all {n} attacks fedleak implements" if set(ev.attacks) >= set(ATTACKS) else f"{n} of the {n_all} attacks"
    if lacking and set(ev.attacks) | set(lacking) >= set(ATTACKS):  # a run recorded before an array existed
        what = (f"all {n} attacks fedleak implements for this run's signals ({len(lacking)} more need arrays it "
                f"lacks: {', '.join(sorted({ATTACKS[a].measure for a in lacking}))}; re-record to add them)")
    return f"{what}: " + ", ".join(a.label for a in ev.ranked())


def notes(ev: Evaluation) -> list[str]:
    n_neg = ev.n_nonmembers
    conv = ev.fpr_convention
    last = ev.recorded_rounds[-1] if ev.recorded_rounds else 0
    res = fpr_text(min(ev.fprs)) if ev.fprs else "0.01%"
    out = [
        f"Rounds are numbered from 0 everywhere (terminal, report, figures, files): round {last} is the "
        f"{_ordinal(last + 1)} round and its signals are in signals/round_{last:04d}.npz.",
        f"Scores: higher = more likely a member. TPR@x% is the largest true-positive rate whose false-positive rate is "
        f"{'≤' if conv == '<=' else 'strictly below'} x% (the original FedMIA code uses strictly below).",
        f"With {n_neg} non-members, one false positive is {_pct(1 / n_neg, 3)} FPR, so TPR@{res} "
        + ("means: TPR with zero false positives." if 1 / n_neg > min(ev.fprs or (1e-4,)) else "is resolved."),
        "log-AUC: area under the ROC curve drawn with both axes on a log scale from 1e-5 to 1 (0.5 = chance); "
        "it rewards attacks that work at low FPR.",
        "Balanced accuracy is taken at the best threshold, chosen with the labels (an optimistic summary).",
        f"Verdict levels, from the strongest attack's TPR at {fpr_text(ev.headline_fpr)} FPR (the headline, "
        "--headline-fpr): none (not significantly above chance, "
        "p ≥ 0.01 after a Bonferroni correction for the number of attacks), low (< 5%), moderate (5–20%), high (≥ 20%).",
        "Single-round attacks are reported at a fixed round. The oracle round (chosen with the membership labels, "
        "as the original code does) is shown separately and is not an attack a real server could run.",
        "FedMIA: per round and candidate, the target's value is compared with a Gaussian fitted to the other "
        "clients' values (one-tailed Φ(z)); rounds are then combined (aggregation above).",
    ]
    if (ev.fedmia_options or {}).get("outlier_filter"):
        out.append(
            f"The 3σ filter cannot remove any shadow value with fewer than 10 shadows (the largest z-score among S "
            f"values is √(S−1) with ddof 0); this run has {ev.num_clients - 1} shadows."
        )
    return out


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def reproduce_lines(run_dir: Path, ev: Evaluation) -> list[str]:
    cfg = _config(run_dir)
    lines = []
    if cfg and not read_meta(run_dir).get("synthetic"):
        lines.append(f"fedleak train {run_dir / 'config.yaml'} --out {run_dir}")
    names = "" if set(ev.attacks) >= set(ATTACKS) else f" --attacks {','.join(ev.attacks)}"
    head = "" if same_fpr(ev.headline_fpr, HEADLINE_FPR) else f" --headline-fpr {ev.headline_fpr:g}"
    lines.append(f"fedleak attack {run_dir}{names} --round {ev.round}{head}")
    lines.append(f"fedleak report {run_dir}")
    return lines


def build_report(run_dir: str | Path, ev: Evaluation) -> tuple[Path, Path]:
    """Write RUN/report.html (self-contained) and RUN/report.md from the attack results (one document model)."""
    run_dir = Path(run_dir)
    doc = report_document(run_dir, ev, time.strftime("%Y-%m-%d %H:%M"))
    html_path, md_path = run_dir / "report.html", run_dir / "report.md"
    atomic_write_text(html_path, to_html(doc))
    atomic_write_text(md_path, to_markdown(doc))
    return html_path, md_path


def report_document(run_dir: Path, ev: Evaluation, when: str) -> Document:
    """What the report says, once, as blocks (rendered by :func:`fedleak.report.model.to_html` / ``to_markdown``)."""
    cfg = _config(run_dir)
    title = f"Privacy audit: {cfg.get('name', run_dir.name)}"
    adir = run_dir / "attack"
    figs = {k: adir / f for k, f in (ev.figures or {}).items() if (adir / f).is_file()}
    v = verdict(ev)
    level_word = {"none": "no measurable leakage", "low": "low", "moderate": "moderate", "high": "high"}[v.level]
    doc = Document()
    doc.add(
        Title(title, f"fedleak membership-inference audit · run <code>{html.escape(str(run_dir))}</code> · {when}",
              f"fedleak membership-inference audit · run `{run_dir}` · {when}"),
        VerdictBox(v.level, level_word, v.headline, list(v.sentences)),
        Heading(2, "Setup"), KeyValues(setup_rows(run_dir, ev)),
        Heading(2, "Utility"),
    )
    if "utility" in figs:
        doc.add(Figure(figs["utility"], "utility", heading=False))
    util_rows = utility_rows(read_metrics(run_dir), list(ev.recorded_rounds), ev.target)
    doc.add(Table(UTILITY_HEAD, util_rows) if util_rows else
            Paragraph("No per-round metrics (metrics.jsonl) in this run directory.", md=None))
    _attack_blocks(doc, ev)
    doc.add(*audit_blocks(run_dir))  # "Privacy audit" (report/audit_section.py); nothing without audit files
    doc.add(Heading(2, "Figures"))
    doc.add(*[Figure(figs[k], k, fpr=ev.headline_fpr) for k in ("roc", "tpr_per_round", "fedmia_scores") if k in figs])
    doc.add(
        Heading(2, "Notes"), Bullets(notes(ev)),
        Heading(2, "Reproduce"), Code(reproduce_lines(run_dir, ev)),
        Footer("<p class='sub'>Outputs: <code>attack/metrics.json</code>, <code>attack/metrics.csv</code>, "
               "<code>attack/scores.npz</code>, figures as PDF and PNG in <code>attack/</code>.</p></body></html>"),
    )
    return doc


def _attack_blocks(doc: Document, ev: Evaluation) -> None:
    head = f"Target client {ev.target}: {ev.n_members} members vs {ev.n_nonmembers} non-members. "
    at_head, at_rows, at_best = attack_table(ev)
    order = order_note(ev.headline_fpr)
    doc.add(
        Heading(2, "Attack results"),
        Paragraph(f"{head}Based on {html.escape(basis(ev))}. {order}", f"{head}Based on {basis(ev)}. {order}"),
        Table(at_head, at_rows, at_best),
    )
    rot = rotating_table(ev)
    if rot:
        doc.add(
            Heading(3, "Every client as the target", md_text="Every client as the target (mean ± std over clients)"),
            Paragraph(f"Mean ± std over the {len(ev.rotation.targets)} clients (each client's samples are "
                      "the members, all other candidates the non-members).", md=None, joined=True),
            Table(*rot),
        )
    orc = oracle_table(ev)
    if orc:
        doc.add(
            Heading(3, "Oracle best round", md_text="Oracle best round (optimistic: chosen with the labels)",
                    html_suffix=" <span class='label-oracle'>optimistic · uses the labels</span>"),
            Paragraph("The round at which each single-round attack happens to work best, picked with the membership "
                      "labels, as the original FedMIA code reports. A real attacker cannot make this choice; shown for "
                      "comparison with the paper only.", md=None),
            Table(*orc),
        )
