"""CLI commands of the report area: ``report``, ``run`` (train + attack + report) and ``summarize``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from fedleak.attacks.mia.commands import DEFAULT_HEADLINE, headline_option, print_audit, print_table
from fedleak.fl.commands import DEVICE_OPT, quiet_default, resolve_run

QUIET_OPT = typer.Option(False, "--quiet", "-q", help="Print only where the outputs are.")


def report_command(
    run_dir: Path = typer.Argument(..., help="Run directory (attacked with defaults first if needed)."),
    headline_fpr: Optional[float] = headline_option(None),
    quiet: bool = QUIET_OPT,
) -> None:
    """Write RUN/report.html (self-contained) and RUN/report.md: setup, utility, attack table, figures, verdict."""
    html_path, _ = make_report(run_dir, quiet=quiet_default(quiet), headline_fpr=headline_fpr)
    typer.echo(f"report: {html_path}")


def make_report(run_dir: Path, quiet: bool = True, headline_fpr: float | None = None) -> tuple[Path, Path]:
    """Write the report from RUN/attack/, attacking the run first when its attack outputs are missing or stale.

    ``headline_fpr``: None = the one the run was attacked with; another value re-attacks with the same settings."""
    from fedleak.attacks.mia.result import same_fpr
    from fedleak.report.document import build_report
    from fedleak.report.outputs import attack_run, is_full, is_stale, load_attack_metrics, settings_of

    run_dir = Path(run_dir)
    if is_stale(run_dir):
        _, ev = attack_run(run_dir, headline_fpr=DEFAULT_HEADLINE if headline_fpr is None else headline_fpr)
        if not quiet:
            print_table(ev)
    ev = load_attack_metrics(run_dir)
    other_head = headline_fpr is not None and not same_fpr(headline_fpr, ev.headline_fpr)
    if not ev.figures or not is_full(ev) or other_head:
        # attacked with --no-figures (or, before subsets had their own folder, with a subset of the attacks), or
        # at another headline FPR: redo it with the same settings, all attacks, drawing the figures
        kw = settings_of(ev)
        kw.pop("names")
        attack_run(run_dir, None, **{**kw, "headline_fpr": headline_fpr if other_head else ev.headline_fpr})
        ev = load_attack_metrics(run_dir)
    return build_report(run_dir, ev)


def run_command(
    config: str = typer.Argument(..., help="Experiment YAML file, or a preset name from configs/ (e.g. digits-quick)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default: <output.dir>/<name>). Resumes if it exists."),
    set_: List[str] = typer.Option([], "--set", "-s", help="Override a config value, e.g. --set fl.rounds=5 (repeatable)."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Folder with dataset files (overrides data.data_dir)."),
    headline_fpr: float = headline_option(DEFAULT_HEADLINE),
    quiet: bool = QUIET_OPT,
    device: Optional[str] = DEVICE_OPT,
) -> None:
    """Train, attack and report in one go; prints where the report is."""
    cfg, run_dir = resolve_run(config, out, set_, data_dir, device)  # as `fedleak train`, before torch is imported
    from fedleak.attacks.client_audit import train_audited
    from fedleak.report.outputs import attack_run

    q = quiet_default(quiet)
    train_audited(cfg, run_dir, quiet=q)  # audit.canary_clients: audit/clients.json, before the report reads it
    adir, ev = attack_run(run_dir, headline_fpr=headline_fpr)
    if not q:
        print_table(ev)
        print_audit(adir)
    html_path, md_path = make_report(run_dir, quiet=True, headline_fpr=headline_fpr)
    typer.echo(f"report: {html_path}")


def summarize_command(
    run_dirs: List[Path] = typer.Argument(..., help="Run directories to combine (e.g. the same setup with several seeds)."),
    rotating: bool = typer.Option(False, "--rotating", help="Use each run's mean over rotating targets."),
    by_origin: bool = typer.Option(
        False, "--by-origin", help="Also split the non-members: held-out test samples vs. other clients' training samples."
    ),
    headline_fpr: Optional[float] = headline_option(None),
) -> None:
    """Print a Markdown table of attack metrics as mean ± std over several runs."""
    from fedleak.report.summary import by_origin_table, collect, summary_table

    typer.echo(summary_table(collect(run_dirs, headline_fpr=headline_fpr), rotating=rotating))
    if by_origin:
        typer.echo(by_origin_table(run_dirs))


def register(app: typer.Typer) -> None:
    app.command("report")(report_command)
    app.command("run")(run_command)
    app.command("summarize")(summarize_command)
