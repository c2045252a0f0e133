"""Figures of an attack evaluation (matplotlib, object API on the Agg canvas: no global state).

Each function returns a ``matplotlib.figure.Figure``; :func:`save` writes it as PDF and PNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fedleak.attacks.mia.evaluation import Evaluation
from fedleak.metrics.roc import fpr_text

LOG_MIN = 1e-5

# one colour, marker and line style per attack, none repeated: single-round attacks solid, attacks over
# all rounds dashed, FedMIA thick. SPARE styles go to attacks added later, in order.
STYLE: dict[str, dict[str, Any]] = {
    "blackbox-loss": {"color": "#1f77b4", "ls": "-", "marker": "o"},
    "grad-cosine": {"color": "#d62728", "ls": "-", "marker": "s"},
    "grad-diff": {"color": "#2ca02c", "ls": "-", "marker": "^"},
    "grad-norm": {"color": "#ff7f0e", "ls": "-", "marker": "v"},
    "loss-series": {"color": "#17becf", "ls": "--", "marker": "D"},
    "avg-cosine": {"color": "#e377c2", "ls": "--", "marker": "P"},
    "avg-diff": {"color": "#bcbd22", "ls": "--", "marker": "X"},
    "avg-norm": {"color": "#8c564b", "ls": "--", "marker": "<"},
    "fedmia-i": {"color": "#9467bd", "ls": "-", "marker": "*", "lw": 2.6},
    "fedmia-ii": {"color": "#111111", "ls": "-", "marker": "h", "lw": 2.6},
    "blackbox-margin": {"color": "#6baed6", "ls": "-", "marker": "x"},
    "loss-series-margin": {"color": "#9edae5", "ls": "--", "marker": "+"},
    "fedmia-i-margin": {"color": "#c5b0d5", "ls": "-", "marker": "|", "lw": 2.6},
}
SPARE: tuple[dict[str, Any], ...] = (
    {"color": "#393b79", "ls": "-.", "marker": ">"},
    {"color": "#637939", "ls": "-.", "marker": "p"},
    {"color": "#ad494a", "ls": ":", "marker": "d"},
    {"color": "#7b4173", "ls": ":", "marker": "8"},
    {"color": "#8c6d31", "ls": "-.", "marker": "H"},
)
LEGEND_OUTSIDE = {"loc": "upper left", "bbox_to_anchor": (1.02, 1.0), "borderaxespad": 0.0, "frameon": False}


def _new(w: float, h: float, **margins: float) -> Figure:
    # fixed margins instead of a layout engine: drawing twice to measure text is slow on busy CPUs
    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(**{"left": 0.12, "right": 0.97, "bottom": 0.11, "top": 0.92, **margins})
    return fig


def styles(names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """A distinct style for every attack: the fixed one where known, else the next unused spare."""
    names = list(names)
    spare = iter(SPARE)
    out: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(names):
        st = STYLE.get(name) or next(spare, None) or {"color": f"C{i % 10}", "ls": (0, (1, 1 + i % 4)), "marker": "."}
        out[name] = {"lw": 1.5, **st}
    return out


def _integer_rounds(ax: Any) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def save(fig: Figure, stem: Path) -> list[Path]:
    """Write ``stem.pdf`` and ``stem.png``; return both paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for ext, kw in (("pdf", {}), ("png", {"dpi": 150})):
        p = stem.with_suffix(f".{ext}")
        fig.savefig(p, **kw)
        out.append(p)
    return out


def _z(st: dict[str, Any]) -> float:
    """Thick lines underneath, so a thin line with the same values stays visible on top."""
    return 2.0 if st["lw"] > 2 else 3.0


