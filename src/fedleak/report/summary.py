"""``fedleak summarize RUN_DIR...``: mean ± std of the attack metrics over several runs (e.g. seeds).

Reads each run's ``attack/metrics.json`` (attacking it with defaults first if needed) and prints a
Markdown table: one row per attack, columns AUC, TPR@1%, TPR@0.1% as mean ± sample std over runs,
plus the final global test accuracy. A single run also gets its 95% intervals (DeLong for the AUC, exact
Clopper–Pearson for the headline TPR, with the members found); over several runs the per-run intervals are not
averaged (a mean of interval ends is no interval). ``by_origin_table`` splits the non-members by where they come from:
held-out test samples (owner -1) versus other clients' training samples, which the global model has seen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np

from fedleak.errors import FedleakError
from fedleak.metrics.roc import HEADLINE_KEY, fpr_key, roc_metrics
from fedleak.report.intervals_text import interval, tpr_text
from fedleak.signals.store import read_metrics, read_npz

KEYS = ("auc", fpr_key(0.01), HEADLINE_KEY)


def _ms(values: list[float], pct: bool) -> str:
    a = np.asarray(values, float) * (100 if pct else 1)
    sd = a.std(ddof=1) if a.size > 1 else 0.0
    return f"{a.mean():.2f} ± {sd:.2f}" if pct else f"{a.mean():.3f} ± {sd:.3f}"


def _ci_cells(a: dict[str, Any]) -> str:
    """A single run's AUC interval and headline 'k of n (rate, 95% CI lo–hi%)' ('–' for metrics without them)."""
    iv = interval(a, "auc")
    auc = f"{iv[0]:.3f}–{iv[1]:.3f}" if iv else "–"
    tpr = tpr_text(a, HEADLINE_KEY) if interval(a, HEADLINE_KEY) else "–"
    return f" {auc} | {tpr} |"


def collect(run_dirs: Iterable[str | Path], attack_missing: bool = True) -> list[dict[str, Any]]:
    from fedleak.report.outputs import attack_run, is_stale, load_attack_metrics

    out = []
    seen: dict[Path, Path] = {}
    for d in run_dirs:
        d = Path(d)
        if d.resolve() in seen:
            raise FedleakError(f"{d} is given twice (also as {seen[d.resolve()]}); list each run once")
        seen[d.resolve()] = d
        if is_stale(d):
            if not attack_missing:
                raise FedleakError(f"{d} has no up-to-date attack outputs; run `fedleak attack {d}` first")
            attack_run(d, make_figures=False)
        m = load_attack_metrics(d)
        rows = read_metrics(d)
        m["final_test_acc"] = next((r["test_acc"] for r in reversed(rows) if r.get("test_acc") is not None), None)
        out.append(m)
    if not out:
        raise FedleakError("give at least one run directory")
    return out


