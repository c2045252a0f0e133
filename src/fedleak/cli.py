"""The ``fedleak`` command line (typer).

Each area registers its own commands from its ``commands`` module (``register(app)``), so the CLI grows without
one file knowing every feature. An area that cannot be imported is an error (a broken install), never skipped:
optional extras (Flower) are imported by the command when it runs, not at registration.
"""

from __future__ import annotations

import importlib
import re
import sys

import click
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


def _usage_line(e: click.UsageError) -> str:
    """click's usage error as one line: the message and the command whose --help explains it."""
    names, ctx = [], e.ctx
    while ctx is not None and ctx.parent is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    command = " ".join(["fedleak", *reversed(names)])
    sentences = re.split(r"(?<=[.?!])\s+", e.format_message().strip())  # typer and click both add "Did you mean"
    return f"{' '.join(dict.fromkeys(sentences))} (see {command} --help)"


def main() -> None:
    from fedleak.errors import USER_ERRORS

    try:
        rv = app(standalone_mode=False)  # click's usage errors come here instead of its multi-line panel
    except click.exceptions.NoArgsIsHelpError:
        sys.exit(2)  # typer has printed the help already (as before)
    except USER_ERRORS as e:  # one clear line, no traceback, for bad input
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except click.UsageError as e:
        typer.secho(f"error: {_usage_line(e)}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except click.ClickException as e:
        typer.secho(f"error: {e.format_message()}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except click.Abort:
        typer.secho("Aborted!", err=True)
        sys.exit(1)
    # typer.Exit(code) comes back as a return value; a normal run exits 0 as in click's standalone mode
    sys.exit(rv if isinstance(rv, int) and not isinstance(rv, bool) else 0)


if __name__ == "__main__":
    main()
