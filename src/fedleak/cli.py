"""The ``fedleak`` command line (typer).

Core commands live here; each later area registers its own commands from a ``commands`` module
(``register(app)``), so the CLI grows without one file knowing every feature.
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

_AREAS = (
    "fedleak.core_commands",
    "fedleak.report.commands",
    "fedleak.attacks.inversion.commands",
    "fedleak.sweeps.commands",
    "fedleak.flower.commands",
)


def _register_areas() -> None:
    for name in _AREAS:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is not None and name.startswith(e.name):
                continue  # area not installed/written yet
            raise
        mod.register(app)


_register_areas()


def main() -> None:
    from fedleak.errors import USER_ERRORS

    try:
        app()
    except USER_ERRORS as e:  # one clear line, no traceback, for bad input
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
