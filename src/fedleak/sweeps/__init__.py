"""Privacy-utility sweeps: a grid of (variant ×) defense × strength × seed runs, run by a local process pool or
Ray, summarised as tables, hypervolumes and plots. See :mod:`fedleak.sweeps.spec` for the YAML syntax."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from fedleak.signals.store import make_dirs
from fedleak.sweeps.spec import RunSpec, SweepSpec, default_out, expand, load_sweep


def plan(
    sweep_path: str | Path, out: str | Path | None = None, overrides: list[str] | None = None,
    data_dir: str | None = None, headline_fpr: float | None = None,
) -> tuple[SweepSpec, Path, list[RunSpec]]:
    """Parse and expand a sweep file: (spec, output folder, runs). Validates every run's config up front.
    ``headline_fpr`` (``--headline-fpr``) replaces the file's ``attacks.headline_fpr``."""
    from fedleak.metrics.roc import check_headline_fpr
    from fedleak.sweeps.evaluate import check_attack_names

    spec, root = load_sweep(sweep_path)
    if headline_fpr is not None:
        attacks = spec.attacks.model_copy(update={"headline_fpr": check_headline_fpr(headline_fpr)})
        spec = spec.model_copy(update={"attacks": attacks})
    out_dir = Path(out) if out is not None else default_out(spec)
    runs = expand(spec, root, out_dir, overrides, data_dir)
    check_attack_names(spec.attacks.names)
    return spec, out_dir, runs


def collect(runs: list[RunSpec], reread: bool = True) -> list[dict[str, Any]]:
    """The latest known outcome of every run from its run directory (finished, failed, or pending); with ``reread``
    a finished run recorded at another headline FPR is re-evaluated at the spec's (:func:`at_headline`)."""
    from fedleak.sweeps.runner import ERROR, finished_result

    out = []
    for r in runs:
        d = r.to_dict()
        res = finished_result(d)
        if res is not None:
            out.append(at_headline(res, d) if reread else res)
            continue
        err = Path(r.run_dir) / ERROR
        if err.is_file():
            try:
                out.append(json.loads(err.read_text()))
                continue
            except json.JSONDecodeError:
                pass
        out.append({**{k: d[k] for k in ("run_id", "run_dir", "variant", "defense", "defense_name", "param",
                                          "value", "seed")}, "status": "pending", "error": "not run yet"})
    return out


def run_sweep(
    sweep_path: str | Path,
    *,
    out: str | Path | None = None,
    backend: str = "local",
    workers: int = 1,
    address: str | None = None,
    overrides: list[str] | None = None,
    data_dir: str | None = None,
    timeout: float | None = None,
    cpus_per_run: float = 1.0,
    plots: bool = True,
    log: Callable[[str], None] = print,
    headline_fpr: float | None = None,
) -> dict[str, Any]:
    """Run every unfinished run of the sweep, then write the outputs. Returns {status, plots, hypervolume, ...}."""
    from fedleak.sweeps.backends import run_all
    from fedleak.sweeps.evaluate import Headline
    from fedleak.sweeps.report import write_outputs
    from fedleak.sweeps.runner import finished_result

    spec, out_dir, runs = plan(sweep_path, out, overrides, data_dir, headline_fpr)
    hl = Headline(spec.attacks.headline_fpr)
    make_dirs(out_dir)
    todo = [r.to_dict() for r in runs if finished_result(r.to_dict()) is None]
    log(f"sweep '{spec.name}': {len(runs)} runs, {len(runs) - len(todo)} already finished, {len(todo)} to run "
        f"(backend {backend}, {workers} worker{'s' if workers != 1 else ''}) -> {out_dir}")
    state = {"n": 0, "failed": 0}
    t0 = time.time()

    def on_done(res: dict[str, Any]) -> None:
        state["n"] += 1
        head = f"[{state['n']}/{len(todo)}] {res.get('run_id')}"
        if res.get("status") == "finished":
            u = res.get("utility", {})
            best = max((m[hl.key] for m in (res.get("attacks") or {}).values()), default=float("nan"))
            log(f"{head} finished in {res.get('time_s', 0):.0f} s: test acc {100 * u.get('test_acc', float('nan')):.1f}%"
                f", best TPR@{hl.text} {100 * best:.1f}%")
        else:
            state["failed"] += 1
            log(f"{head} FAILED: {res.get('error')} (see {res.get('run_dir')})")

    run_all(todo, on_done, backend=backend, workers=workers, address=address, timeout=timeout,
            cpus_per_run=cpus_per_run)
    results = collect(runs)
    summary = write_outputs(out_dir, results, title=f"Sweep {spec.name}",
                            include_baseline=spec.hypervolume.include_baseline, plots=plots, head=hl)
    log(f"done in {time.time() - t0:.0f} s: {summary['status']['finished']} of {len(runs)} runs finished, "
        f"{len(summary['status']['failed'])} failed; tables in {out_dir}/results.md, results.csv, hypervolume.csv")
    return {**summary, "out": str(out_dir), "ran": len(todo), "runs": [r.run_id for r in runs]}


def report_only(sweep_path: str | Path, out: str | Path | None = None, overrides: list[str] | None = None,
                data_dir: str | None = None, plots: bool = True, headline_fpr: float | None = None) -> dict[str, Any]:
    """Rebuild the tables and plots from whatever runs have finished, running no training (finished runs recorded
    at another headline FPR are re-evaluated from their signals)."""
    from fedleak.sweeps.evaluate import Headline
    from fedleak.sweeps.report import write_outputs

    spec, out_dir, runs = plan(sweep_path, out, overrides, data_dir, headline_fpr)
    results = collect(runs)
    return write_outputs(out_dir, results, title=f"Sweep {spec.name}",
                         include_baseline=spec.hypervolume.include_baseline, plots=plots,
                         head=Headline(spec.attacks.headline_fpr))


def at_headline(res: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """A finished run's result at the run spec's headline FPR: as stored, or (recorded at another one, or before the
    setting existed) its attacks evaluated again from the run's signals, in memory."""
    from fedleak.attacks.mia.result import same_fpr
    from fedleak.sweeps.evaluate import Headline, attack_metrics

    want = Headline.of(spec.get("attacks")).fpr
    have = Headline.of({"headline_fpr": res.get("headline_fpr")} if "headline_fpr" in res else None).fpr
    if same_fpr(want, have):
        return res
    return {**res, "headline_fpr": want, "attacks": attack_metrics(spec["run_dir"], spec.get("attacks"))}


__all__ = ["plan", "run_sweep", "report_only", "collect", "load_sweep", "expand", "SweepSpec", "RunSpec"]
