"""Issue #10's broad corpus of bad inputs, driven through the real ``fedleak`` entry point (``fedleak.cli.main``).

Every case in tests/corpus_cases.py is bad input for one command: a config key set to a wrong type, a
non-finite or absurd number, an unknown section; a bad ``--set``/option value; a path of the wrong kind (missing,
a directory, a file, a FIFO); a damaged or foreign run directory; a bad sweep file; bad inversion settings.
Each must end the way the house rules say: exit code 2, stderr's last line ``error: ...`` (a single line; only
``warning:`` lines may come before it), no traceback, and the line names the file or key at fault.

Cases that do not hold today are marked ``xfail(strict=True)`` with what happens now (``KNOWN_FAILURES``, grouped
by root cause): the suite stays green, and each mark turns into a failure the moment the behaviour is fixed, so
whoever fixes it removes the mark. ``FEDLEAK_CORPUS_REPORT=path`` appends one line per case (id, verdict,
last stderr line) to ``path`` for triage.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from corpus_cases import BASE, Case, Ctx, all_families
from fedleak.cli import main

FAMILIES = all_families()

# ------------------------------------------------------------------------------------------ known failures
# id -> what happens today, grouped by root cause (the fix named in each group's comment). When a fix lands, its
# cases start passing, strict xfail turns them into failures, and the fixer deletes their lines here.


def _same(reason: str, *ids: str) -> dict[str, str]:
    return dict.fromkeys(ids, reason)


KNOWN_FAILURES: dict[str, str] = {}  # none today (issue #10's 110 are fixed); add new ones with _same(...)


# ------------------------------------------------------------------------------------------------ harness


class _Hung(BaseException):
    """Raised by the alarm when a case runs longer than its time (a BaseException: `except Exception`
    in the code under test must not swallow it)."""


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def run_cli(argv: list[str], monkeypatch, capsys, seconds: int = 60) -> Outcome:
    """``fedleak <argv>`` in this process, as the console script runs it: an exception that escapes ``main``
    is what Python would print as a traceback (exit code 1)."""
    monkeypatch.setattr(sys, "argv", ["fedleak", *argv])

    def alarm(signum, frame):
        raise _Hung()

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    code, tb = 0, ""
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except _Hung:
        code, tb = 124, f"hung: still running after {seconds} s\n"
    except BaseException:  # noqa: BLE001 - exactly what the interpreter would print
        code, tb = 1, traceback.format_exc()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        torch.set_num_threads(1)
    cap = capsys.readouterr()
    return Outcome(code, cap.out, cap.err + tb)


def problems(o: Outcome, needle: str | None) -> list[str]:
    """What is wrong with an outcome under the bad-input contract (empty: it holds)."""
    out: list[str] = []
    if "Traceback" in o.out + o.err or o.code == 124:
        out.append("traceback" if o.code != 124 else "hung")
    if o.code != 2:
        out.append(f"exit code {o.code}")
    lines = o.lines
    if not lines or not lines[-1].startswith("error: "):
        out.append("last stderr line is not 'error: ...'")
    elif any(not line.startswith("warning: ") for line in lines[:-1]):
        out.append(f"{len(lines)} stderr lines, not one error line")
    elif needle is not None and needle not in lines[-1]:
        out.append(f"the error does not name {needle!r}")
    return out


def _report(case: Case, o: Outcome, found: list[str]) -> None:
    path = os.environ.get("FEDLEAK_CORPUS_REPORT")
    if path:
        last = o.lines[-1] if o.lines else ""
        tb = [line for line in o.err.splitlines() if line and not line.startswith(" ")]
        if "Traceback" in o.err and tb:
            last = tb[-1]
        with open(path, "a") as f:
            f.write(f"{case.id}\t{'; '.join(found) or 'ok'}\t{last[:300]}\n")


# the finished work in a run directory: what no failed command may change
FINISHED_WORK = ("config.yaml", "metrics.jsonl", "candidates.npz", "split.npz", "signals/round_0000.npz",
                 "signals/round_0001.npz")


def _state(path: Path) -> object:
    """The content of one file: its arrays for an .npz (the zip's timestamps do not count), else its bytes."""
    if path.is_dir():
        return "<directory>"
    if not path.is_file():
        return "<absent>" if not path.exists() else "<not a file>"
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: (z[k].dtype.str, z[k].shape, z[k].tobytes()) for k in z.files}
        except Exception:  # noqa: BLE001 - a file the case damaged on purpose: compare its bytes
            pass
    return path.read_bytes()