def roc_figure(curves: dict[str, tuple[np.ndarray, np.ndarray]], ev: Evaluation, title: str = "") -> Figure:
    """Log-log ROC curves of every attack, axes from 1e-5, with the chance diagonal; legend beside the axes
    (each attack's AUC and TPR at the headline FPR, strongest first)."""
    fig = _new(8.8, 5.6, left=0.087, right=0.633, bottom=0.1, top=0.93)
    ax = fig.add_subplot()
    grid = np.logspace(-5, 0, 200)
    ax.plot(grid, grid, color="0.55", ls=":", lw=1.2, label="chance (TPR = FPR)")
    head = ev.headline_fpr
    order = [a for a in ev.ranked() if a.name in curves]
    sty = styles(a.name for a in order)
    for i, m in enumerate(order):
        fpr, tpr = curves[m.name]
        st = sty[m.name]
        # points at FPR = 0 or TPR = 0 sit on the axes' lower edge (1e-5); markers at staggered places
        # along each curve keep curves with equal values apart
        ax.plot(
            np.clip(fpr, LOG_MIN, 1), np.clip(tpr, LOG_MIN, 1), color=st["color"], ls=st["ls"], lw=st["lw"],
            marker=st["marker"], ms=5.5, mec="white", mew=0.5, markevery=(0.015 + 0.1 * i / max(len(order), 1), 0.1),
            zorder=_z(st), clip_on=False,
            label=f"{m.label}  (AUC {m.auc:.3f}, TPR@{fpr_text(head)} {100 * m.tpr_at(head):.2f}%)",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(LOG_MIN, 1)
    ax.set_ylim(LOG_MIN, 1)
    res = ev.fpr_resolution
    if res and res > LOG_MIN:
        ax.axvspan(LOG_MIN, res, color="0.92", zorder=0)
        ax.text(LOG_MIN * 1.3, 0.55, f"below 1/{ev.n_nonmembers}\nnon-members", fontsize=7, color="0.4", va="top")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7.5, title="strongest first", title_fontsize=8, **LEGEND_OUTSIDE)
    ax.set_title(title or "ROC curves (log-log)", fontsize=11)
    return fig


def tpr_per_round_figure(ev: Evaluation, fpr: float | None = None, title: str = "") -> Figure:
    """TPR at one FPR (default: the headline) against the round: per-round attacks as lines with markers, the
    attacks that combine all rounds (temporal, FedMIA) as horizontal lines."""
    fpr = ev.headline_fpr if fpr is None else fpr
    fig = _new(8.0, 4.6, left=0.086, right=0.667, bottom=0.12)
    ax = fig.add_subplot()
    rounds_all = list(ev.recorded_rounds) or [0]
    x0, x1 = min(rounds_all), max(rounds_all)
    order = ev.ranked(fpr)
    sty = styles(a.name for a in order)
    n_flat = 0
    for m in order:
        st, pr = sty[m.name], m.per_round
        if pr and pr.rounds:
            lab = m.label + (" (each round alone)" if m.kind == "fedmia" else "")
            ys = next(v for f, v in pr.tpr.items() if fpr_text(f) == fpr_text(fpr))
            ax.plot(
                pr.rounds, 100 * np.asarray(ys), color=st["color"], ls="-", lw=1.2, marker=st["marker"], ms=5,
                mfc="none", mew=1.1, alpha=0.9 if m.kind == "single" else 0.5, zorder=4, clip_on=False, label=lab,
            )
        if m.kind in ("temporal", "fedmia"):
            xs = np.linspace(x0, x1, 61)
            ax.plot(
                xs, np.full_like(xs, 100 * m.tpr_at(fpr)), color=st["color"], ls=st["ls"], lw=st["lw"],
                marker=st["marker"], ms=6, mec="white", mew=0.5, markevery=((2 * n_flat + 1) % 15, 15), zorder=_z(st),
                clip_on=False, label=f"{m.label} (all rounds)",
            )
            n_flat += 1
    ax.axhline(100 * fpr, color="0.5", ls=":", lw=1, label=f"chance ({100 * fpr:g}%)")
    ax.set_xlabel("communication round (0-based)")
    ax.set_ylabel(f"TPR at FPR {100 * fpr:g}% (%)")
    ax.set_xlim(x0 - 0.03 * max(x1 - x0, 1), x1 + 0.03 * max(x1 - x0, 1))
    ax.set_ylim(bottom=0)
    if len(rounds_all) <= 12:
        ax.set_xticks(rounds_all)  # the recorded rounds themselves
    else:
        _integer_rounds(ax)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7.5, **LEGEND_OUTSIDE)
    ax.set_title(title or f"TPR@{100 * fpr:g}% per round", fontsize=11)
    return fig


