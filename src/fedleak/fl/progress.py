"""Progress over rounds: a rich bar with live accuracy and ETA on a terminal, plain log lines
otherwise (CI, pipes), nothing with ``quiet``.

Rounds are named by their 0-based index, as in the run directory (``signals/round_0019.npz``), the
config (``signals.rounds``) and the report: a 20-round run goes from round 0 to round 19.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

log = logging.getLogger("fedleak")


def interactive() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CI")


def round_label(rnd: int, total: int) -> str:
    """'round 9 of 0-19': the 0-based index and the range it lives in."""
    return f"round {rnd} of 0-{total - 1}"


class RoundProgress:
    def __init__(self, total: int, start: int = 0, quiet: bool = False, name: str = "train") -> None:
        self.total, self.start, self.quiet, self.name = total, start, quiet, name
        self._bar = None
        self._task = None

    def __enter__(self) -> "RoundProgress":
        if self.quiet:
            return self
        if interactive():
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[where]}"),
                TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=False,
            )
            self._bar.__enter__()
            where = f"resuming at {round_label(self.start, self.total)}" if self.start else ""
            self._task = self._bar.add_task(self.name, total=self.total, completed=self.start, info="", where=where)
        elif self.start:
            print(f"[fedleak] {self.name}: resuming at {round_label(self.start, self.total)}", file=sys.stderr)
        return self

    def update(self, rnd: int, record: dict[str, Any]) -> None:
        if self.quiet:
            return
        info = f"test_acc={record.get('test_acc', float('nan')):.3f}"
        if "train_acc" in record:
            info += f" train_acc={record['train_acc']:.3f}"
        if self._bar is not None:
            self._bar.update(self._task, completed=rnd + 1, info=info, where=round_label(rnd, self.total))
        else:
            print(f"[fedleak] {self.name}: {round_label(rnd, self.total)} {info} ({record['time']:.1f}s)",
                  file=sys.stderr, flush=True)

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
