"""Sweep outputs: the results table (CSV + Markdown), hypervolumes and privacy-utility plots.

Files written into the sweep's ``out`` folder:

* ``results.csv``      one row per (run, attack): grid coordinates, status, utility, ε, TPR at the headline FPR
                       (``attacks.headline_fpr`` / ``--headline-fpr``, default 0.001), TPR@1%, AUC, and (last
                       columns) the members found at the headline FPR, k of n, with the exact 95% interval;
                       failed runs get one row with their error
* ``summary.csv``      the same, averaged over seeds: one row per (variant, defense, strength, attack); the
                       members found are summed over seeds and the interval is that of the pooled rate
* ``hypervolume.csv``  per (variant, defense, attack): HV of the seed-averaged points, and mean ± std of the
                       per-seed HVs (definition in :mod:`fedleak.sweeps.hypervolume`)
* ``results.md``       utility table, one table per metric (attacks as columns), hypervolume table, failures
* ``plots/<variant__>DEFENSE.png``  the headline TPR against test error, one line per attack over the strengths
* ``plots/epsilon.png``  empirical ε̂ against the accountant's ε per grid point (sweeps/audit.py); the ε̂ columns
                       (``eps_hat_one_run``: canary bound; ``eps_hat_roc``: not a DP bound) end both CSVs
* ``status.json``      counts and the failed runs
"""

from __future__ import annotations

import csv
import json
import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from fedleak.metrics.intervals import clopper_pearson
from fedleak.attacks.mia.result import Rate
from fedleak.report.intervals_text import rate_text
from fedleak.sweeps.audit import EPS_FIELDS, eps_cells, plot_eps, point_columns, run_columns
from fedleak.sweeps.evaluate import Headline
from fedleak.sweeps.hypervolume import hypervolume

Key = tuple[str, str, Any, Any]  # variant, defense, param, value (value as given)


def _vkey(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def _strength(param: Any, value: Any) -> str:
    if param is None:
        return "-"
    if isinstance(value, float):
        return f"{param}={value:g}"
    return f"{param}={value}"


def _mean_std(vals: list[float]) -> tuple[float, float]:
    a = np.asarray([v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))], float)
    if a.size == 0:
        return math.nan, math.nan
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else math.nan