MEMBER_COLOR, NONMEMBER_COLOR = "#e6550d", "#3182bd"


def score_hist_figure(scores: dict[str, np.ndarray], labels: np.ndarray, ev: Evaluation, names: list[str]) -> Figure:
    """Member / non-member distributions of the given attacks' scores (one panel each)."""
    fig = _new(4.2 * max(len(names), 1), 3.6, left=0.08, right=0.98, bottom=0.14, top=0.9, wspace=0.25)
    axes = fig.subplots(1, max(len(names), 1), squeeze=False)[0]
    for ax, name in zip(axes, names):
        s = scores[name]
        fin = np.isfinite(s)
        lo, hi = (np.min(s[fin]), np.max(s[fin])) if fin.any() else (0.0, 1.0)
        if hi <= lo:
            hi = lo + 1.0
        bins = np.linspace(lo, hi, 51)
        ax.hist(s[~labels & fin], bins=bins, density=True, alpha=0.5, color=NONMEMBER_COLOR, label=f"non-members ({int((~labels).sum())})")
        ax.hist(s[labels & fin], bins=bins, density=True, alpha=0.5, color=MEMBER_COLOR, label=f"members ({int(labels.sum())})")
        m = ev.attacks[name]
        ax.set_title(f"{m.label}  (AUC {m.auc:.3f})", fontsize=10)
        agg = (ev.fedmia_options or {}).get("aggregation", "mean") if m.kind == "fedmia" else None
        ax.set_xlabel("score" + (f" ({agg} of Φ(z))" if agg == "mean" else f" ({agg})" if agg else ""))
        ax.set_ylabel("density")
        ax.legend(fontsize=8)
        ax.grid(True, alpha=0.3)
    return fig


def _series(rows: list[dict[str, Any]], value: Any) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in rows:
        v = value(r)
        if v is not None and np.isfinite(v):
            xs.append(int(r["round"]))
            ys.append(100 * float(v))
    return xs, ys


def _client_acc(target: int) -> Any:
    def get(r: dict[str, Any]) -> float | None:
        cta = r.get("client_test_acc")
        return cta[target] if isinstance(cta, list) and target < len(cta) else None

    return get


def utility_figure(rows: list[dict[str, Any]], target: int | None = None) -> Figure | None:
    """Global train/test accuracy per round (and the target's local model where recorded)."""
    if not rows:
        return None
    fig = _new(8.0, 3.6, left=0.08, right=0.7, bottom=0.14, top=0.9)
    ax = fig.add_subplot()
    for key, lab, col in (("train_acc", "global model, train", "#2ca02c"), ("test_acc", "global model, test", "#1f77b4")):
        xs, ys = _series(rows, lambda r, k=key: r.get(k))
        if xs:
            ax.plot(xs, ys, color=col, lw=1.6, label=lab, clip_on=False)
    if target is not None:
        xs, ys = _series(rows, _client_acc(target))
        if xs:
            ax.plot(xs, ys, "o", ms=3.5, color="#9467bd", alpha=0.8, zorder=3, clip_on=False,
                    label=f"target client {target}'s upload, test")
    ax.set_xlabel("communication round (0-based)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 102)  # room for a curve at 100%
    ax.set_yticks(range(0, 101, 20))
    _integer_rounds(ax)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, **LEGEND_OUTSIDE)
    ax.set_title("Utility per round", fontsize=11)
    return fig
