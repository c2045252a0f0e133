"""A sweep over a model and a dataset defined outside fedleak (import paths, issue #13 item 1): each grid point
trains the user's model on the user's data, and its attack numbers recompute from the run's own signals."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
import yaml

from fedleak.attacks.mia import run_attacks
from fedleak.metrics.roc import roc_metrics
from fedleak.signals.loading import load_signals
from fedleak.sweeps import run_sweep

NETS = """
from torch import nn

def tiny_net(num_classes, input_shape, hidden=8):
    c, h, w = input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
"""
DATA = """
import torch

def blobs(n=80, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(2 * n) % 3
    x = (0.5 + 0.15 * torch.randn(2 * n, 1, 6, 6, generator=g) + 0.1 * y[:, None, None, None]).clamp(0, 1)
    return x[:n], y[:n], x[n:], y[n:]
"""


def test_a_sweep_trains_the_users_model_on_the_users_data(tmp_path, monkeypatch):
    (tmp_path / "sweep_byo_nets.py").write_text(textwrap.dedent(NETS))
    (tmp_path / "sweep_byo_data.py").write_text(textwrap.dedent(DATA))
    monkeypatch.chdir(tmp_path)  # the working directory puts the user's modules on the import path
    base = {"name": "byo", "seed": 1, "data": {"name": "sweep_byo_data:blobs", "options": {"n": 60}},
            "partition": {"num_clients": 3}, "candidates": {"n_test": 20, "n_other": 5},
            "model": {"name": "sweep_byo_nets:tiny_net", "options": {"hidden": 6}},
            "fl": {"rounds": 2, "batch_size": 8, "lr": 0.1}, "signals": {"every": 1}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    sweep = {"base": "base.yaml", "out": str(tmp_path / "out"), "seeds": [0, 1],
             "attacks": {"names": ["blackbox-loss", "fedmia-ii"], "rotate": False}}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    s = run_sweep(tmp_path / "sweep.yaml", backend="inline", log=lambda m: None)
    assert s["status"]["finished"] == 2 and not s["status"]["failed"]
    for run_id in s["runs"]:
        run_dir = tmp_path / "out" / "runs" / run_id
        final = torch.load(run_dir / "final_model.pt", weights_only=True)
        final = final.get("params", final) if isinstance(final, dict) else final
        assert {tuple(v.shape) for v in final.values()} == {(6, 36), (6,), (3, 6), (3,)}  # the user's net, hidden 6
        res = json.loads((run_dir / "result.json").read_text())
        sig = load_signals(run_dir)
        member = sig.members(sig.target)
        scores = run_attacks(sig, ["blackbox-loss", "fedmia-ii"], target=sig.target)
        for name, sc in scores.items():  # AUC recomputed by brute force over member/non-member pairs
            sc = np.nan_to_num(sc, nan=-np.inf)
            pos, neg = sc[member], sc[~member]
            auc = np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])
            assert res["attacks"][name]["auc"] == pytest.approx(auc)
            assert roc_metrics(member, sc).auc == pytest.approx(auc)
