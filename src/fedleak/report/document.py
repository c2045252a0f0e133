"""``fedleak report``: one self-contained HTML page (figures embedded as base64 PNG) and a Markdown
twin, written to ``RUN/report.html`` and ``RUN/report.md``.

Sections: verdict (plain language), setup, utility, attack table (fixed round; rotating targets;
oracle round as a labelled extra), figures, notes on conventions, how to reproduce.
"""

from __future__ import annotations

import base64
import html
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedleak.metrics.roc import chance_p_value, fpr_key
from fedleak.signals.runconfig import read_run_config
from fedleak.signals.store import atomic_write_text, read_meta, read_metrics

HEAD = 0.001
HEAD_KEY = fpr_key(HEAD)
TEMPORAL_TARGET_ONLY = ("loss-series", "avg-cosine", "avg-diff", "avg-norm")


def _pct(x: float | None, digits: int = 2) -> str:
    if x is None:
        return "–"
    return f"{100 * float(x):.{digits}f}%"


def _num(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{float(x):.{digits}f}"


# --------------------------------------------------------------------------- verdict


@dataclass
class Verdict:
    level: str  # none | low | moderate | high
    headline: str
    sentences: list[str]


def verdict(metrics: dict[str, Any]) -> Verdict:
    attacks = metrics["attacks"]
    compat = metrics.get("protocol") == "official-compat"
    eligible = {n: a for n, a in attacks.items() if not (compat and n in TEMPORAL_TARGET_ONLY)} or attacks
    best_name = max(eligible, key=lambda n: (eligible[n][HEAD_KEY], eligible[n]["auc"]))
    b = eligible[best_name]
    n_pos, n_neg = metrics["n_members"], metrics["n_nonmembers"]
    tpr = float(b[HEAD_KEY])
    eff_fpr = max(HEAD, 1.0 / n_neg) if metrics.get("fpr_convention") == "<=" else HEAD
    n_tried = len(eligible)
    p = min(1.0, chance_p_value(n_pos, tpr, eff_fpr) * n_tried)  # Bonferroni: the best of n_tried attacks
    t = metrics["target"]
    found = int(round(tpr * n_pos))
    if p >= 0.01 or tpr <= 2 * eff_fpr:
        level = "none"
        headline = "No clear membership leakage at low false-positive rates."
    elif tpr < 0.05:
        level = "low"
        headline = "Low membership leakage: a few of the target's samples can be identified with confidence."
    elif tpr < 0.20:
        level = "moderate"
        headline = "Moderate membership leakage: a minority of the target's samples can be identified with confidence."
    else:
        level = "high"
        headline = "High membership leakage: many of the target's training samples can be identified with confidence."
    s = [
        f"The strongest attack, <b>{b['label']}</b>, lets a server that only watches the uploaded updates pick out "
        f"<b>{_pct(tpr)}</b> of client {t}'s training samples ({found} of {n_pos}) while wrongly flagging at most "
        f"0.1% of non-members. A blind guess at that false-alarm rate would find about 0.1% "
        f"(probability that the best of these {n_tried} attacks does this well by chance: {_pfmt(p)}).",
        f"Its AUC is {b['auc']:.3f} (0.5 = guessing, 1 = perfect ranking of members above non-members)"
        + (f"; at a 1% false-alarm rate it finds {_pct(b[fpr_key(0.01)])}." if fpr_key(0.01) in b else "."),
    ]
    fed = [a for n, a in attacks.items() if a["kind"] == "fedmia"]
    base = [a for n, a in eligible.items() if a["kind"] != "fedmia"]
    if fed and base:
        bf = max(fed, key=lambda a: a[HEAD_KEY])
        bb = max(base, key=lambda a: a[HEAD_KEY])
        rel = "more" if bf[HEAD_KEY] > bb[HEAD_KEY] else "less"
        s.append(
            f"Comparing the target's updates with the other clients' (FedMIA) reveals {rel} than looking at the "
            f"target alone: {bf['label']} {_pct(bf[HEAD_KEY])} vs {bb['label']} {_pct(bb[HEAD_KEY])} at 0.1% FPR."
        )
    rot = metrics.get("rotation", {})
    if rot.get("done"):
        r = b.get("rotating", {}).get(HEAD_KEY)
        if r:
            s.append(
                f"With every one of the {len(rot['targets'])} clients in turn as the target, {b['label']} reaches "
                f"{_pct(r['mean'])} ± {_pct(r['std'])} (mean ± std over clients)."
            )
    if compat:
        s.append(
            "⚠ This run used the <i>official-compat</i> candidate protocol: non-member rows change sample from round "
            "to round, which inflates the target-only temporal attacks (Loss-Series, Avg-*) at low FPR. They are left "
            "out of this verdict; rerun with candidates.protocol=aligned for valid numbers."
        )
    if 1.0 / n_neg > HEAD:
        s.append(
            f"Note: with {n_neg} non-members, FPR cannot be resolved below {_pct(1.0 / n_neg, 3)}; "
            "TPR at 0.1% is then the TPR with zero false positives."
        )
    return Verdict(level, headline, s)


# --------------------------------------------------------------------------- content


def _config(run_dir: Path) -> dict[str, Any]:
    return read_run_config(run_dir)  # {} when absent; StoreError when damaged or edited after training


def setup_rows(run_dir: Path, metrics: dict[str, Any]) -> list[tuple[str, str]]:
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
    pl = f"{part.get('num_clients', metrics['num_clients'])} clients, {scheme}"
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
            f"{metrics['n_members']} members (client {metrics['target']}'s training samples) and "
            f"{metrics['n_nonmembers']} non-members (held-out test samples and other clients' samples)",
        )
    )
    rows.append(("candidate protocol", metrics.get("protocol", "?")))
    rr = metrics["recorded_rounds"]
    rows.append(("recorded rounds", f"{len(rr)}: {_short_list(rr)} (0-based)"))
    rows.append(("target client", f"{metrics['target']}; single-round attacks at round {metrics['round']}"))
    fo = metrics.get("fedmia_options", {})
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