def finished_work(run: Path) -> dict[str, object]:
    return {name: _state(run / name) for name in FINISHED_WORK}


@pytest.fixture(scope="module", autouse=True)
def build_the_cli_once():
    """typer rebuilds the click command from the function signatures on every ``app()`` (30 ms, a third of this
    file's time); the build is a pure function of the app, so it is done once here. ``main`` and ``app()`` still
    run as they are."""
    import typer.main

    built: dict[int, object] = {}
    build = typer.main.get_command

    def cached(app):
        if id(app) not in built:
            built[id(app)] = build(app)
        return built[id(app)]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(typer.main, "get_command", cached)
        yield


@pytest.fixture(scope="module")
def attacked_run(tmp_path_factory) -> Path:
    """A trained (2 rounds, synthetic), attacked and reported run; every case gets its own copy."""
    from fedleak.config import parse_config
    from fedleak.fl.simulation import train
    from fedleak.report.commands import make_report
    from fedleak.report.outputs import attack_run

    run = tmp_path_factory.mktemp("corpus") / "run"
    train(parse_config(BASE), run, quiet=True)
    attack_run(run)
    make_report(run)
    return run


def check_case(case: Case, request, tmp_path, monkeypatch, capsys) -> None:
    ctx = Ctx(tmp=tmp_path)
    if case.needs_run:
        src = request.getfixturevalue("attacked_run")
        ctx.run = tmp_path / "run"
        shutil.copytree(src, ctx.run)
    (tmp_path / "nodata").mkdir()
    monkeypatch.setenv("FEDLEAK_DATA_DIR", str(tmp_path / "nodata"))
    monkeypatch.setenv("FEDLEAK_QUIET", "1")
    monkeypatch.chdir(tmp_path)
    if case.requires:
        pytest.importorskip(case.requires)
    if case.setup is not None:
        case.setup(ctx)
    before = finished_work(ctx.run) if ctx.run else None
    o = run_cli([ctx.expand(a) for a in case.argv], monkeypatch, capsys, case.seconds)
    found = problems(o, ctx.expand(case.needle) if case.needle else None)
    if before is not None:
        after = finished_work(ctx.run)
        changed = [name for name in FINISHED_WORK if before[name] != after[name]]
        if changed:
            found.append(f"finished work changed: {', '.join(changed)}")
    _report(case, o, found)
    assert not found, f"{'; '.join(found)}\n--- stderr ---\n{o.err[-3000:]}\n--- stdout ---\n{o.out[-1000:]}"


def cases(family: str) -> list:
    out = []
    for c in FAMILIES[family]:
        reason = KNOWN_FAILURES.get(c.id)
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        out.append(pytest.param(c, id=c.id, marks=marks))
    return out


# ------------------------------------------------------------------------------------------------- tests


def test_case_ids_are_unique_and_every_known_failure_is_a_case():
    ids = [c.id for fam in FAMILIES.values() for c in fam]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    assert not dup, dup
    stale = sorted(set(KNOWN_FAILURES) - set(ids))
    assert not stale, f"KNOWN_FAILURES names cases that do not exist: {stale}"


