"""HTML and Markdown building blocks of the report: style sheet, tables, embedded figures, captions."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from fedleak.metrics.roc import HEADLINE_FPR, fpr_text

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
    "roc": "How many of the target's samples each attack finds (true positive rate, up) for a given share of "
    "non-members wrongly flagged (false positive rate, right), both on log scales from 1e-5. The dotted diagonal "
    "is guessing; a curve further up and to the left finds more members at fewer false alarms. The shaded band is "
    "below one false positive, which this number of non-members cannot resolve. Each attack has its own colour "
    "and marker; attacks that combine all rounds are dashed, FedMIA is drawn thick.",
    "tpr_per_round": "Share of the target's samples found at {fpr} false positives (the headline FPR), attacking "
    "each recorded round on its own (lines with markers; FedMIA's per-round test paler), and for the attacks that "
    "combine all rounds (horizontal lines across the plot). The dotted line at {fpr} is guessing. Rounds are "
    "numbered from 0.",
    "fedmia_scores": "Histograms of the FedMIA scores of the target's training samples (members) and of the other "
    "candidates (non-members); the less the two overlap, the easier members are to tell apart.",
    "utility": "Accuracy of the global model per round on training and held-out test data, and, in the rounds "
    "whose signals were recorded, the test accuracy of the model the target client uploaded. Rounds are numbered "
    "from 0.",
}
FIG_TITLES = {"roc": "ROC curves", "tpr_per_round": "TPR@{fpr} per round", "fedmia_scores": "FedMIA score distributions", "utility": "Utility"}


def fig_title(key: str, fpr: float) -> str:
    """A figure's title, its ``{fpr}`` the headline FPR in percent."""
    return FIG_TITLES[key].format(fpr=fpr_text(fpr))


def fig_caption(key: str, fpr: float) -> str:
    return FIG_CAPTIONS[key].format(fpr=fpr_text(fpr))


_CI = re.compile(r"95% CI [^)<]*")


def unbreakable_ci(text: str) -> str:
    """A narrow column wraps a cell before "95% CI a–b%", never inside it (no-break spaces, word joiners)."""
    return _CI.sub(lambda m: m.group(0).replace(" ", "&nbsp;").replace("–", "&#8288;–&#8288;"), text)


def html_table(head: list[str], rows: list[list[str]], best: dict | None = None, cls: str = "") -> str:
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
            tds.append(f"<td{ca}>{unbreakable_ci(html.escape(c))}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    ca = f' class="{cls}"' if cls else ""
    return f"<table{ca}><thead><tr>{h}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def md_table(head: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def strip_tags(s: str) -> str:
    for a, b in (("<b>", "**"), ("</b>", "**"), ("<i>", "*"), ("</i>", "*")):
        s = s.replace(a, b)
    return s


FIG_WIDTH = {"roc": 880, "tpr_per_round": 860, "fedmia_scores": 840, "utility": 800}


def html_fig(png: Path, key: str, heading: bool = True, fpr: float = HEADLINE_FPR) -> str:
    b64 = base64.b64encode(png.read_bytes()).decode("ascii")
    title = fig_title(key, fpr)
    head = f"<h3>{html.escape(title)}</h3>" if heading else ""
    return (
        f"<div class='fig'>{head}"
        f"<img alt='{html.escape(title)}' style='width:{FIG_WIDTH[key]}px' "
        f"src='data:image/png;base64,{b64}'>"
        f"<div class='cap'>{html.escape(fig_caption(key, fpr))}</div></div>"
    )
