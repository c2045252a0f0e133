"""The ``fedleak`` command line (typer), with lazily imported commands.

``COMMANDS`` is the one table of commands: name -> (module, function, one-line help). ``fedleak --help`` is
printed from the table alone, and a command's module is imported only when that command runs or its own
``--help`` is asked for, so neither imports torch (about 4 s of CPU here) unless the command needs it. Each
area's ``commands.py`` also keeps ``register(app)`` (the commands it defines); ``tests/test_cli_lazy.py`` checks
that the table and the areas agree, row by row and help line by help line. A command whose module fails to import
is an error when it is used (a broken install), never skipped: optional extras (Flower) are imported by the
command when it runs.

Adding a command: write the function in the area's ``commands.py`` (torch-importing imports inside the function
body), add it to that module's ``register``, and add one row below.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Mapping
from typing import NamedTuple

import click
import typer
from typer.core import TyperGroup


class Entry(NamedTuple):
    """Where a command lives: ``module`` (dotted) holds ``function``; ``help`` is its line in ``fedleak --help``
    (the first paragraph of the function's docstring)."""

    module: str
    function: str
    help: str


COMMANDS: dict[str, Entry] = {
    "train": Entry("fedleak.fl.commands", "train_command",
                   "Train a federation and record per-sample signals into a run directory (resumes an interrupted "
                   "run)."),
    "export": Entry("fedleak.fl.commands", "export_command",
                    "Write a run as a recorded federation in the open layout of docs/import.md (safetensors + "
                    "manifest.json)."),
    "import": Entry("fedleak.fl.commands", "import_command",
                    "Import a federation recorded elsewhere: check every file, compute the signals, write a run "
                    "directory."),
    "datasets": Entry("fedleak.data.commands", "datasets_command",
                      "List the registered datasets, the files each expects and whether they are in the data dir."),
    "attack": Entry("fedleak.attacks.mia.commands", "attack_command",
                    "Score a run with the membership attacks: metrics (JSON, CSV), per-candidate scores and figures "
                    "in RUN/attack/."),
    "report": Entry("fedleak.report.commands", "report_command",
                    "Write RUN/report.html (self-contained) and RUN/report.md: setup, utility, attack table, "
                    "figures, verdict."),
    "run": Entry("fedleak.report.commands", "run_command",
                 "Train, attack and report in one go; prints where the report is."),
    "summarize": Entry("fedleak.report.commands", "summarize_command",
                       "Print a Markdown table of attack metrics as mean ± std over several runs."),
    "invert": Entry("fedleak.attacks.inversion.commands", "invert_command",
                    "Reconstruct client images from their (defended) gradient and measure MSE/PSNR/SSIM."),
    "sweep": Entry("fedleak.sweeps.commands", "sweep_command",
                   "Run a grid of defense x strength x seed (x variant) experiments and report privacy against "
                   "utility."),
    "flower-sim": Entry("fedleak.flower.commands", "flower_sim_command",
                        "Train a federation with Flower's simulation engine (ServerApp + ClientApps), audited by "
                        "fedleak."),
}


def load_command(name: str, entry: Entry) -> click.Command:
    """The click command of one table row: imports its module (an import failure propagates: never skipped)."""
    function = getattr(importlib.import_module(entry.module), entry.function)
    single = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    single.command(name)(function)
    return typer.main.get_command(single)


class _LoadedOnUse(Mapping):
    """``group.commands`` for code that introspects a click group: the table's names, each command imported when
    it is looked up (and kept)."""

    def __init__(self) -> None:
        self.loaded: dict[str, click.Command] = {}

    def __getitem__(self, name: str) -> click.Command:
        if name not in self.loaded:
            self.loaded[name] = load_command(name, COMMANDS[name])
        return self.loaded[name]

    def __iter__(self):
        return iter(COMMANDS)

    def __len__(self) -> int:
        return len(COMMANDS)


class LazyGroup(TyperGroup):
    """A typer group whose commands come from ``COMMANDS``, each imported on first use."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.commands = _LoadedOnUse()  # type: ignore[assignment]
        self._listing = False  # printing the group's own help: placeholders from the table, nothing imported

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        return click.Command(cmd_name, help=entry.help) if self._listing else self.commands[cmd_name]

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


app = typer.Typer(
    name="fedleak",
    cls=LazyGroup,
    help="Audit privacy leakage in federated learning: membership inference and gradient inversion.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """(The group itself does nothing; ``help`` above is its help text.)"""


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
