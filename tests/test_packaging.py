"""A wheel ships the presets (issue #13 item 6 / packaging): built from a copy of the source tree, installed
into a fresh virtual environment (no network: ``--no-deps --no-index``; the dependencies come from the test's
own environment through a ``.pth`` line), and the installed ``fedleak`` finds its presets from any folder."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import REPO, assert_one_error_line

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, env={"PATH": "/usr/bin:/bin"})


def test_an_installed_wheel_finds_its_presets(tmp_path):
    src = tmp_path / "src-copy"  # build from a copy: a build writes build/ and *.egg-info next to the sources
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "runs", "build", "dist", "*.egg-info", "__pycache__", "tests", "docs", "benchmarks"))
    wheels = tmp_path / "wheels"
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                  "-w", str(wheels), str(src)], tmp_path)
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("fedleak-*.whl")

    venv = tmp_path / "venv"
    assert _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path).returncode == 0
    py = venv / "bin" / "python"
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path)
                .stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch etc. from this environment
    inst = _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q",
                 str(wheel)], tmp_path)
    assert inst.returncode == 0, inst.stderr

    work = tmp_path / "elsewhere"
    work.mkdir()
    where = _run([str(py), "-c", "import fedleak.config as c; print(c.__file__); print(c.presets_dir())"], work)
    module, presets = where.stdout.split()
    assert module.startswith(str(site)) and Path(presets) == site / "fedleak" / "presets"  # the wheel, not a checkout
    shipped = sorted(p.relative_to(site / "fedleak" / "presets") for p in Path(presets).rglob("*.yaml"))
    assert shipped == sorted(p.relative_to(REPO / "configs") for p in (REPO / "configs").rglob("*.yaml"))
    for rel in shipped:
        assert (Path(presets) / rel).read_bytes() == (REPO / "configs" / rel).read_bytes()

    fedleak = str(venv / "bin" / "fedleak")
    res = _run([str(py), "-c", "from fedleak.config import load_config; c = load_config('digits-quick'); "
                "print(c.name, c.data.name)"], work)
    assert res.returncode == 0 and res.stdout.split() == ["digits-quick", "digits"], res.stderr
    # the CLI resolves the preset (else: "config 'digits-quick' not found") and stops at the bad override's dataset
    res = _run([fedleak, "train", "digits-quick", "--set", "data.name=no-such-set", "-o", str(work / "r")], work)
    assert_one_error_line(res.returncode, res.stderr, "unknown dataset 'no-such-set'")
    res = _run([fedleak, "train", "no-such-preset"], work)
    assert_one_error_line(res.returncode, res.stderr, "one of the presets:", "digits-quick", "mnist-mlp")
    res = _run([str(py), "-c", "from fedleak.attacks.inversion.presets import PRESETS; print(sorted(PRESETS))"], work)
    assert res.returncode == 0 and "'dlg'" in res.stdout and "'ig-cifar'" in res.stdout, res.stderr
