"""Bad data through the real CLI entry point: one ``error:`` line naming the folder / key, exit 2, no traceback."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import assert_one_error_line
from fedleak.cli import main


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """(exit code, stderr) of ``fedleak <args>`` run through the console-script entry point."""
    monkeypatch.setattr(sys, "argv", ["fedleak", *args])
    with pytest.raises(SystemExit) as e:
        main()
    code = e.value.code if isinstance(e.value.code, int) else (0 if e.value.code is None else 1)
    return code, capsys.readouterr().err


def _png(path: Path, value: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 6, 3), value, np.uint8)).save(path)


def _config(tmp_path: Path, data: dict, **extra) -> Path:
    raw = {
        "name": "folder",
        "data": data,
        "partition": {"num_clients": 2},
        "candidates": {"n_test": 2, "n_other": 2},
        "model": {"name": "mlp", "options": {"hidden": [4]}},
        "fl": {"rounds": 1, "batch_size": 4},
        **extra,
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


# -------------------------------------------------------------------------------------------- imagefolder


def test_imagefolder_empty_class_folder_is_named(tmp_path, monkeypatch, capsys):
    root = tmp_path / "images"
    for i in range(4):
        _png(root / "cat" / f"{i}.png", 10 * i)
        _png(root / "dog" / f"{i}.png", 200 - 10 * i)
    (root / "zebra").mkdir()
    (root / "zebra" / "notes.txt").write_text("no images here")
    cfg = _config(tmp_path, {"name": "imagefolder", "root": str(root), "image_size": 8})
    code, err = run_cli(monkeypatch, capsys, "train", str(cfg), "-o", str(tmp_path / "r"))
    assert_one_error_line(code, err, f"class folder {root / 'zebra'} holds no images")
    assert not (tmp_path / "r").exists()
    # with the empty folder gone the same tree loads: 2 classes, 8 images
    (root / "zebra" / "notes.txt").unlink()
    (root / "zebra").rmdir()
    from fedleak.config import load_config
    from fedleak.data import load_dataset

    ds = load_dataset(load_config(cfg).data)
    assert ds.num_classes == 2 and len(ds.train) + len(ds.test) == 8


def test_imagefolder_with_one_class_is_refused(tmp_path, monkeypatch, capsys):
    root = tmp_path / "images"
    for i in range(5):
        _png(root / "only" / "sub" / f"{i}.png", 40 * i)
    (root / ".hidden").mkdir()  # hidden folders are not classes
    cfg = _config(tmp_path, {"name": "imagefolder", "root": str(root), "image_size": 8})
    code, err = run_cli(monkeypatch, capsys, "train", str(cfg), "-o", str(tmp_path / "r"))
    assert_one_error_line(code, err, str(root), "only one class folder (only)", "at least 2")


# ------------------------------------------------------------------------------------------- memory limits


def test_synthetic_data_too_large_for_memory_is_refused_before_drawing(tmp_path, monkeypatch, capsys):
    synth = {"n_train": 100_000_000, "n_test": 10, "size": 1024, "channels": 3}
    cfg = _config(tmp_path, {"name": "synthetic", "synthetic": synth})
    t0 = time.perf_counter()
    code, err = run_cli(monkeypatch, capsys, "train", str(cfg), "-o", str(tmp_path / "r"))
    assert_one_error_line(code, err, "data.synthetic (100,000,000 + 10 images of 1024x1024", "GiB",
                          "more than half of this machine's")
    assert time.perf_counter() - t0 < 30


def test_resize_too_large_for_memory_is_refused_before_resizing(tmp_path, monkeypatch, capsys):
    # 200,000 tiny images are cheap; resized to 1024x1024 float32 they would need 200k * 4 MiB = 781 GiB
    synth = {"n_train": 200_000, "n_test": 10, "size": 4}
    cfg = _config(tmp_path, {"name": "synthetic", "synthetic": synth, "image_size": 1024})
    code, err = run_cli(monkeypatch, capsys, "train", str(cfg), "-o", str(tmp_path / "r"))
    need = 200_010 * 1024 * 1024 * 4 / 2**30
    assert_one_error_line(code, err, "200,010 images of 1x1024x1024 (float32)", f"needs {need:,.1f} GiB",
                          "data.image_size")


def test_synthetic_options_reject_floats_and_non_finite(tmp_path, monkeypatch, capsys):
    from fedleak.data.base import DataError
    from fedleak.data.builtin import synthetic_options

    with pytest.raises(DataError, match="data.synthetic.n_train must be a positive integer, got 1e"):
        synthetic_options({"n_train": 1e20})
    with pytest.raises(DataError, match="data.synthetic.noise must be a finite number"):
        synthetic_options({"noise": float("inf")})
    with pytest.raises(DataError, match="data.synthetic.size must be <= 1024"):
        synthetic_options({"size": 5000, "n_train": 1, "n_test": 1})
    cfg = _config(tmp_path, {"name": "synthetic", "synthetic": {"n_train": "lots"}})
    code, err = run_cli(monkeypatch, capsys, "train", str(cfg), "-o", str(tmp_path / "r"))
    assert_one_error_line(code, err, "data.synthetic.n_train must be a positive integer")


# ----------------------------------------------------------------------------- advice names real options


def test_missing_dataset_advice_names_an_option_that_exists(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "data"
    empty.mkdir()
    cfg = _config(tmp_path, {"name": "mnist", "data_dir": str(empty)})
    code, err = run_cli(monkeypatch, capsys, "train", str(cfg), "-o", str(tmp_path / "r"))
    line = assert_one_error_line(code, err, "dataset 'mnist' not found", "--set data.download=true")
    assert "--download" not in line.replace("--set data.download", "")
    # following the advice really reaches the downloader (a local mirror without the files: a download error,
    # not an 'unknown key' error)
    mirror = (tmp_path / "mirror").resolve()
    mirror.mkdir()
    code, err = run_cli(monkeypatch, capsys, "train", str(cfg), "--set", "data.download=true",
                        "--set", f"data.mirror={mirror.as_uri()}", "-o", str(tmp_path / "r"))
    assert_one_error_line(code, err, "could not download", "data.mirror")


def test_data_messages_advise_only_existing_options():
    """Every '--option' that a data error message advises is an option of the fedleak CLI."""
    import re

    import fedleak.data as data_pkg
    from typer.main import get_command

    from fedleak.cli import app

    options: set[str] = set()
    for cmd in get_command(app).commands.values():
        for p in cmd.params:
            options.update(o for o in p.opts if o.startswith("--"))
    src = Path(data_pkg.__file__).parent
    advised: set[str] = set()
    for f in src.glob("*.py"):
        for literal in re.findall(r'f?"([^"\n]*)"', f.read_text()):
            advised.update(re.findall(r"(?<![\w-])--[a-z][a-z-]+", literal))
    assert advised, "expected some advice in the data messages"
    assert advised <= options, advised - options


def test_download_hint_is_a_valid_override():
    from fedleak.config import load_config
    from fedleak.data.download import DOWNLOAD_HINT

    override = DOWNLOAD_HINT.split("--set ")[1]
    assert load_config("digits-quick", [override]).data.download is True


def test_meta_json_shape_unchanged_except_candidates_used(tmp_path, monkeypatch, capsys):
    """The run directory gains one meta.json key (the candidate counts used) and nothing else."""
    cfg = _config(tmp_path, {"name": "synthetic", "synthetic": {"n_train": 40, "n_test": 10, "size": 4}})
    code, err = run_cli(monkeypatch, capsys, "train", str(cfg), "-q", "-o", str(tmp_path / "r"))
    assert code == 0, err
    meta = json.loads((tmp_path / "r" / "meta.json").read_text())
    assert meta["candidates_used"] == {"max_members": 20, "n_test": 2, "n_other": 2}
    assert meta["n_members"] == 20 and meta["n_candidates"] == 24
