"""The report as one document model: a list of blocks, rendered to HTML and to Markdown by one function each.

``build_report`` (:mod:`fedleak.report.document`) decides *what* the report says, once; :func:`to_html` and
:func:`to_markdown` decide only *how* each kind of block looks. A block that is meaningful in only one
format says so (``md=None``: the paragraph is left out of the Markdown twin).
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from fedleak.metrics.roc import HEADLINE_FPR
from fedleak.report.render import CSS, fig_caption, fig_title, html_fig, html_table, md_table, strip_tags


@dataclass
class Title:
    title: str
    subtitle_html: str  # inline HTML
    subtitle_md: str


@dataclass
class VerdictBox:
    level: str
    words: str  # "moderate", "no measurable leakage", ...
    headline: str
    sentences: list[str]  # inline HTML


@dataclass
class Heading:
    level: int
    text: str
    md_text: str | None = None  # a longer Markdown heading (it has no paragraph below)
    html_suffix: str = ""  # inline HTML appended to the heading (e.g. a label)


@dataclass
class Paragraph:
    html: str  # inline HTML
    md: str | None  # None: HTML only
    joined: bool = False  # HTML: written on the line of the previous block


@dataclass
class Table:
    head: list[str]
    rows: list[list[str]]
    best: dict | None = None


@dataclass
class KeyValues:
    rows: list[tuple[str, str]]


@dataclass
class Figure:
    png: Path
    key: str
    heading: bool = True  # a titled figure with its caption (else the image alone)
    fpr: float = HEADLINE_FPR  # the headline FPR its title and caption name


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Code:
    lines: list[str]


@dataclass
class Footer:
    html: str  # HTML only


Block = Union[Title, VerdictBox, Heading, Paragraph, Table, KeyValues, Figure, Bullets, Code, Footer]


@dataclass
class Document:
    blocks: list[Block] = field(default_factory=list)

    def add(self, *blocks: Block) -> None:
        self.blocks.extend(blocks)


def _html_block(b: Block) -> list[str]:
    if isinstance(b, Title):
        return [
            "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
            f"<title>{html.escape(b.title)}</title><meta name='viewport' content='width=device-width, initial-scale=1'>",
            f"<style>{CSS}</style></head><body>",
            f"<h1>{html.escape(b.title)}</h1>",
            f"<div class='sub'>{b.subtitle_html}</div>",
        ]
    if isinstance(b, VerdictBox):
        return [
            f"<div class='verdict v-{b.level}'><h3>Verdict: {html.escape(b.words)}. {html.escape(b.headline)}</h3>",
            *[f"<p>{s}</p>" for s in b.sentences],
            "</div>",
        ]
    if isinstance(b, Heading):
        return [f"<h{b.level}>{html.escape(b.text)}{b.html_suffix}</h{b.level}>"]
    if isinstance(b, Paragraph):
        return [f"<p>{b.html}</p>"]
    if isinstance(b, Table):
        return [html_table(b.head, b.rows, b.best)]
    if isinstance(b, KeyValues):
        table = html_table(["", ""], [[k, v] for k, v in b.rows], cls="kv")
        return [table.replace("<thead><tr><th></th><th></th></tr></thead>", "")]
    if isinstance(b, Figure):
        return [html_fig(b.png, b.key, heading=b.heading, fpr=b.fpr)]
    if isinstance(b, Bullets):
        return ["<ul class='notes'>", *[f"<li>{html.escape(n)}</li>" for n in b.items], "</ul>"]
    if isinstance(b, Code):
        return ["<pre>" + html.escape("\n".join(b.lines)) + "</pre>"]
    return [b.html]  # Footer


def _md_block(b: Block) -> list[str]:
    if isinstance(b, Title):
        return [f"# {b.title}", "", b.subtitle_md, ""]
    if isinstance(b, VerdictBox):
        return [f"## Verdict: {b.words}", "", f"**{b.headline}**", "", *[strip_tags(s) + "\n" for s in b.sentences]]
    if isinstance(b, Heading):
        return ["#" * b.level + " " + (b.md_text or b.text), ""]
    if isinstance(b, Paragraph):
        return [] if b.md is None else [b.md, ""]
    if isinstance(b, Table):
        return [md_table(b.head, b.rows), ""]
    if isinstance(b, KeyValues):
        return [md_table(["item", "value"], [[k, v] for k, v in b.rows]), ""]
    if isinstance(b, Figure):
        image = [f"![{b.key}](attack/{b.png.name})", ""]
        return [f"### {fig_title(b.key, b.fpr)}", "", *image, fig_caption(b.key, b.fpr), ""] if b.heading else image
    if isinstance(b, Bullets):
        return [*[f"- {n}" for n in b.items], ""]
    if isinstance(b, Code):
        return ["```", *b.lines, "```", ""]
    return []  # Footer


def to_html(doc: Document) -> str:
    out: list[str] = []
    for b in doc.blocks:
        lines = _html_block(b)
        if out and (isinstance(b, Paragraph) and b.joined or isinstance(b, (Bullets, Code))):
            out[-1] += lines[0]  # written on the line of the heading above (as the report always was)
            lines = lines[1:]
        out.extend(lines)
    return "\n".join(out)


def to_markdown(doc: Document) -> str:
    return "\n".join(line for b in doc.blocks for line in _md_block(b))


__all__ = [
    "Block", "Bullets", "Code", "Document", "Figure", "Footer", "Heading", "KeyValues", "Paragraph", "Table", "Title",
    "VerdictBox", "to_html", "to_markdown",
]
