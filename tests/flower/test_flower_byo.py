"""Your own model and loader by import path through Flower's simulation engine (Ray): the ClientApps rebuild
them in worker processes from the config, found through PYTHONPATH as docs/byo.md says, and the run matches
the in-process engine's."""

import os
import textwrap

import pytest
import yaml

pytest.importorskip("flwr")
pytest.importorskip("ray")

from conftest import tiny_config  # noqa: E402
from test_flower import assert_runs_match  # noqa: E402

from fedleak.fl.simulation import train  # noqa: E402

MODULE = """
import torch
from torch import nn

def make(num_classes, input_shape, hidden=12):
    c, h, w = input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, hidden), nn.Tanh(), nn.Linear(hidden, num_classes))

def load(n=90, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n + 30) % 3
    x = (torch.rand(n + 30, 1, 6, 6, generator=g) * 0.6 + y.view(-1, 1, 1, 1) / 5.0).clamp(0, 1)
    return x[:n], y[:n], x[n:], y[n:]
"""


@pytest.mark.slow
def test_flower_sim_rebuilds_an_import_path_model_and_loader(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from fedleak.cli import app

    pkg = tmp_path / "mods"
    pkg.mkdir()
    (pkg / "flower_byo_mod.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(pkg))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(pkg), os.environ.get("PYTHONPATH", "")]))
    cfg = tiny_config(partition__num_clients=3, fl__rounds=2, fl__threads=1,
                      data={"name": "flower_byo_mod:load", "options": {"n": 90}},
                      model={"name": "flower_byo_mod:make", "options": {"hidden": 12}})
    path = tmp_path / "byo.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    ref = train(cfg, tmp_path / "engine", quiet=True)

    res = CliRunner().invoke(app, ["flower-sim", str(path), "--out", str(tmp_path / "flower"), "--quiet",
                                   "--num-cpus", "2"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert_runs_match(ref, tmp_path / "flower")
