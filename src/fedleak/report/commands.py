"""CLI commands of the attack/report area: ``attack``, ``report`` and ``run`` (train + attack + report)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

ATTACKS_OPT = typer.Option(
    None, "--attacks", "-a",
    help="Attacks to run, comma-separated or repeated (default: all). E.g. fedmia-ii,loss-series.",
)
ROUND_OPT = typer.Option(
    None, "--round", "-r",
    help="Recorded 0-based round for the single-round attacks (default: the last one the target took part in).",
)
TARGET_OPT = typer.Option(None, "--target", "-t", help="Target client (default: the run's target).")
QUIET_OPT = typer.Option(False, "--quiet", "-q", help="Print only where the outputs are.")


def _quiet(q: bool) -> bool:
    return q or bool(os.environ.get("FEDLEAK_QUIET"))


def _print_table(metrics: dict) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from fedleak.metrics.roc import fpr_key
    from fedleak.report.ranking import ranked

    fprs = metrics["fpr_targets"]
    rot = metrics.get("rotation", {}).get("done", False)
    title = (
        f"Target client {metrics['target']}: {metrics['n_members']} members / {metrics['n_nonmembers']} "
        f"non-members; single-round attacks at round {metrics['round']} (0-based); protocol {metrics['protocol']}. "
        "TPR in % at the given FPR."
    )
    tab = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    tab.add_column("attack", no_wrap=True)
    for c in ("AUC", *[f"@{100 * f:g}%" for f in fprs]):
        tab.add_column(c, justify="right", no_wrap=True)
    if rot:
        tab.add_column("@0.1% all targets", justify="right", no_wrap=True)
    for name in ranked(metrics["attacks"]):
        a = metrics["attacks"][name]
        cells = [a["label"], f"{a['auc']:.3f}", *[f"{100 * a[fpr_key(f)]:.2f}" for f in fprs]]
        if rot:
            r = a["rotating"][fpr_key(0.001)]
            cells.append(f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f}")
        tab.add_row(*cells)
    # a pipe or a log file gets the table's natural width, not rich's 80-column default
    con = Console() if sys.stdout.isatty() else Console(width=200)
    con.print(title, soft_wrap=True, highlight=False, markup=False)
    con.print(tab)


def attack_command(
    run_dir: Path = typer.Argument(..., help="Run directory written by `fedleak train` (or `fedleak run`)."),
    attacks: Optional[List[str]] = ATTACKS_OPT,
    round: Optional[int] = ROUND_OPT,
    target: Optional[int] = TARGET_OPT,
    aggregation: str = typer.Option("mean", help="FedMIA aggregation over rounds: mean (paper), mean-log, stouffer, fisher, max."),
    ddof: int = typer.Option(0, help="FedMIA null variance: 0 = population (paper), 1 = sample."),
    eps: float = typer.Option(1e-8, help="Added to the FedMIA null variance."),
    outlier_filter: bool = typer.Option(False, "--outlier-filter", help="FedMIA 3σ filter on the shadows (paper Eq. 8; inert below 10 shadows)."),
    robust: bool = typer.Option(False, "--robust", help="FedMIA null from median and MAD instead of mean and std."),
    rotate: Optional[bool] = typer.Option(None, "--rotate/--no-rotate", help="Evaluate every client as the target (default: when the run allows it)."),
    strict_fpr: bool = typer.Option(False, "--strict-fpr", help="TPR at FPR strictly below the target (the original code); default FPR <= target."),
    make_figures: bool = typer.Option(True, "--figures/--no-figures", help="Also draw the figures (PDF + PNG)."),
    quiet: bool = QUIET_OPT,
) -> None:
    """Score a run with the membership attacks: metrics (JSON, CSV), per-candidate scores and figures in RUN/attack/.

    A subset of the attacks (--attacks) is written to RUN/attack/<names joined by '+'>/ and leaves the
    full result, which `fedleak report` uses, untouched.
    """
    from fedleak.report.outputs import attack_dir, attack_run

    out, ev = attack_run(
        run_dir, attacks or None, round=round, target=target, rotate=rotate, strict=strict_fpr,
        aggregation=aggregation, ddof=ddof, eps=eps, outlier_filter=outlier_filter, robust=robust,
        make_figures=make_figures,
    )
    if not _quiet(quiet):
        _print_table(ev.metrics)
    typer.echo(f"attack outputs: {out}")
    if out != attack_dir(run_dir):
        typer.echo(
            f"(only these {len(ev.metrics['attacks'])} attacks; `fedleak report` uses all attacks, "
            f"from {attack_dir(run_dir)})"
        )


def report_command(
    run_dir: Path = typer.Argument(..., help="Run directory (attacked with defaults first if needed)."),
    quiet: bool = QUIET_OPT,
) -> None:
    """Write RUN/report.html (self-contained) and RUN/report.md: setup, utility, attack table, figures, verdict."""
    html_path, _ = make_report(run_dir, quiet=_quiet(quiet))
    typer.echo(f"report: {html_path}")


def make_report(run_dir: Path, quiet: bool = True) -> tuple[Path, Path]:
    from fedleak.report.document import build_report
    from fedleak.report.outputs import attack_run, is_full, is_stale, load_attack_metrics

    run_dir = Path(run_dir)
    if is_stale(run_dir):
        _, ev = attack_run(run_dir)
        if not quiet:
            _print_table(ev.metrics)
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
) -> None:
    """Train, attack and report in one go; prints where the report is."""
    from fedleak.config import load_config
    from fedleak.fl import simulation
    from fedleak.report.outputs import attack_run

    overrides = list(set_ or []) + ([f"data.data_dir={data_dir}"] if data_dir else [])
    cfg = load_config(config, overrides)
    run_dir = Path(out) if out is not None else Path(cfg.output.dir) / cfg.name  # as `fedleak train`
    q = _quiet(quiet)
    simulation.train(cfg, run_dir, quiet=q)
    _, ev = attack_run(run_dir)
    if not q:
        _print_table(ev.metrics)
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
    app.command("attack")(attack_command)
    app.command("report")(report_command)
    app.command("run")(run_command)
    app.command("summarize")(summarize_command)
