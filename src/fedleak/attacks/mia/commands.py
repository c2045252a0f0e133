"""``fedleak attack``: score a run directory with the membership attacks."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Optional

import typer

from fedleak.fl.commands import quiet_default
from fedleak.metrics.roc import HEADLINE_FPR as DEFAULT_HEADLINE

if TYPE_CHECKING:
    from fedleak.attacks.mia.evaluation import Evaluation

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


def headline_option(default: float | None) -> Any:
    """``--headline-fpr``: the FPR the verdict, ranking, per-round figure and summary tables headline."""
    from fedleak.metrics.roc import fpr_text

    std = f"{DEFAULT_HEADLINE:g} = {fpr_text(DEFAULT_HEADLINE)}"
    what = (f"default {std}" if default is not None else
            f"default: the one the run was attacked with, {std} unless `fedleak attack --headline-fpr` said otherwise")
    return typer.Option(default, "--headline-fpr", callback=headline_callback, help=(
        f"False-positive rate that the verdict, ranking, per-round figure and summary tables headline ({what}); "
        "added to the computed FPRs when not among them."))


def headline_callback(value: Optional[float]) -> Optional[float]:
    """Checks ``--headline-fpr`` while the command line is parsed, before any work (one-line error, exit 2)."""
    from fedleak.metrics.roc import check_headline_fpr

    return None if value is None else check_headline_fpr(value)


def print_table(ev: "Evaluation") -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from fedleak.metrics.roc import fpr_text
    from fedleak.attacks.mia.result import same_fpr
    from fedleak.report.intervals_text import auc_text, tpr_text

    head = ev.headline_fpr
    title = (
        f"Target client {ev.target}: {ev.n_members} members / {ev.n_nonmembers} "
        f"non-members; single-round attacks at round {ev.round} (0-based); protocol {ev.protocol}. "
        "TPR in % at the given FPR; 95% intervals: exact (Clopper–Pearson) for the headline TPR, DeLong for the AUC."
    )
    tab = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    tab.add_column("attack", no_wrap=True)
    for c in ("AUC", *[f"@{fpr_text(f)}" for f in ev.fprs]):
        tab.add_column(c, justify="right", no_wrap=True)
    if ev.rotation.done:
        tab.add_column(f"@{fpr_text(head)} all targets", justify="right", no_wrap=True)
    for a in ev.ranked():
        tprs = [tpr_text(a, f) if same_fpr(f, head) else f"{100 * a.tpr_at(f):.2f}" for f in ev.fprs]
        cells = [a.label, auc_text(a), *tprs]
        r = a.rotating_tpr(head) if ev.rotation.done else None
        if r:
            cells.append(f"{100 * r.mean:.2f} ± {100 * r.std:.2f}")
        tab.add_row(*cells)
    # a pipe or a log file gets the table's natural width, not rich's 80-column default
    con = Console() if sys.stdout.isatty() else Console(width=200)
    con.print(title, soft_wrap=True, highlight=False, markup=False)
    con.print(tab)
    for note in ev.notes():
        con.print(f"note: {note}", soft_wrap=True, highlight=False, markup=False)


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
    headline_fpr: float = headline_option(DEFAULT_HEADLINE),
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
        make_figures=make_figures, headline_fpr=headline_fpr,
    )
    if not quiet_default(quiet):
        print_table(ev)
        print_audit(out)
    typer.echo(f"attack outputs: {out}")
    if out != attack_dir(run_dir):
        typer.echo(
            f"(only these {len(ev.attacks)} attacks; `fedleak report` uses all attacks, "
            f"from {attack_dir(run_dir)})"
        )


def print_audit(out: Path) -> None:
    from fedleak.report.audit_outputs import AUDIT_FILE, read_audit_entries
    from fedleak.report.audit_section import audit_summary

    audit = read_audit_entries(out / AUDIT_FILE)
    if isinstance(audit, dict):
        typer.echo(f"{audit_summary(audit)} (details: {out / AUDIT_FILE})")


def register(app: typer.Typer) -> None:
    app.command("attack")(attack_command)