def test_the_harness_sees_a_traceback_a_wrong_code_and_extra_lines(monkeypatch, capsys):
    """The checks themselves, on hand-made outcomes and on one real good case and one real error."""
    assert problems(Outcome(2, "", "error: bad key 'x'\n"), "'x'") == []
    assert problems(Outcome(2, "", "warning: w\nerror: bad\n"), None) == []
    assert "traceback" in problems(Outcome(1, "", "Traceback (most recent call last):\n  ...\nKeyError: 'a'\n"), None)
    assert problems(Outcome(0, "done\n", ""), None) == ["exit code 0", "last stderr line is not 'error: ...'"]
    assert problems(Outcome(2, "", "error: a\nmore\n"), None) == ["last stderr line is not 'error: ...'"]
    assert problems(Outcome(2, "", "Usage: x\nerror: a\n"), None) == ["2 stderr lines, not one error line"]
    assert problems(Outcome(2, "", "error: a\n"), "b") == ["the error does not name 'b'"]
    o = run_cli(["datasets", "--data-dir", "/nonexistent-corpus-dir"], monkeypatch, capsys)
    assert o.code == 0 and "synthetic" in o.out
    o = run_cli(["train", "no-such-preset-for-corpus"], monkeypatch, capsys)
    assert problems(o, "no-such-preset-for-corpus") == []


@pytest.mark.parametrize("case", cases("config_value"))
def test_config_value(case, request, tmp_path, monkeypatch, capsys):
    check_case(case, request, tmp_path, monkeypatch, capsys)


@pytest.mark.parametrize("case", cases("config_structure"))
def test_config_structure(case, request, tmp_path, monkeypatch, capsys):
    check_case(case, request, tmp_path, monkeypatch, capsys)


@pytest.mark.parametrize("case", cases("config_semantic"))
def test_config_semantic(case, request, tmp_path, monkeypatch, capsys):
    check_case(case, request, tmp_path, monkeypatch, capsys)


@pytest.mark.parametrize("case", cases("defense_param"))
def test_defense_param(case, request, tmp_path, monkeypatch, capsys):
    check_case(case, request, tmp_path, monkeypatch, capsys)


@pytest.mark.parametrize("case", cases("set_and_paths"))
def test_set_and_paths(case, request, tmp_path, monkeypatch, capsys):
    check_case(case, request, tmp_path, monkeypatch, capsys)


@pytest.mark.parametrize("case", cases("run_dir"))
def test_run_dir(case, request, tmp_path, monkeypatch, capsys):
    check_case(case, request, tmp_path, monkeypatch, capsys)


@pytest.mark.parametrize("case", cases("attack_option"))
def test_attack_option(case, request, tmp_path, monkeypatch, capsys):
    check_case(case, request, tmp_path, monkeypatch, capsys)


@pytest.mark.parametrize("case", cases("summarize"))
def test_summarize(case, request, tmp_path, monkeypatch, capsys):
    check_case(case, request, tmp_path, monkeypatch, capsys)


@pytest.mark.parametrize("case", cases("invert"))
def test_invert(case, request, tmp_path, monkeypatch, capsys):
    check_case(case, request, tmp_path, monkeypatch, capsys)


@pytest.mark.parametrize("case", cases("sweep"))
def test_sweep(case, request, tmp_path, monkeypatch, capsys):
    check_case(case, request, tmp_path, monkeypatch, capsys)


@pytest.mark.parametrize("case", cases("usage"))
def test_usage(case, request, tmp_path, monkeypatch, capsys):
    check_case(case, request, tmp_path, monkeypatch, capsys)


def test_main_keeps_help_and_normal_exit_codes(monkeypatch, capsys):
    """main runs the app with standalone_mode=False: help, a normal run and typer.Exit keep their exit codes,
    and a usage error is one line without click's doubled suggestion."""
    o = run_cli(["--help"], monkeypatch, capsys)
    assert o.code == 0 and "train" in o.out and not o.err
    o = run_cli(["train", "--help"], monkeypatch, capsys)
    assert o.code == 0 and "--set" in o.out
    o = run_cli([], monkeypatch, capsys)  # no_args_is_help: the help, exit 2 as click's standalone mode does
    assert o.code == 2 and "train" in o.out + o.err and "error:" not in o.err
    o = run_cli(["datasets", "--data-dir", "/nonexistent-corpus-dir"], monkeypatch, capsys)
    assert o.code == 0 and "synthetic" in o.out
    o = run_cli(["trian"], monkeypatch, capsys)
    assert o.lines == ["error: No such command 'trian'. Did you mean 'train'? (see fedleak --help)"] and o.code == 2
