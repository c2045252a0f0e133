"""Figures of an attack evaluation (matplotlib, object API on the Agg canvas: no global state).

Each function returns a ``matplotlib.figure.Figure``; :func:`save` writes it as PDF and PNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fedleak.metrics.roc import fpr_key

LOG_MIN = 1e-5

# one stable colour per attack; FedMIA drawn thick
STYLE: dict[str, dict[str, Any]] = {
    "blackbox-loss": {"color": "#1f77b4", "ls": "-"},
    "grad-cosine": {"color": "#d62728", "ls": "-"},
    "grad-diff": {"color": "#2ca02c", "ls": "-"},
    "grad-norm": {"color": "#ff7f0e", "ls": "-"},
    "loss-series": {"color": "#1f77b4", "ls": "--"},
    "avg-cosine": {"color": "#d62728", "ls": "--"},
    "avg-diff": {"color": "#2ca02c", "ls": "--"},
    "avg-norm": {"color": "#ff7f0e", "ls": "--"},
    "fedmia-i": {"color": "#9467bd", "ls": "-", "lw": 2.4},
    "fedmia-ii": {"color": "#b8860b", "ls": "-", "lw": 2.4},
}


def _new(w: float, h: float, **margins: float) -> Figure:
    # fixed margins instead of a layout engine: drawing twice to measure text is slow on busy CPUs
    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(**{"left": 0.12, "right": 0.97, "bottom": 0.11, "top": 0.92, **margins})
    return fig


def _style(name: str) -> dict[str, Any]:
    s = dict(STYLE.get(name, {"color": "0.3", "ls": "-"}))
    s.setdefault("lw", 1.5)
    return s


def save(fig: Figure, stem: Path) -> list[Path]:
    """Write ``stem.pdf`` and ``stem.png``; return both paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for ext, kw in (("pdf", {}), ("png", {"dpi": 150})):
        p = stem.with_suffix(f".{ext}")
        fig.savefig(p, **kw)
        out.append(p)
    return out


def roc_figure(curves: dict[str, tuple[np.ndarray, np.ndarray]], metrics: dict[str, Any], title: str = "") -> Figure:
    """Log-log ROC curves of every attack, axes from 1e-5, with the chance diagonal."""
    fig = _new(6.4, 5.6)
    ax = fig.add_subplot()
    grid = np.logspace(-5, 0, 200)
    ax.plot(grid, grid, color="0.55", ls=":", lw=1.2, label="chance (TPR = FPR)")
    key = fpr_key(0.001)
    order = sorted(curves, key=lambda n: -metrics["attacks"][n][key])
    for name in order:
        fpr, tpr = curves[name]
        m = metrics["attacks"][name]
        st = _style(name)
        # points at FPR = 0 or TPR = 0 sit on the axes' lower edge (1e-5)
        ax.plot(
            np.clip(fpr, LOG_MIN, 1),
            np.clip(tpr, LOG_MIN, 1),
            color=st["color"],
            ls=st["ls"],
            lw=st["lw"],
            label=f"{m['label']}  (AUC {m['auc']:.3f}, TPR@0.1% {100 * m[key]:.2f}%)",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(LOG_MIN, 1)
    ax.set_ylim(LOG_MIN, 1)
    res = metrics.get("fpr_resolution")
    if res and res > LOG_MIN:
        ax.axvspan(LOG_MIN, res, color="0.92", zorder=0)
        ax.text(LOG_MIN * 1.3, 0.55, f"below 1/{metrics['n_nonmembers']}\nnon-members", fontsize=7, color="0.4", va="top")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="lower right", fontsize=7.2, framealpha=0.9)
    ax.set_title(title or "ROC curves (log-log)", fontsize=11)
    return fig