def summary_table(metrics: list[dict[str, Any]], rotating: bool = False) -> str:
    """Markdown table of mean ± std over runs (``rotating``: use each run's mean over targets)."""
    names = list(metrics[0]["attacks"])
    for m in metrics[1:]:
        if list(m["attacks"]) != names:
            raise FedleakError("the runs were attacked with different attack lists; re-run `fedleak attack` alike")
    per: dict[str, dict[str, list[float]]] = {n: {k: [] for k in KEYS} for n in names}
    for m in metrics:
        for n in names:
            a = m["attacks"][n]
            for k in KEYS:
                if rotating:
                    if "rotating" not in a:
                        raise FedleakError("--rotating needs runs evaluated with a rotating target")
                    per[n][k].append(a["rotating"][k]["mean"])
                else:
                    per[n][k].append(a[k])
    single = len(metrics) == 1 and not rotating  # a run's intervals are its own: shown for one run, never averaged
    lines = [
        "| attack | AUC | TPR@1% (%) | TPR@0.1% (%) |" + (" AUC 95% CI (DeLong) | TPR@0.1%: members found, 95% CI |"
                                                         if single else ""),
        "|---|---|---|---|" + ("---|---|" if single else ""),
    ]
    order = sorted(names, key=lambda n: -np.mean(per[n][HEADLINE_KEY]))
    for n in order:
        label = metrics[0]["attacks"][n]["label"]
        lines.append(
            f"| {label} | {_ms(per[n]['auc'], False)} | {_ms(per[n][fpr_key(0.01)], True)} | "
            f"{_ms(per[n][HEADLINE_KEY], True)} |" + (_ci_cells(metrics[0]["attacks"][n]) if single else "")
        )
    accs = [m["final_test_acc"] for m in metrics if m.get("final_test_acc") is not None]
    def span(key: str) -> str:
        v = sorted({int(m[key]) for m in metrics})
        return str(v[0]) if len(v) == 1 else f"{v[0]}–{v[-1]}"

    foot = f"\n{len(metrics)} run(s); default target: {span('n_members')} members / {span('n_nonmembers')} non-members"
    if accs:
        foot += f"; final global test accuracy {_ms(accs, True)}%"
    if len(metrics) > 1:
        foot += "; each run's 95% intervals are in its attack/metrics.json (intervals are not averaged over runs)"
    return "\n".join(lines) + foot + "\n"


def by_origin_table(run_dirs: Iterable[str | Path]) -> str:
    """Markdown table: each attack's AUC and TPR@1% on the default target's members against (a) the held-out test
    non-members only and (b) the other clients' training samples only, mean ± std over runs.

    A target-only loss attack separates members from unseen test data but much less from samples that other
    clients trained on (the global model fits those too); the FedMIA null is built from the other clients'
    uploads and is meant to close exactly that gap, so the split shows which attack sees membership of *this*
    client rather than "seen by the federation".
    """
    from fedleak.report.outputs import load_attack_metrics

    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise FedleakError("give at least one run directory")
    per: dict[str, dict[str, list[float]]] = {}
    labels: dict[str, str] = {}
    for d in dirs:
        f = d / "attack" / "scores.npz"
        if not f.exists():
            raise FedleakError(f"{d} has no attack/scores.npz; run `fedleak attack {d}` first")
        z = read_npz(f, f"re-run `fedleak attack {d}` to rewrite it")
        if "owner" not in z or "member" not in z:
            raise FedleakError(f"{f} has no owner/member arrays; re-run `fedleak attack {d}` to rewrite it")
        owner, member = z["owner"], z["member"].astype(bool)
        scores = {k: v for k, v in z.items() if k not in ("ids", "owner", "member", "target")}
        groups = {"test": ~member & (owner == -1), "other": ~member & (owner != -1)}
        for kind, neg in groups.items():
            if not neg.any():
                raise FedleakError(f"{d}: no {'test' if kind == 'test' else 'other-client'} non-members to compare with")
        meta = load_attack_metrics(d)["attacks"]
        for key, s in scores.items():
            name = key.replace("_", "-")
            labels[name] = meta.get(name, {}).get("label", name)
            for kind, neg in groups.items():
                sel = member | neg
                m = roc_metrics(member[sel], s[sel])
                per.setdefault(name, {}).setdefault(f"{kind}_auc", []).append(m.auc)
                per[name].setdefault(f"{kind}_tpr1", []).append(m.tpr[0.01])
    lines = [
        "| attack | AUC vs test | AUC vs other clients | TPR@1% vs test (%) | TPR@1% vs other clients (%) |",
        "|---|---|---|---|---|",
    ]
    for n in sorted(per, key=lambda n: -np.mean(per[n]["other_auc"])):
        v = per[n]
        lines.append(f"| {labels[n]} | {_ms(v['test_auc'], False)} | {_ms(v['other_auc'], False)} | "
                     f"{_ms(v['test_tpr1'], True)} | {_ms(v['other_tpr1'], True)} |")
    return "\n".join(lines) + f"\n{len(dirs)} run(s); members of the default target against each kind of non-member\n"