def attack_order(results: list[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for r in results:
        for a in (r.get("attacks") or {}):
            if a not in names:
                names.append(a)
    return names


def group(results: list[dict[str, Any]]) -> "OrderedDict[tuple[str, str, str | None, str], list[dict[str, Any]]]":
    """Finished results grouped by grid point (seeds together), in first-seen order."""
    out: OrderedDict[tuple[str, str, str | None, str], list[dict[str, Any]]] = OrderedDict()
    for r in results:
        if r.get("status") != "finished":
            continue
        out.setdefault((r.get("variant") or "", r["defense"], r.get("param"), _vkey(r.get("value"))), []).append(r)
    return out


DEFAULT = Headline()


def pooled_ci(rs: list[dict[str, Any]], attack: str, head: Headline = DEFAULT) -> dict[str, Any]:
    """Members found at the headline FPR summed over ``rs`` (seeds), with the exact (Clopper–Pearson) 95% interval
    of the pooled rate; empty when a run has no count (results written before the sweep recorded them).

    The interval is not a mean of per-run intervals: it treats every member of every seed (and target) as one
    Bernoulli trial of a common rate, each run's threshold set by its own non-members."""
    counts = [r["attacks"][attack].get(head.count_key) for r in rs if attack in r["attacks"]]
    if not counts or any(c is None for c in counts):
        return {}
    k, n = sum(c[0] for c in counts), sum(c[1] for c in counts)
    lo, hi = clopper_pearson(k, n, 0.95)
    return dict(zip(head.ci_fields, (k, n, float(lo), float(hi))))


def ci_cell(ci: dict[str, Any], head: Headline = DEFAULT) -> str:
    """'12 of 267 (4.49%, 95% CI 2.3–7.7%)' from :func:`pooled_ci`, '–' without counts."""
    if not ci:
        return "–"
    k, n, lo, hi = (ci[f] for f in head.ci_fields)
    return rate_text(Rate(k / n, k, n, (lo, hi)))


def summarize(results: list[dict[str, Any]], head: Headline = DEFAULT) -> list[dict[str, Any]]:
    """Seed-averaged rows: one per (variant, defense, strength, attack)."""
    rows = []
    for (variant, defense, param, vk), rs in group(results).items():
        value = json.loads(vk)
        acc = _mean_std([r["utility"].get("test_acc") for r in rs])
        eps = _mean_std([r["utility"].get("epsilon") for r in rs])
        for a in attack_order(rs):
            row: dict[str, Any] = {
                "variant": variant, "defense": defense, "param": param, "value": value, "n_seeds": len(rs),
                "test_acc": acc[0], "test_acc_std": acc[1], "test_error": 1 - acc[0],
                "epsilon": eps[0], "attack": a,
            }
            for k in head.metric_keys:
                m, s = _mean_std([r["attacks"][a][k] for r in rs if a in r["attacks"]])
                row[k], row[k + "_std"] = m, s
            rows.append({**row, **pooled_ci(rs, a, head), **point_columns(rs)})
    return rows


def hypervolumes(results: list[dict[str, Any]], include_baseline: bool = True,
                 head: Headline = DEFAULT) -> list[dict[str, Any]]:
    """HV per (variant, defense, attack) over the defense's strengths (plus the undefended baseline)."""
    g = group(results)
    attacks = attack_order(results)
    variants = list(OrderedDict.fromkeys(k[0] for k in g))
    out = []
    for variant in variants:
        base = [rs for (v, d, _, _), rs in g.items() if v == variant and d == "none"]
        base_runs = base[0] if base else []
        defenses = list(OrderedDict.fromkeys(d for (v, d, _, _) in g if v == variant and d != "none"))
        for defense in defenses:
            points = [rs for (v, d, _, _), rs in g.items() if v == variant and d == defense]
            if include_baseline and base_runs:
                points = [base_runs] + points
            for a in attacks:
                def pt(rs: list[dict[str, Any]]) -> tuple[float, float]:
                    return (_mean_std([r["attacks"][a][head.key] for r in rs if a in r["attacks"]])[0],
                            1 - _mean_std([r["utility"]["test_acc"] for r in rs])[0])

                hv = hypervolume([pt(rs) for rs in points])
                seeds = sorted({r["seed"] for rs in points for r in rs})
                per_seed = []
                for s in seeds:
                    ps = [pt([r for r in rs if r["seed"] == s]) for rs in points if any(r["seed"] == s for r in rs)]
                    per_seed.append(hypervolume(ps))
                m, sd = _mean_std(per_seed)
                out.append({"variant": variant, "defense": defense, "attack": a, "hv": hv, "hv_seed_mean": m,
                            "hv_seed_std": sd, "n_points": len(points), "n_seeds": len(seeds)})
    return out


def _write_csv(path: Path, rows: list[dict[str, Any]], fields: list[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})
    tmp.replace(path)


def results_rows(results: list[dict[str, Any]], head: Headline = DEFAULT) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        base = {k: r.get(k) for k in ("run_id", "variant", "defense", "defense_name", "param", "value", "seed",
                                      "status")}
        base["value"] = json.dumps(base["value"]) if isinstance(base["value"], (list, dict)) else base["value"]
        if r.get("status") != "finished":
            rows.append({**base, "error": r.get("error", "")})
            continue
        u = r.get("utility", {})
        common = {**base, "test_acc": u.get("test_acc"), "test_error": u.get("test_error"),
                  "epsilon": u.get("epsilon"), "delta": u.get("delta"), "time_s": round(r.get("time_s", 0.0), 2),
                  **run_columns(r)}
        for a, m in (r.get("attacks") or {}).items():
            rows.append({**common, "attack": a, **{k: m[k] for k in head.metric_keys}, "rotated": m.get("rotated"),
                         **pooled_ci([r], a, head)})
    return rows


def result_fields(head: Headline = DEFAULT) -> list[str]:
    return ["run_id", "variant", "defense", "defense_name", "param", "value", "seed", "status", "test_acc",
            "test_error", "epsilon", "delta", "attack", *head.metric_keys, "rotated", "time_s", "error",
            *head.ci_fields, *EPS_FIELDS]


def summary_fields(head: Headline = DEFAULT) -> list[str]:
    return ["variant", "defense", "param", "value", "n_seeds", "test_acc", "test_acc_std", "test_error",
            "epsilon", "attack", *[x for k in head.metric_keys for x in (k, k + "_std")], *head.ci_fields,
            "eps_hat_one_run", "eps_hat_roc"]


HV_FIELDS = ["variant", "defense", "attack", "hv", "hv_seed_mean", "hv_seed_std", "n_points", "n_seeds"]


def _pm(m: float, s: float, scale: float = 100.0, nd: int = 1) -> str:
    if math.isnan(m):
        return "–"
    if not math.isnan(s):
        return f"{m * scale:.{nd}f} ± {s * scale:.{nd}f}"
    return f"{m * scale:.{nd}f}"


def markdown(results: list[dict[str, Any]], hv_rows: list[dict[str, Any]], title: str = "",
             head: Headline = DEFAULT) -> str:
    from fedleak.attacks.mia import ATTACKS

    label = lambda a: ATTACKS[a].label if a in ATTACKS else a  # noqa: E731
    g = group(results)
    attacks = attack_order(results)
    variants = list(OrderedDict.fromkeys(k[0] for k in g))
    lines = [f"# {title}" if title else "# Sweep results", ""]
    n_ok = sum(r.get("status") == "finished" for r in results)
    lines += [f"{n_ok} of {len(results)} runs finished. Values: mean ± sample std over seeds; TPR in %.", ""]
    for variant in variants:
        pts = [(k, rs) for k, rs in g.items() if k[0] == variant]
        if variant:
            lines += [f"## {variant}", ""]
        lines += ["### Utility and privacy accounting", "",
                  "| defense | strength | seeds | test acc (%) | ε (δ) | ε̂ one-run (95% lower bound) | "
                  "ε̂ ROC (not a DP bound) |", "|---|---|---|---|---|---|---|"]
        for (v, d, p, vk), rs in pts:
            acc = _mean_std([r["utility"]["test_acc"] for r in rs])
            eps = _mean_std([r["utility"].get("epsilon") for r in rs])
            delta = rs[0]["utility"].get("delta")
            e = "–" if math.isnan(eps[0]) else (f"{eps[0]:.3g} ({delta:g})" if delta else f"{eps[0]:.3g}")
            lines.append(f"| {d} | {_strength(p, json.loads(vk))} | {len(rs)} | {_pm(*acc)} | {e} | "
                         + " | ".join(eps_cells(rs)) + " |")
        lines.append("")
        other = Headline(head.fprs[1])
        for key, name, scale, nd in ((head.key, f"TPR@{head.text} (%)", 100.0, 1),
                                     (other.key, f"TPR@{other.text} (%)", 100.0, 1), ("auc", "AUC", 1.0, 3)):
            lines += [f"### {name}", "", "| defense | strength | " + " | ".join(label(a) for a in attacks) + " |",
                      "|---|---|" + "---|" * len(attacks)]
            for (v, d, p, vk), rs in pts:
                cells = [_pm(*_mean_std([r["attacks"][a][key] for r in rs if a in r["attacks"]]), scale, nd)
                         for a in attacks]
                lines.append(f"| {d} | {_strength(p, json.loads(vk))} | " + " | ".join(cells) + " |")
            lines.append("")
            if key == head.key:
                lines += _ci_table(pts, attacks, label, head)
        hv_v = [h for h in hv_rows if h["variant"] == variant]
        defenses = list(OrderedDict.fromkeys(h["defense"] for h in hv_v))
        if defenses:
            lines += ["### Hypervolume (smaller = more effective attack; bold: smallest per defense)", "",
                      "| attack | " + " | ".join(defenses) + " |", "|---|" + "---|" * len(defenses)]
            best = {d: min((h["hv"] for h in hv_v if h["defense"] == d), default=math.nan) for d in defenses}
            for a in attacks:
                cells = []
                for d in defenses:
                    h = next((h for h in hv_v if h["defense"] == d and h["attack"] == a), None)
                    if h is None:
                        cells.append("–")
                        continue
                    txt = f"{h['hv']:.4f}"
                    cells.append(f"**{txt}**" if h["hv"] == best[d] else txt)
                lines.append(f"| {label(a)} | " + " | ".join(cells) + " |")
            lines.append("")
    failed = [r for r in results if r.get("status") != "finished"]
    if failed:
        lines += ["## Failed runs", "", "| run | error |", "|---|---|"]
        lines += [f"| {r['run_id']} | {str(r.get('error', '')).replace('|', '/')} |" for r in failed]
        lines.append("")
    return "\n".join(lines)


def _ci_table(pts: list, attacks: list[str], label: Any, head: Headline = DEFAULT) -> list[str]:
    """The headline TPR's members found, pooled over seeds (and targets), with its exact 95% interval."""
    lines = [f"### TPR@{head.text}: members found and 95% CI", "",
             "Pooled over seeds (and over targets when every client was the target); exact Clopper–Pearson interval "
             "over the members. The pooled rate weighs each target by its member count, so it can differ from the "
             "mean over targets above.", "",
             "| defense | strength | " + " | ".join(label(a) for a in attacks) + " |", "|---|---|" + "---|" * len(attacks)]
    for (v, d, p, vk), rs in pts:
        cells = [ci_cell(pooled_ci(rs, a, head), head) for a in attacks]
        lines.append(f"| {d} | {_strength(p, json.loads(vk))} | " + " | ".join(cells) + " |")
    return lines + [""]


def plot(results: list[dict[str, Any]], out_dir: Path, include_baseline: bool = True,
         head: Headline = DEFAULT) -> list[Path]:
    """One figure per (variant, defense): the headline TPR against test error over the strengths, one line per
    attack."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fedleak.attacks.mia import ATTACKS

    g = group(results)
    attacks = attack_order(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for variant in OrderedDict.fromkeys(k[0] for k in g):
        base = [rs for (v, d, _, _), rs in g.items() if v == variant and d == "none"]
        for defense in OrderedDict.fromkeys(d for (v, d, _, _) in g if v == variant and d != "none"):
            pts = [(k, rs) for k, rs in g.items() if k[0] == variant and k[1] == defense]
            if include_baseline and base:
                pts = [((variant, "none", None, "null"), base[0])] + pts
            fig, ax = plt.subplots(figsize=(6.4, 4.4))
            for i, a in enumerate(attacks):
                xs, ys, yerr, labels = [], [], [], []
                for (_, d, p, vk), rs in pts:
                    err = _mean_std([1 - r["utility"]["test_acc"] for r in rs])
                    tpr = _mean_std([r["attacks"][a][head.key] for r in rs if a in r["attacks"]])
                    xs.append(100 * err[0])
                    ys.append(100 * tpr[0])
                    yerr.append(100 * (tpr[1] if not math.isnan(tpr[1]) else 0.0))
                    labels.append("none" if d == "none" else _strength(p, json.loads(vk)).split("=", 1)[-1])
                lab = ATTACKS[a].label if a in ATTACKS else a
                ax.errorbar(xs, ys, yerr=yerr, marker="o", ms=4, lw=1, capsize=2, label=lab, color=f"C{i % 10}")
                if i == 0:
                    for x, y, t in zip(xs, ys, labels):
                        ax.annotate(t, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
            param = next((k[2] for k, _ in pts if k[2] is not None), None)
            ax.set_xlabel("test error (%)  [utility loss]")
            ax.set_ylabel(f"TPR at FPR {head.text} (%)  [privacy leakage]")
            ax.set_title(f"{variant + ': ' if variant else ''}{defense}" + (f" (labels: {param})" if param else ""))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, ncol=2)
            fig.tight_layout()
            name = (f"{variant}__" if variant else "") + f"{defense}.png"
            p = out_dir / name.replace("/", "_")
            fig.savefig(p, dpi=110)
            plt.close(fig)
            paths.append(p)
    return paths


def write_outputs(
    out: Path, results: list[dict[str, Any]], title: str = "", include_baseline: bool = True, plots: bool = True,
    head: Headline = DEFAULT,
) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    hv_rows = hypervolumes(results, include_baseline, head)
    _write_csv(out / "results.csv", results_rows(results, head), result_fields(head))
    _write_csv(out / "summary.csv", summarize(results, head), summary_fields(head))
    _write_csv(out / "hypervolume.csv", hv_rows, HV_FIELDS)
    (out / "results.md").write_text(markdown(results, hv_rows, title, head))
    figs = plot(results, out / "plots", include_baseline, head) if plots and group(results) else []
    eps_fig = plot_eps(group(results), out / "plots") if plots else None  # ε̂ against the accountant's ε
    figs += [eps_fig] if eps_fig else []
    failed = [{"run_id": r["run_id"], "error": r.get("error", ""), "run_dir": r.get("run_dir")}
              for r in results if r.get("status") != "finished"]
    status = {"runs": len(results), "finished": len(results) - len(failed), "failed": failed}
    (out / "status.json").write_text(json.dumps(status, indent=2))
    return {"status": status, "plots": [str(p) for p in figs], "hypervolume": hv_rows}


__all__ = ["write_outputs", "hypervolumes", "summarize", "markdown", "plot", "results_rows"]