UTILITY_HEAD = ["round", "lr", "train acc (global)", "test acc (global)", "test acc (target's upload)", "train loss", "test loss"]


def attack_table(metrics: dict[str, Any]) -> tuple[list[str], list[list[str]], dict[tuple[int, int], bool]]:
    fprs = metrics["fpr_targets"]
    head = ["attack", "type", "AUC", "log-AUC", *[f"TPR@{100 * f:g}%" for f in fprs], "balanced acc."]
    rows, raw = [], []
    kinds = {"single": "one round", "temporal": "all rounds, target only", "fedmia": "all rounds, vs. other clients"}
    for name, a in sorted(metrics["attacks"].items(), key=lambda kv: -kv[1][HEAD_KEY]):
        kind = kinds[a["kind"]] + (f" (round {a['round']})" if a["kind"] == "single" else "")
        vals = [a["auc"], a["log_auc"], *[a[fpr_key(f)] for f in fprs], a["balanced_accuracy"]]
        raw.append(vals)
        rows.append(
            [a["label"], kind, _num(a["auc"]), _num(a["log_auc"]), *[_pct(a[fpr_key(f)]) for f in fprs], _pct(a["balanced_accuracy"], 1)]
        )
    best = {}
    for j in range(len(head) - 2):
        col = [r[j] for r in raw]
        mx = max(col)
        for i, v in enumerate(col):
            best[(i, j + 2)] = v == mx and mx > 0
    return head, rows, best


