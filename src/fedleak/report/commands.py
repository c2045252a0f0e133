"""CLI commands of the report area: ``report``, ``run`` (train + attack + report) and ``summarize``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from fedleak.attacks.mia.commands import print_table
from fedleak.fl.commands import DEVICE_OPT, quiet_default, resolve_run

QUIET_OPT = typer.Option(False, "--quiet", "-q", help="Print only where the outputs are.")


def report_command(
    run_dir: Path = typer.Argument(..., help="Run directory (attacked with defaults first if needed)."),
    quiet: bool = QUIET_OPT,
) -> None:
    """Write RUN/report.html (self-contained) and RUN/report.md: setup, utility, attack table, figures, verdict."""
    html_path, _ = make_report(run_dir, quiet=quiet_default(quiet))
    typer.echo(f"report: {html_path}")


def make_report(run_dir: Path, quiet: bool = True) -> tuple[Path, Path]:
    from fedleak.report.document import build_report
    from fedleak.report.outputs import attack_run, is_full, is_stale, load_attack_metrics

    run_dir = Path(run_dir)
    if is_stale(run_dir):
        _, ev = attack_run(run_dir)
        if not quiet:
            print_table(ev.metrics)
    metrics = load_attack_metrics(run_dir)
    if not metrics.get("figures") or not is_full(metrics):
        # attacked with --no-figures (or, before subsets had their own folder, with a subset of the
        # attacks): redo it with the same settings, all attacks, drawing the figures
        fo = metrics.get("fedmia_options", {})
        _, ev = attack_run(
            run_dir, None, round=metrics["round"], target=metrics["target"],
            rotate=bool(metrics.get("rotation", {}).get("done")), strict=metrics.get("fpr_convention") == "<",
            **{k: fo[k] for k in ("aggregation", "ddof", "eps", "outlier_filter", "robust") if k in fo},
        )
        metrics = load_attack_metrics(run_dir)
    return build_report(run_dir, metrics)


def run_command(
    config: str = typer.Argument(..., help="Experiment YAML file, or a preset name from configs/ (e.g. digits-quick)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default: <output.dir>/<name>). Resumes if it exists."),
    set_: List[str] = typer.Option([], "--set", "-s", help="Override a config value, e.g. --set fl.rounds=5 (repeatable)."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Folder with dataset files (overrides data.data_dir)."),
    quiet: bool = QUIET_OPT,
    device: Optional[str] = DEVICE_OPT,
) -> None:
    """Train, attack and report in one go; prints where the report is."""
    cfg, run_dir = resolve_run(config, out, set_, data_dir, device)  # as `fedleak train`, before torch is imported
    from fedleak.fl import simulation
    from fedleak.report.outputs import attack_run

    q = quiet_default(quiet)
    simulation.train(cfg, run_dir, quiet=q)
    _, ev = attack_run(run_dir)
    if not q:
        print_table(ev.metrics)
    html_path, md_path = make_report(run_dir, quiet=True)
    typer.echo(f"report: {html_path}")


def summarize_command(
    run_dirs: List[Path] = typer.Argument(..., help="Run directories to combine (e.g. the same setup with several seeds)."),
    rotating: bool = typer.Option(False, "--rotating", help="Use each run's mean over rotating targets."),
    by_origin: bool = typer.Option(
        False, "--by-origin", help="Also split the non-members: held-out test samples vs. other clients' training samples."
    ),
) -> None:
    """Print a Markdown table of attack metrics as mean ± std over several runs."""
    from fedleak.report.summary import by_origin_table, collect, summary_table

    typer.echo(summary_table(collect(run_dirs), rotating=rotating))
    if by_origin:
        typer.echo(by_origin_table(run_dirs))


def register(app: typer.Typer) -> None:
    app.command("report")(report_command)
    app.command("run")(run_command)
    app.command("summarize")(summarize_command)
