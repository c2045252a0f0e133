"""``fedleak summarize RUN_DIR...``: mean ± std of the attack metrics over several runs (e.g. seeds).

Reads each run's ``attack/metrics.json`` (attacking it with defaults first if needed) and prints a
Markdown table: one row per attack, columns AUC, TPR@1% and TPR at the headline FPR (``--headline-fpr``, default
0.001; the run's own when not given) as mean ± sample std over runs, sorted by the headline TPR,
plus the final global test accuracy. A single run also gets its 95% intervals (DeLong for the AUC, exact
Clopper–Pearson for the headline TPR, with the members found); over several runs the per-run intervals are not
averaged (a mean of interval ends is no interval). ``by_origin_table`` splits the non-members by where they come from:
held-out test samples (owner -1) versus other clients' training samples, which the global model has seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from fedleak.attacks.mia.evaluation import Evaluation
from fedleak.attacks.mia.result import AttackResult
from fedleak.errors import FedleakError
from fedleak.metrics.roc import fpr_text, roc_metrics
from fedleak.report.intervals_text import tpr_text
from fedleak.report.ranking import secondary_fprs
from fedleak.signals.store import read_metrics, read_npz


@dataclass(frozen=True)
class RunSummary:
    """One run of a summary: its attack results (at the summary's headline FPR) and final global test accuracy."""

    run_dir: Path
    ev: Evaluation
    final_test_acc: float | None


def _ms(values: list[float], pct: bool) -> str:
    a = np.asarray(values, float) * (100 if pct else 1)
    sd = a.std(ddof=1) if a.size > 1 else 0.0
    return f"{a.mean():.2f} ± {sd:.2f}" if pct else f"{a.mean():.3f} ± {sd:.3f}"


def _ci_cells(a: AttackResult, fpr: float) -> str:
    """A single run's AUC interval and headline 'k of n (rate, 95% CI lo–hi%)' ('–' for metrics without them)."""
    iv = a.auc_ci
    auc = f"{iv[0]:.3f}–{iv[1]:.3f}" if iv else "–"
    tpr = tpr_text(a, fpr) if a.rate(fpr).ci else "–"
    return f" {auc} | {tpr} |"


def collect(run_dirs: Iterable[str | Path], attack_missing: bool = True,
            headline_fpr: float | None = None) -> list[RunSummary]:
    """Each run's attack results, attacking a run first when its outputs are missing or stale; all at one headline
    FPR: ``headline_fpr``, else the first run's (the others are re-read, or re-evaluated in memory, at it)."""
    from fedleak.report.outputs import at_headline, attack_run, is_stale, load_attack_metrics

    out: list[RunSummary] = []
    seen: dict[Path, Path] = {}
    for d in run_dirs:
        d = Path(d)
        if d.resolve() in seen:
            raise FedleakError(f"{d} is given twice (also as {seen[d.resolve()]}); list each run once")
        seen[d.resolve()] = d
        if is_stale(d):
            if not attack_missing:
                raise FedleakError(f"{d} has no up-to-date attack outputs; run `fedleak attack {d}` first")
            kw = {} if headline_fpr is None else {"headline_fpr": headline_fpr}
            attack_run(d, make_figures=False, **kw)
        ev = load_attack_metrics(d)
        head = headline_fpr if headline_fpr is not None else (out[0].ev.headline_fpr if out else None)
        rows = read_metrics(d)
        acc = next((r["test_acc"] for r in reversed(rows) if r.get("test_acc") is not None), None)
        out.append(RunSummary(d, at_headline(d, ev, head), acc))
    if not out:
        raise FedleakError("give at least one run directory")
    return out


def _values(runs: list[RunSummary], name: str, fprs: list[float], rotating: bool) -> dict[str, list[float]]:
    """Per run: the attack's AUC and TPR at each of ``fprs`` (its mean over targets with ``rotating``)."""
    out: dict[str, list[float]] = {k: [] for k in ("auc", *map(fpr_text, fprs))}
    for run in runs:
        a = run.ev.attacks[name]
        if rotating and a.rotating is None:
            raise FedleakError("--rotating needs runs evaluated with a rotating target")
        out["auc"].append(a.rotating.auc.mean if rotating else a.auc)
        for f in fprs:
            out[fpr_text(f)].append(a.rotating_tpr(f).mean if rotating else a.tpr_at(f))
    return out


def summary_table(runs: list[RunSummary], rotating: bool = False) -> str:
    """Markdown table of mean ± std over runs (``rotating``: use each run's mean over targets), sorted by the
    headline TPR."""
    names = list(runs[0].ev.attacks)
    for r in runs[1:]:
        if list(r.ev.attacks) != names:
            raise FedleakError("the runs were attacked with different attack lists; re-run `fedleak attack` alike")
    head = runs[0].ev.headline_fpr
    fprs = secondary_fprs(head)
    per = {n: _values(runs, n, fprs, rotating) for n in names}
    single = len(runs) == 1 and not rotating  # a run's intervals are its own: shown for one run, never averaged
    t = [fpr_text(f) for f in fprs]
    lines = [
        f"| attack | AUC | TPR@{t[0]} (%) | TPR@{t[1]} (%) |"
        + (f" AUC 95% CI (DeLong) | TPR@{t[1]}: members found, 95% CI |" if single else ""),
        "|---|---|---|---|" + ("---|---|" if single else ""),
    ]
    for n in sorted(names, key=lambda n: -np.mean(per[n][t[1]])):
        a0 = runs[0].ev.attacks[n]
        lines.append(
            f"| {a0.label} | {_ms(per[n]['auc'], False)} | {_ms(per[n][t[0]], True)} | "
            f"{_ms(per[n][t[1]], True)} |" + (_ci_cells(a0, head) if single else "")
        )
    return "\n".join(lines) + _footer(runs) + "\n"


def _footer(runs: list[RunSummary]) -> str:
    accs = [r.final_test_acc for r in runs if r.final_test_acc is not None]

    def span(values: list[int]) -> str:
        v = sorted(set(values))
        return str(v[0]) if len(v) == 1 else f"{v[0]}–{v[-1]}"

    foot = (f"\n{len(runs)} run(s); default target: {span([r.ev.n_members for r in runs])} members / "
            f"{span([r.ev.n_nonmembers for r in runs])} non-members")
    if accs:
        foot += f"; final global test accuracy {_ms(accs, True)}%"
    if len(runs) > 1:
        foot += "; each run's 95% intervals are in its attack/metrics.json (intervals are not averaged over runs)"
    return foot


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
        meta = load_attack_metrics(d).attacks
        for key, s in scores.items():
            name = key.replace("_", "-")
            labels[name] = meta[name].label if name in meta else name
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