def rotating_table(metrics: dict[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    if not metrics.get("rotation", {}).get("done"):
        return None
    keys = ["auc", fpr_key(0.01), HEAD_KEY]
    head = ["attack", "AUC", "TPR@1%", "TPR@0.1%"]
    rows = []
    for name, a in sorted(metrics["attacks"].items(), key=lambda kv: -kv[1]["rotating"][HEAD_KEY]["mean"]):
        r = a["rotating"]
        cells = [a["label"], f"{r['auc']['mean']:.3f} ± {r['auc']['std']:.3f}"]
        cells += [f"{_pct(r[k]['mean'])} ± {_pct(r[k]['std'])}" for k in keys[1:]]
        rows.append(cells)
    return head, rows


def oracle_table(metrics: dict[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    rows = []
    for name, a in metrics["attacks"].items():
        o = a.get("oracle")
        if o:
            rows.append([a["label"], str(a["round"]), _pct(a[HEAD_KEY]), str(o["round"]), _pct(o[HEAD_KEY]), _num(o["auc"])])
    if not rows:
        return None
    return ["attack", "fixed round", "TPR@0.1% (fixed)", "oracle round", "TPR@0.1% (oracle)", "AUC (oracle)"], rows


def notes(metrics: dict[str, Any]) -> list[str]:
    n_neg = metrics["n_nonmembers"]
    conv = metrics.get("fpr_convention", "<=")
    out = [
        f"Scores: higher = more likely a member. TPR@x% is the largest true-positive rate whose false-positive rate is "
        f"{'≤' if conv == '<=' else 'strictly below'} x% (the original FedMIA code uses strictly below).",
        f"With {n_neg} non-members, one false positive is {_pct(1 / n_neg, 3)} FPR, so TPR@0.01% "
        + ("means: TPR with zero false positives." if 1 / n_neg > 1e-4 else "is resolved."),
        "log-AUC: area under the ROC curve drawn with both axes on a log scale from 1e-5 to 1 (0.5 = chance); "
        "it rewards attacks that work at low FPR.",
        "Balanced accuracy is taken at the best threshold, chosen with the labels (an optimistic summary).",
        "Verdict levels, from the strongest attack's TPR at 0.1% FPR: none (not significantly above chance, "
        "p ≥ 0.01 after a Bonferroni correction for the number of attacks), low (< 5%), moderate (5–20%), high (≥ 20%).",
        "Single-round attacks are reported at a fixed round. The oracle round (chosen with the membership labels, "
        "as the original code does) is shown separately and is not an attack a real server could run.",
        "FedMIA: per round and candidate, the target's value is compared with a Gaussian fitted to the other "
        "clients' values (one-tailed Φ(z)); rounds are then combined (aggregation above).",
    ]
    fo = metrics.get("fedmia_options", {})
    if fo.get("outlier_filter"):
        out.append(
            f"The 3σ filter cannot remove any shadow value with fewer than 10 shadows (the largest z-score among S "
            f"values is √(S−1) with ddof 0); this run has {metrics['num_clients'] - 1} shadows."
        )
    return out


def reproduce_lines(run_dir: Path, metrics: dict[str, Any]) -> list[str]:
    cfg = _config(run_dir)
    lines = []
    if cfg and not read_meta(run_dir).get("synthetic"):
        lines.append(f"fedleak train {run_dir / 'config.yaml'} --out {run_dir}")
    names = ",".join(metrics["attacks"])
    lines.append(f"fedleak attack {run_dir} --attacks {names} --round {metrics['round']}")
    lines.append(f"fedleak report {run_dir}")
    return lines


# --------------------------------------------------------------------------- renderers

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1060px;margin:24px auto;padding:0 20px;color:#1d2329;line-height:1.5}
h1{font-size:1.7em;margin-bottom:0}h2{margin-top:1.8em;border-bottom:1px solid #dde3ea;padding-bottom:4px;font-size:1.3em}
.sub{color:#5b6670;margin-top:2px}
.verdict{border-radius:8px;padding:14px 18px;margin:18px 0;border-left:6px solid}
.verdict h3{margin:0 0 6px 0;font-size:1.15em}.verdict p{margin:6px 0}
.v-none{background:#eef7ee;border-color:#3c9a3c}.v-low{background:#f4f8e8;border-color:#8aae2d}
.v-moderate{background:#fff6e5;border-color:#e39b1b}.v-high{background:#fdecec;border-color:#d23c3c}
table{border-collapse:collapse;margin:10px 0;font-size:.92em}
th,td{padding:5px 10px;border-bottom:1px solid #e6ebf0;text-align:left;vertical-align:top}
th{background:#f4f6f8;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
td.best{font-weight:700;background:#eef4ff}
table.kv td:first-child{color:#5b6670;white-space:nowrap;width:170px}
.fig{margin:16px 0}.fig img{max-width:100%;border:1px solid #e6ebf0;border-radius:4px}
.fig .cap{color:#5b6670;font-size:.9em;margin-top:4px}
.label-oracle{display:inline-block;background:#fff0c2;border:1px solid #e3c25b;border-radius:4px;padding:0 6px;font-size:.85em}
code,pre{background:#f4f6f8;border-radius:4px}pre{padding:10px;overflow-x:auto;font-size:.88em}
ul.notes li{margin:3px 0;color:#39424b}
"""

FIG_CAPTIONS = {
    "roc": "ROC curves of every attack on log-log axes (from 1e-5). The dotted diagonal is chance; the further up-left, "
    "the more members are found at few false alarms. Shaded: FPRs below one false positive.",
    "tpr_per_round": "TPR at 0.1% FPR in each recorded round (lines with markers) and for the attacks that combine all "
    "rounds (horizontal lines). The paper's figure.",
    "fedmia_scores": "Distribution of the FedMIA scores of members and non-members of the target client.",
    "utility": "Accuracy of the global model per round (and of the target's uploaded model where signals were recorded).",
}
FIG_TITLES = {"roc": "ROC curves", "tpr_per_round": "TPR@0.1% per round", "fedmia_scores": "FedMIA score distributions", "utility": "Utility"}


def _html_table(head: list[str], rows: list[list[str]], best: dict | None = None, cls: str = "") -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    body = []
    for i, r in enumerate(rows):
        tds = []
        for j, c in enumerate(r):
            classes = []
            if cls != "kv" and j >= 1 and (c[:1].isdigit() or c[:1] in "–-"):
                classes.append("n")
            if best and best.get((i, j)):
                classes.append("best")
            ca = f' class="{" ".join(classes)}"' if classes else ""
            tds.append(f"<td{ca}>{html.escape(c)}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    ca = f' class="{cls}"' if cls else ""
    return f"<table{ca}><thead><tr>{h}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _strip_tags(s: str) -> str:
    for a, b in (("<b>", "**"), ("</b>", "**"), ("<i>", "*"), ("</i>", "*")):
        s = s.replace(a, b)
    return s


def build_report(run_dir: str | Path, metrics: dict[str, Any]) -> tuple[Path, Path]:
    """Write RUN/report.html (self-contained) and RUN/report.md from the attack metrics."""
    run_dir = Path(run_dir)
    adir = run_dir / "attack"
    cfg = _config(run_dir)
    title = f"Privacy audit: {cfg.get('name', run_dir.name)}"
    when = time.strftime("%Y-%m-%d %H:%M")
    v = verdict(metrics)
    setup = setup_rows(run_dir, metrics)
    util_rows = utility_rows(read_metrics(run_dir), metrics["recorded_rounds"], metrics["target"])
    at_head, at_rows, at_best = attack_table(metrics)
    rot = rotating_table(metrics)
    orc = oracle_table(metrics)
    figs = {k: adir / f for k, f in (metrics.get("figures") or {}).items() if (adir / f).is_file()}
    nts = notes(metrics)
    repro = reproduce_lines(run_dir, metrics)
    level_word = {"none": "no measurable leakage", "low": "low", "moderate": "moderate", "high": "high"}[v.level]

    # ---------------- HTML
    H: list[str] = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<div class='sub'>fedleak membership-inference audit · run <code>{html.escape(str(run_dir))}</code> · {when}</div>",
        f"<div class='verdict v-{v.level}'><h3>Verdict: {html.escape(level_word)}. {html.escape(v.headline)}</h3>",
        *[f"<p>{s}</p>" for s in v.sentences],
        "</div>",
        "<h2>Setup</h2>",
        _html_table(["", ""], [[a, b] for a, b in setup], cls="kv").replace("<thead><tr><th></th><th></th></tr></thead>", ""),
        "<h2>Utility</h2>",
    ]
    if "utility" in figs:
        H.append(_html_fig(figs["utility"], "utility", heading=False))
    if util_rows:
        H.append(_html_table(UTILITY_HEAD, util_rows))
    else:
        H.append("<p>No per-round metrics (metrics.jsonl) in this run directory.</p>")
    H += [
        "<h2>Attack results</h2>",
        f"<p>Target client {metrics['target']}: {metrics['n_members']} members vs {metrics['n_nonmembers']} non-members. "
        "Sorted by TPR@0.1%; the best value in each column is highlighted.</p>",
        _html_table(at_head, at_rows, at_best),
    ]
    if rot:
        H += [
            f"<h3>Every client as the target</h3><p>Mean ± std over the {len(metrics['rotation']['targets'])} clients "
            "(each client's samples are the members, all other candidates the non-members).</p>",
            _html_table(*rot),
        ]
    if orc:
        H += [
            "<h3>Oracle best round <span class='label-oracle'>optimistic · uses the labels</span></h3>",
            "<p>The round at which each single-round attack happens to work best, picked with the membership labels, as the "
            "original FedMIA code reports. A real attacker cannot make this choice; shown for comparison with the paper only.</p>",
            _html_table(*orc),
        ]
    H.append("<h2>Figures</h2>")
    for k in ("roc", "tpr_per_round", "fedmia_scores"):
        if k in figs:
            H.append(_html_fig(figs[k], k))
    H += ["<h2>Notes</h2><ul class='notes'>", *[f"<li>{html.escape(n)}</li>" for n in nts], "</ul>"]
    H += ["<h2>Reproduce</h2><pre>" + html.escape("\n".join(repro)) + "</pre>"]
    H.append(
        "<p class='sub'>Outputs: <code>attack/metrics.json</code>, <code>attack/metrics.csv</code>, "
        "<code>attack/scores.npz</code>, figures as PDF and PNG in <code>attack/</code>.</p></body></html>"
    )
    html_path = run_dir / "report.html"
    atomic_write_text(html_path, "\n".join(H))

    # ---------------- Markdown
    M: list[str] = [
        f"# {title}",
        "",
        f"fedleak membership-inference audit · run `{run_dir}` · {when}",
        "",
        f"## Verdict: {level_word}",
        "",
        f"**{v.headline}**",
        "",
        *[_strip_tags(s) + "\n" for s in v.sentences],
        "## Setup",
        "",
        _md_table(["item", "value"], [[a, b] for a, b in setup]),
        "",
        "## Utility",
        "",
    ]
    if "utility" in figs:
        M += [f"![utility](attack/{figs['utility'].name})", ""]
    if util_rows:
        M += [_md_table(UTILITY_HEAD, util_rows), ""]
    M += ["## Attack results", "", f"Target client {metrics['target']}: {metrics['n_members']} members vs {metrics['n_nonmembers']} non-members.", "", _md_table(at_head, at_rows), ""]
    if rot:
        M += ["### Every client as the target (mean ± std over clients)", "", _md_table(*rot), ""]
    if orc:
        M += ["### Oracle best round (optimistic: chosen with the labels)", "", _md_table(*orc), ""]
    M += ["## Figures", ""]
    for k in ("roc", "tpr_per_round", "fedmia_scores"):
        if k in figs:
            M += [f"### {FIG_TITLES[k]}", "", f"![{k}](attack/{figs[k].name})", "", FIG_CAPTIONS[k], ""]
    M += ["## Notes", "", *[f"- {n}" for n in nts], "", "## Reproduce", "", "```", *repro, "```", ""]
    md_path = run_dir / "report.md"
    atomic_write_text(md_path, "\n".join(M))
    return html_path, md_path


FIG_WIDTH = {"roc": 640, "tpr_per_round": 820, "fedmia_scores": 860, "utility": 640}


def _pfmt(p: float) -> str:
    if p < 1e-10:
        return "p < 1e-10"
    return f"p = {p:.2g}"


def _html_fig(png: Path, key: str, heading: bool = True) -> str:
    b64 = base64.b64encode(png.read_bytes()).decode("ascii")
    head = f"<h3>{html.escape(FIG_TITLES[key])}</h3>" if heading else ""
    return (
        f"<div class='fig'>{head}"
        f"<img alt='{html.escape(FIG_TITLES[key])}' style='width:{FIG_WIDTH[key]}px' "
        f"src='data:image/png;base64,{b64}'>"
        f"<div class='cap'>{html.escape(FIG_CAPTIONS[key])}</div></div>"
    )
