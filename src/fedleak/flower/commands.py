"""``fedleak flower-sim``: an experiment config through Flower's simulation engine (needs ``fedleak[flower]``).

Imports ``flwr`` only when the command runs, so the CLI works without the extra.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from fedleak.fl.commands import CONFIG_ARG, DATA_DIR_OPT, QUIET_OPT, SET_OPT, quiet_default, resolve_run

FLOWER_MISSING = "Flower is not installed: pip install 'fedleak[flower]' (or: pip install 'flwr[simulation]')"


OUT_OPT = typer.Option(
    None, "--out", "-o", help="Run directory (default: <output.dir>/<name>); must not hold a run (no resume)."
)


def flower_sim_command(
    config: str = CONFIG_ARG,
    out: Optional[Path] = OUT_OPT,
    set_: List[str] = SET_OPT,
    data_dir: Optional[str] = DATA_DIR_OPT,
    quiet: bool = QUIET_OPT,
    num_cpus: Optional[int] = typer.Option(
        None, "--num-cpus", min=1, help="CPUs for Flower's Ray backend (default: all, at most one per client)."
    ),
) -> None:
    """Train a federation with Flower's simulation engine (ServerApp + ClientApps), audited by fedleak.

    Same config, seed and run directory format as `fedleak train`: `fedleak attack`/`report` read the result.
    """
    try:
        from fedleak.flower.sim import run_flower_simulation
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] in ("flwr", "ray"):
            typer.secho(f"error: {FLOWER_MISSING}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None
        raise
    cfg, run_dir = resolve_run(config, out, set_, data_dir)
    if cfg.device != "cpu":  # never ignored silently
        from fedleak.errors import ConfigError

        raise ConfigError(f"device: flower-sim trains its ClientApps on the CPU, not {cfg.device!r}; use "
                          "--set device=cpu (or `fedleak train --device` for the in-process engine)")
    run_flower_simulation(cfg, run_dir, num_cpus=num_cpus, quiet=quiet_default(quiet))
    typer.echo(f"run directory: {run_dir}")


def register(app: typer.Typer) -> None:
    app.command("flower-sim")(flower_sim_command)
