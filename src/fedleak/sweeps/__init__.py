"""Privacy-utility sweeps: a grid of (variant ×) defense × strength × seed runs, run by a local process pool or
Ray, summarised as tables, hypervolumes and plots. See :mod:`fedleak.sweeps.spec` for the YAML syntax."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from fedleak.metrics.roc import HEADLINE_KEY
from fedleak.signals.store import make_dirs
from fedleak.sweeps.spec import RunSpec, SweepSpec, default_out, expand, load_sweep


def plan(
    sweep_path: str | Path, out: str | Path | None = None, overrides: list[str] | None = None,
    data_dir: str | None = None,
) -> tuple[SweepSpec, Path, list[RunSpec]]:
    """Parse and expand a sweep file: (spec, output folder, runs). Validates every run's config up front."""
    from fedleak.sweeps.evaluate import check_attack_names

    spec, root = load_sweep(sweep_path)
    out_dir = Path(out) if out is not None else default_out(spec)
    runs = expand(spec, root, out_dir, overrides, data_dir)
    check_attack_names(spec.attacks.names)
    return spec, out_dir, runs


def collect(runs: list[RunSpec]) -> list[dict[str, Any]]:
    """The latest known outcome of every run from its run directory (finished, failed, or pending)."""
    from fedleak.sweeps.runner import ERROR, finished_result

    out = []
    for r in runs:
        d = r.to_dict()
        res = finished_result(d)
        if res is not None:
            out.append(res)
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
) -> dict[str, Any]:
    """Run every unfinished run of the sweep, then write the outputs. Returns {status, plots, hypervolume, ...}."""
    from fedleak.sweeps.backends import run_all
    from fedleak.sweeps.report import write_outputs
    from fedleak.sweeps.runner import finished_result

    spec, out_dir, runs = plan(sweep_path, out, overrides, data_dir)
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
            best = max((m[HEADLINE_KEY] for m in (res.get("attacks") or {}).values()), default=float("nan"))
            log(f"{head} finished in {res.get('time_s', 0):.0f} s: test acc {100 * u.get('test_acc', float('nan')):.1f}%"
                f", best TPR@0.1% {100 * best:.1f}%")
        else:
            state["failed"] += 1
            log(f"{head} FAILED: {res.get('error')} (see {res.get('run_dir')})")

    run_all(todo, on_done, backend=backend, workers=workers, address=address, timeout=timeout,
            cpus_per_run=cpus_per_run)
    results = collect(runs)
    summary = write_outputs(out_dir, results, title=f"Sweep {spec.name}",
                            include_baseline=spec.hypervolume.include_baseline, plots=plots)
    log(f"done in {time.time() - t0:.0f} s: {summary['status']['finished']} of {len(runs)} runs finished, "
        f"{len(summary['status']['failed'])} failed; tables in {out_dir}/results.md, results.csv, hypervolume.csv")
    return {**summary, "out": str(out_dir), "ran": len(todo), "runs": [r.run_id for r in runs]}


def report_only(sweep_path: str | Path, out: str | Path | None = None, overrides: list[str] | None = None,
                data_dir: str | None = None, plots: bool = True) -> dict[str, Any]:
    """Rebuild the tables and plots from whatever runs have finished, running nothing."""
    from fedleak.sweeps.report import write_outputs

    spec, out_dir, runs = plan(sweep_path, out, overrides, data_dir)
    results = collect(runs)
    return write_outputs(out_dir, results, title=f"Sweep {spec.name}",
                         include_baseline=spec.hypervolume.include_baseline, plots=plots)


__all__ = ["plan", "run_sweep", "report_only", "collect", "load_sweep", "expand", "SweepSpec", "RunSpec"]
