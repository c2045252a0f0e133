"""The ``fedleak`` command line (typer).

Each area registers its own commands from its ``commands`` module (``register(app)``), so the CLI grows without
one file knowing every feature. An area that cannot be imported is an error (a broken install), never skipped:
optional extras (Flower) are imported by the command when it runs, not at registration.
"""

from __future__ import annotations

import importlib
import sys

import typer

app = typer.Typer(
    name="fedleak",
    help="Audit privacy leakage in federated learning: membership inference and gradient inversion.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

AREAS = (
    "fedleak.fl.commands",
    "fedleak.data.commands",
    "fedleak.attacks.mia.commands",
    "fedleak.report.commands",
    "fedleak.attacks.inversion.commands",
    "fedleak.sweeps.commands",
    "fedleak.flower.commands",
)


def register_areas(target: typer.Typer, areas: tuple[str, ...] = AREAS) -> None:
    """Add every area's commands to ``target``; an area module that fails to import raises (no silent skip)."""
    for name in areas:
        importlib.import_module(name).register(target)


register_areas(app)


def main() -> None:
    from fedleak.errors import USER_ERRORS

    try:
        app()
    except USER_ERRORS as e:  # one clear line, no traceback, for bad input
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
