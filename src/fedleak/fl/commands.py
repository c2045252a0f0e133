"""``fedleak train``, and the options every command that takes an experiment config shares."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

from fedleak.config import ExperimentConfig, load_config


def resolve_run(
    config: str, out: Optional[Path], overrides: List[str], data_dir: Optional[str], device: Optional[str] = None
) -> tuple[ExperimentConfig, Path]:
    """Load a config (path or preset name) with overrides; pick the run directory. Imports no torch (unless
    ``device`` names a GPU, whose presence is checked), so a bad config fails fast."""
    ov = list(overrides or [])
    if data_dir:
        ov.append(f"data.data_dir={data_dir}")
    if device:
        ov.append(f"device={device}")
    cfg = load_config(config, ov)
    run_dir = out if out is not None else Path(cfg.output.dir) / cfg.name
    return cfg, Path(run_dir)


def quiet_default(quiet: bool) -> bool:
    return quiet or bool(os.environ.get("FEDLEAK_QUIET"))


CONFIG_ARG = typer.Argument(..., help="Experiment YAML file, or a preset name from configs/ (e.g. digits-quick).")
OUT_OPT = typer.Option(None, "--out", "-o", help="Run directory (default: <output.dir>/<name>). Resumes if it exists.")
SET_OPT = typer.Option([], "--set", "-s", help="Override a config value, e.g. --set fl.rounds=5 (repeatable).")
DATA_DIR_OPT = typer.Option(None, "--data-dir", help="Folder with dataset files (overrides data.data_dir).")
QUIET_OPT = typer.Option(False, "--quiet", "-q", help="No progress output.")
DEVICE_OPT = typer.Option(
    None, "--device", help="Where training and the signals run: cpu, cuda or cuda:N (overrides the config's "
    "device; TF32 off, random draws on the CPU, so results match the CPU to float rounding)."
)


def train_command(
    config: str = CONFIG_ARG,
    out: Optional[Path] = OUT_OPT,
    set_: List[str] = SET_OPT,
    data_dir: Optional[str] = DATA_DIR_OPT,
    quiet: bool = QUIET_OPT,
    device: Optional[str] = DEVICE_OPT,
) -> None:
    """Train a federation and record per-sample signals into a run directory (resumes an interrupted run)."""
    cfg, run_dir = resolve_run(config, out, set_, data_dir, device)  # before torch is imported: fails fast
    from fedleak.attacks.client_audit import train_audited

    _, audit = train_audited(cfg, run_dir, quiet=quiet_default(quiet))  # + audit.canary_clients' one-shot ε
    if audit is not None:
        typer.echo(f"client-level canary audit: {audit}")
    typer.echo(f"run directory: {run_dir}")


def export_command(
    run_dir: Path = typer.Argument(..., help="Run directory trained with --set signals.keep_models=true."),
    out: Path = typer.Option(..., "--out", "-o", help="New folder for the layout (manifest.json + round_RRRR/)."),
) -> None:
    """Write a run as a recorded federation in the open layout of docs/import.md (safetensors + manifest.json)."""
    from fedleak.fl.export import export_run

    typer.echo(f"manifest: {export_run(run_dir, out)}")


def import_command(
    src: Path = typer.Argument(..., help="Folder with manifest.json and round_RRRR/ tensor files (docs/import.md)."),
    out: Path = typer.Option(..., "--out", "-o", help="New run directory to write (then `fedleak attack` it)."),
    quiet: bool = QUIET_OPT,
) -> None:
    """Import a federation recorded elsewhere: check every file, compute the signals, write a run directory."""
    from fedleak.fl.importer import import_federation

    typer.echo(f"run directory: {import_federation(src, out, quiet=quiet_default(quiet))}")


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
    app.command("export")(export_command)
    app.command("import")(import_command)
