"""``fedleak sweep SWEEP.yaml``: run a privacy-utility grid and write its tables and plots."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from fedleak.attacks.mia.commands import headline_callback


def sweep_command(
    sweep: Path = typer.Argument(..., help="Sweep YAML (see configs/sweeps/ and docs/defenses.md)."),
    workers: int = typer.Option(1, "--workers", "-j", min=1, help="Runs at the same time (local processes, or "
                                "the CPUs of a local Ray instance)."),
    backend: str = typer.Option("local", "--backend", "-b", help="local (processes), ray, or inline (this "
                                "process, one by one)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to join ('auto', 'ray://host:10001'); "
                                          "default: start a local Ray instance."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default: the sweep's 'out', or "
                                       "runs/sweeps/<name>)."),
    set_: List[str] = typer.Option([], "--set", "-s", help="Override a base-config value for every run, e.g. "
                                   "--set fl.rounds=5 (repeatable)."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Folder with dataset files."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Seconds per run before it is stopped and "
                                            "reported as failed (local backend; re-running resumes it)."),
    cpus_per_run: float = typer.Option(1.0, "--cpus-per-run", help="Ray: CPUs reserved per run."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the runs and whether they are finished; run nothing."),
    report: bool = typer.Option(False, "--report-only", help="Only rebuild tables and plots from finished runs."),
    no_plots: bool = typer.Option(False, "--no-plots", help="Skip the figures."),
    headline_fpr: Optional[float] = typer.Option(
        None, "--headline-fpr", callback=headline_callback, help="False-positive rate the tables, plots and "
        "hypervolumes headline (default: the sweep file's attacks.headline_fpr, 0.001 = 0.1% unless it says "
        "otherwise); finished runs recorded at another one are re-evaluated from their signals, not retrained."),
) -> None:
    """Run a grid of defense x strength x seed (x variant) experiments and report privacy against utility."""
    from fedleak.errors import FedleakError
    from fedleak.sweeps import collect, plan, report_only, run_sweep
    from fedleak.sweeps.backends import BACKENDS

    if backend not in BACKENDS:
        raise FedleakError(f"unknown backend '{backend}'; choose from {', '.join(BACKENDS)}")
    _check_options(backend, address, timeout, cpus_per_run, dry_run, report, data_dir)
    if dry_run:
        spec, out_dir, runs = plan(sweep, out, set_, data_dir, headline_fpr)
        for res in collect(runs, reread=False):
            typer.echo(f"{res['status']:9s} {res['run_id']}")
        typer.echo(f"{len(runs)} runs -> {out_dir}")
        return
    if report:
        s = report_only(sweep, out, set_, data_dir, plots=not no_plots, headline_fpr=headline_fpr)
        typer.echo(f"{s['status']['finished']} of {s['status']['runs']} runs finished; tables rewritten")
        return
    s = run_sweep(sweep, out=out, backend=backend, workers=workers, address=address, overrides=set_,
                  data_dir=data_dir, timeout=timeout, cpus_per_run=cpus_per_run, plots=not no_plots,
                  log=typer.echo, headline_fpr=headline_fpr)
    if s["status"]["failed"]:
        raise typer.Exit(code=1)


def _check_options(backend: str, address: Optional[str], timeout: Optional[float], cpus_per_run: float,
                   dry_run: bool, report: bool, data_dir: Optional[str]) -> None:
    """The command-line options that the sweep would otherwise take in silently (or find out about per run)."""
    import math

    from fedleak.errors import FedleakError

    if timeout is not None and not (timeout > 0 and math.isfinite(timeout)):
        raise FedleakError(f"--timeout must be a positive number of seconds (got {timeout})")
    if not (cpus_per_run > 0 and math.isfinite(cpus_per_run)):
        raise FedleakError(f"--cpus-per-run must be a positive number (got {cpus_per_run})")
    if address is not None and backend != "ray":
        raise FedleakError(f"--address is only used by --backend ray (the backend is '{backend}')")
    if dry_run and report:
        raise FedleakError("--dry-run and --report-only exclude each other; give one of them")
    if data_dir and Path(data_dir).exists() and not Path(data_dir).is_dir():
        raise FedleakError(f"--data-dir {data_dir} is not a folder; give the folder with the dataset files")


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep_command)