def tpr_per_round_figure(metrics: dict[str, Any], fpr: float = 0.001, title: str = "") -> Figure:
    """TPR at one FPR against the round (the paper's figure): per-round attacks as lines, temporal
    attacks and FedMIA's aggregate as horizontal lines."""
    key = fpr_key(fpr)
    fig = _new(7.6, 4.6, left=0.08, right=0.66, bottom=0.12)
    ax = fig.add_subplot()
    rounds_all = metrics.get("recorded_rounds") or [0]
    x0, x1 = min(rounds_all), max(rounds_all)
    for name, m in metrics["attacks"].items():
        st = _style(name)
        pr = m.get("per_round")
        if pr and pr["rounds"]:
            lab = m["label"] + (" (each round alone)" if m["kind"] == "fedmia" else "")
            ax.plot(
                pr["rounds"], 100 * np.asarray(pr[key]), color=st["color"], ls="-", lw=1.2,
                marker="o", ms=3, alpha=0.85 if m["kind"] == "single" else 0.55, label=lab,
            )
        if m["kind"] in ("temporal", "fedmia"):
            ax.hlines(
                100 * m[key], x0, x1, color=st["color"], ls="--" if m["kind"] == "temporal" else "-",
                lw=st["lw"], label=f"{m['label']} (all rounds)",
            )
    ax.axhline(100 * fpr, color="0.5", ls=":", lw=1, label=f"chance ({100 * fpr:g}%)")
    ax.set_xlabel("communication round (0-based)")
    ax.set_ylabel(f"TPR at FPR {100 * fpr:g}% (%)")
    ax.set_xlim(x0 - 0.03 * max(x1 - x0, 1), x1 + 0.03 * max(x1 - x0, 1))
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set_title(title or f"TPR@{100 * fpr:g}% per round", fontsize=11)
    return fig


def score_hist_figure(scores: dict[str, np.ndarray], labels: np.ndarray, metrics: dict[str, Any], names: list[str]) -> Figure:
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
        ax.hist(s[~labels & fin], bins=bins, density=True, alpha=0.55, color="#7f7f7f", label=f"non-members ({int((~labels).sum())})")
        ax.hist(s[labels & fin], bins=bins, density=True, alpha=0.55, color=_style(name)["color"], label=f"members ({int(labels.sum())})")
        m = metrics["attacks"][name]
        ax.set_title(f"{m['label']}  (AUC {m['auc']:.3f})", fontsize=10)
        agg = metrics.get("fedmia_options", {}).get("aggregation", "mean") if m["kind"] == "fedmia" else None
        ax.set_xlabel("score" + (f" ({agg} of Φ(z))" if agg == "mean" else f" ({agg})" if agg else ""))
        ax.set_ylabel("density")
        ax.legend(fontsize=8)
        ax.grid(True, alpha=0.3)
    return fig


def utility_figure(rows: list[dict[str, Any]], target: int | None = None) -> Figure | None:
    """Global train/test accuracy per round (and the target's local model where recorded)."""
    if not rows:
        return None
    fig = _new(6.4, 3.6, left=0.1, bottom=0.14, top=0.9)
    ax = fig.add_subplot()

    def series(key: str) -> tuple[list[int], list[float]]:
        xs, ys = [], []
        for r in rows:
            if r.get(key) is not None:
                xs.append(int(r["round"]))
                ys.append(100 * float(r[key]))
        return xs, ys

    for key, lab, col in (("train_acc", "global model, train", "#2ca02c"), ("test_acc", "global model, test", "#1f77b4")):
        xs, ys = series(key)
        if xs:
            ax.plot(xs, ys, color=col, lw=1.6, label=lab)
    if target is not None:
        xs, ys = [], []
        for r in rows:
            cta = r.get("client_test_acc")
            if isinstance(cta, list) and target < len(cta) and cta[target] is not None and np.isfinite(cta[target]):
                xs.append(int(r["round"]))
                ys.append(100 * float(cta[target]))
        if xs:
            ax.plot(xs, ys, "o", ms=3.5, color="#9467bd", alpha=0.8, zorder=3, label=f"target client {target}'s upload, test")
    ax.set_xlabel("communication round (0-based)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Utility per round", fontsize=11)
    return fig
