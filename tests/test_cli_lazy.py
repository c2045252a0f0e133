"""Lazy CLI start-up (issue #14 item 4): help and config validation import no torch; the command table agrees with
what each area's ``commands.py`` defines; a command whose module cannot be imported is a loud error.

The import checks run in fresh interpreters (``sys.modules`` of this pytest process already holds torch).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from conftest import SRC, assert_one_error_line
from fedleak import cli

#: Run ``fedleak`` argument lists in one fresh interpreter; report each exit code, stderr, and whether torch was
#: imported by then (the argument lists run in order, so torch seen after list i was imported by lists <= i).
PROBE = r"""
import contextlib, io, json, sys
from fedleak.cli import main
out = []
for argv in json.loads(sys.argv[1]):
    sys.argv = ["fedleak", *argv]
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code
    out.append({"argv": argv, "code": code, "err": err.getvalue(), "torch": "torch" in sys.modules})
print(json.dumps(out))
"""


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", COLUMNS="200")
    env.pop("FEDLEAK_QUIET", None)
    return env


def _probe(*argvs: list[str]) -> list[dict]:
    res = subprocess.run([sys.executable, "-c", PROBE, json.dumps(list(argvs))], capture_output=True, text=True,
                         env=_env(), timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@pytest.mark.slow  # fresh interpreters
def test_help_of_the_cli_and_of_every_command_imports_no_torch() -> None:
    runs = _probe(["--help"], *[[name, "--help"] for name in cli.COMMANDS])
    assert [r["code"] for r in runs] == [0] * len(runs), runs
    assert not any(r["torch"] for r in runs), [r["argv"] for r in runs if r["torch"]]


@pytest.mark.slow  # fresh interpreters
def test_importtime_of_help_lists_no_torch_module() -> None:
    """``python -X importtime -m fedleak.cli --help``: the interpreter's own list of every module imported."""
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "fedleak.cli", "--help"], capture_output=True,
                         text=True, env=_env(), timeout=120)
    assert res.returncode == 0, res.stderr
    modules = [line.rsplit("|", 1)[-1].strip() for line in res.stderr.splitlines() if line.startswith("import time:")]
    assert "fedleak" in modules and "typer" in modules  # the listing is real (fedleak.cli itself runs as __main__)
    assert not [m for m in modules if m == "torch" or m.startswith("torch.")]
    assert "train" in res.stdout and "invert" in res.stdout


@pytest.fixture()
def bad_configs(tmp_path: Path) -> dict[str, Path]:
    typo = tmp_path / "typo.yaml"
    typo.write_text("fl:\n  rouds: 5\n")
    good = tmp_path / "good.yaml"
    good.write_text("fl:\n  rounds: 2\n")
    return {"typo": typo, "good": good, "out": tmp_path / "run"}


@pytest.mark.slow  # fresh interpreters
def test_config_errors_are_one_line_before_torch_is_imported(bad_configs) -> None:
    out = str(bad_configs["out"])
    runs = _probe(
        ["train", str(bad_configs["typo"]), "--out", out],
        ["run", str(bad_configs["typo"]), "--out", out],
        ["train", str(bad_configs["good"]), "--out", out, "--set", "fl.rounds=many"],
        ["train", str(bad_configs["good"]), "--out", out, "--set", "fl.rouds=3"],
        ["train", str(bad_configs["good"]), "--out", out, "--device", "gpu"],
    )
    needles = [["fl.rouds"], ["fl.rouds"], ["fl.rounds", "many"], ["fl.rouds"], ["device", "'gpu' is not a device"]]
    for r, n in zip(runs, needles):
        assert_one_error_line(r["code"], r["err"], *n)
        assert not r["torch"], r["argv"]
    assert not bad_configs["out"].exists()  # nothing was started


@pytest.mark.slow  # fresh interpreters
def test_an_absent_gpu_is_a_one_line_error(tmp_path: Path) -> None:
    import torch

    absent = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU: absent on every machine
    cfg = tmp_path / "c.yaml"
    cfg.write_text("fl:\n  rounds: 2\n")
    for argv in (["train", str(cfg), "--out", str(tmp_path / "r"), "--device", absent],
                 ["run", str(cfg), "--out", str(tmp_path / "r"), "--device", absent],
                 ["train", str(cfg), "--out", str(tmp_path / "r"), "--set", f"device={absent}"]):
        r = _probe(argv)[0]
        assert_one_error_line(r["code"], r["err"], "device", f"'{absent}' is not available", "use 'cpu'")
    assert not (tmp_path / "r").exists()


def _area_modules() -> list[str]:
    """Every ``commands`` module under src/fedleak, found on disk (a new area cannot hide from the check)."""
    return sorted(".".join(p.relative_to(SRC).with_suffix("").parts) for p in (SRC / "fedleak").rglob("commands.py"))


def _first_paragraph(fn) -> str:
    return " ".join(inspect.getdoc(fn).split("\n\n")[0].split())


def test_table_agrees_with_what_every_area_registers() -> None:
    seen: dict[str, tuple[str, str, str]] = {}
    for module in _area_modules():
        app = typer.Typer()
        importlib.import_module(module).register(app)
        for info in app.registered_commands:
            seen[info.name] = (module, info.callback.__name__, _first_paragraph(info.callback))
    assert set(seen) == set(cli.COMMANDS), "add a row to fedleak.cli.COMMANDS for every registered command"
    for name, (module, function, help_) in seen.items():
        assert tuple(cli.COMMANDS[name]) == (module, function, help_), name


def test_a_command_whose_module_fails_to_import_is_a_loud_error(monkeypatch) -> None:
    monkeypatch.setitem(cli.COMMANDS, "broken", cli.Entry("fedleak.no_such_area.commands", "go", "Never works."))
    monkeypatch.setitem(cli.COMMANDS, "renamed", cli.Entry("fedleak.fl.commands", "no_such_function", "Gone."))
    runner = CliRunner()
    res = runner.invoke(cli.app, ["broken", "--help"])
    assert isinstance(res.exception, ModuleNotFoundError) and res.exception.name == "fedleak.no_such_area"
    res = runner.invoke(cli.app, ["renamed"])
    assert isinstance(res.exception, AttributeError) and "no_such_function" in str(res.exception)
    listing = runner.invoke(cli.app, ["--help"], env={"COLUMNS": "200"})
    assert listing.exit_code == 0 and "broken" in listing.output and "Never works." in listing.output


def test_unknown_command_suggests_the_close_one(capsys, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["fedleak", "trian"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    line = assert_one_error_line(e.value.code, capsys.readouterr().err, "No such command 'trian'")
    assert "Did you mean 'train'?" in line


def test_cli_module_imports_no_command_module() -> None:
    """The table is data: fedleak/cli.py itself imports none of the areas (they load on use)."""
    tree = ast.parse((SRC / "fedleak" / "cli.py").read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not [m for m in imported if m.startswith("fedleak.") and m != "fedleak.errors"], imported
