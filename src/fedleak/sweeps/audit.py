"""Empirical ε per sweep run and per grid point: the ε̂ columns of the sweep tables and the ε̂-vs-ε plot.

Per run (``result["audit"]``, computed once when the run finishes, as ``fedleak attack`` computes audit.json):

* ``eps_hat_one_run`` — the best one-run ε̂ over the attacks (Bonferroni over attacks and the (k₊, k₋) grid), a
  lower bound at ``audit.confidence``; only in runs with ``audit.canaries`` (else null);
* ``eps_hat_one_run_attack`` — the attack that gave it;
* ``eps_hat_roc`` — the largest split-half ROC ε̂ over the attacks on the ordinary candidates: **not a DP bound**
  (membership not randomised), a summary of attack strength.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

EPS_FIELDS = ["eps_hat_one_run", "eps_hat_one_run_attack", "eps_hat_roc"]


def audit_epsilons(run_dir: str | Path, settings: dict[str, Any] | None = None,
                   evaluated: tuple[Any, Any] | None = None) -> dict[str, Any]:
    """The run's ε̂ columns (module docstring), from the entries ``fedleak attack`` writes to audit.json
    (:func:`fedleak.report.audit_outputs.audit_document`). ``evaluated``: the run's ``(signals, evaluation)`` from
    :func:`fedleak.sweeps.evaluate.evaluate_run`, so the sweep loads the signals and scores the attacks once."""
    from fedleak.attacks.mia.audit import ONE_RUN_BEST, ROC_SPLIT
    from fedleak.report.audit_outputs import audit_document
    from fedleak.sweeps.evaluate import evaluate_run

    sig, ev = evaluated or evaluate_run(run_dir, settings)
    doc, _ = audit_document(Path(run_dir), sig, ev, dict((settings or {}).get("options") or {}))
    entries = doc["entries"]
    best = next((e for e in entries if e["method"] == ONE_RUN_BEST), None)
    roc = [e["epsilon"] for e in entries if e["method"] == ROC_SPLIT]
    return {"eps_hat_one_run": None if best is None else best["epsilon"],
            "eps_hat_one_run_attack": None if best is None else best["attack"],
            "eps_hat_roc": max(roc) if roc else None}


def _num(x: Any) -> float:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else math.nan


def run_columns(result: dict[str, Any]) -> dict[str, Any]:
    """A result's ε̂ columns (empty values for results written before the sweep recorded them)."""
    a = result.get("audit") or {}
    return {k: a.get(k) for k in EPS_FIELDS}


def point_columns(rs: list[dict[str, Any]]) -> dict[str, Any]:
    """Seed means of a grid point's ε̂ columns (NaN where no run has one)."""
    out: dict[str, Any] = {}
    for k in ("eps_hat_one_run", "eps_hat_roc"):
        vals = [v for v in (_num((r.get("audit") or {}).get(k)) for r in rs) if not math.isnan(v)]
        out[k] = float(np.mean(vals)) if vals else math.nan
    return out


def eps_cells(rs: list[dict[str, Any]]) -> list[str]:
    """The two Markdown cells of a grid point: one-run ε̂ (a bound) and ROC ε̂ (not a DP bound)."""
    c = point_columns(rs)
    return ["–" if math.isnan(c[k]) else f"{c[k]:.3g}" for k in ("eps_hat_one_run", "eps_hat_roc")]


def _points(groups: "OrderedDict[tuple, list[dict[str, Any]]]") -> list[tuple[str, str, float, dict[str, float]]]:
    """(variant, strength label, mean accountant ε, ε̂ seed means) of every grid point with a finite ε and an ε̂."""
    pts = []
    for (variant, defense, param, vk), rs in groups.items():
        eps = [e for e in (_num(r.get("utility", {}).get("epsilon")) for r in rs) if math.isfinite(e)]
        c = point_columns(rs)
        if eps and not (math.isnan(c["eps_hat_one_run"]) and math.isnan(c["eps_hat_roc"])):
            pts.append((variant, f"{defense} {param}={vk}" if param else defense, float(np.mean(eps)), c))
    return pts


def plot_eps(groups: "OrderedDict[tuple, list[dict[str, Any]]]", out_dir: Path) -> Path | None:
    """``plots/epsilon.png``: ε̂ (one-run, filled; ROC, hollow; one colour per variant) against the accountant's ε
    per grid point, both axes symmetric-log, with the line ε̂ = ε (an audit above it means a bug). None when no point
    has both a finite ε and an ε̂."""
    pts = _points(groups)
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    variants = list(OrderedDict.fromkeys(p[0] for p in pts))
    for i, v in enumerate(variants):
        mine = [p for p in pts if p[0] == v]
        xs = [p[2] for p in mine]
        for key, style, what in (("eps_hat_one_run", dict(marker="o"), "one-run ε̂ (95% lower bound)"),
                                 ("eps_hat_roc", dict(marker="s", mfc="none"), "ROC ε̂ (not a DP bound)")):
            ys = [p[3][key] for p in mine]
            if not all(math.isnan(y) for y in ys):
                ax.plot(xs, ys, ls="none", color=f"C{i % 10}", label=f"{v + ': ' if v else ''}{what}", **style)
    top = max(p[2] for p in pts) * 1.5
    ax.plot([0, top], [0, top], color="0.6", lw=1, ls="--", label="ε̂ = ε (accountant)")
    for x, label in {p[2]: p[1] for p in pts}.items():
        ax.annotate(label, (x, 0), textcoords="offset points", xytext=(3, 6), fontsize=6, rotation=90)
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xlabel("accountant ε (upper bound)")
    ax.set_ylabel("empirical ε̂")
    ax.set_title("Empirical ε̂ against the accountant's ε")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    p = out_dir / "epsilon.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p


__all__ = ["EPS_FIELDS", "audit_epsilons", "eps_cells", "plot_eps", "point_columns", "run_columns"]
