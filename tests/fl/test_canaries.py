"""Sample-level canaries in a run: pool, coins, insertion into the target's training data, recorded signals,
resume, the stacked engine, and the one-line error for too many canaries."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from conftest import SRC, assert_one_error_line, tiny_config
from fedleak.config import ConfigError
from fedleak.fl import round as round_mod
from fedleak.fl.canaries import canary_pool, draw_canaries, utility_test_rows
from fedleak.fl.federation import build_federation
from fedleak.fl.simulation import train
from fedleak.signals.canaries import CANARY_KEYS, read_canaries
from fedleak.signals.store import read_npz, round_path


def _cfg(m=16, kind="mislabeled", **over):
    return tiny_config(audit={"canaries": m, "kind": kind}, **over)


def test_pool_is_exactly_the_samples_no_client_holds_and_no_candidate_uses():
    clients = [np.array([0, 3]), np.array([1, 5])]
    cand = np.array([0, 1, 6 + 2])  # train rows 0, 1 and test row 2
    # train rows 2, 4 are held by nobody; test rows 0, 1, 3 (ids 6, 7, 9) are not candidates
    assert canary_pool(clients, 6, 4, cand).tolist() == [2, 4, 6, 7, 9]


def test_draw_canaries_labels_coins_and_the_too_many_error():
    from fedleak.config import AuditConfig

    pool = np.arange(100, 400)
    true = np.arange(400) % 7
    mis = draw_canaries(AuditConfig(canaries=200, kind="mislabeled"), 5, 2, pool, true, 7)
    nat = draw_canaries(AuditConfig(canaries=200, kind="natural"), 5, 2, pool, true, 7)
    assert len(set(mis.ids.tolist())) == 200 and set(mis.ids.tolist()) <= set(pool.tolist())
    assert (mis.true_label == true[mis.ids]).all() and (mis.label != mis.true_label).all()
    assert (nat.label == true[nat.ids]).all() and nat.target == 2
    # same seed: same canaries and coins whatever the kind (separate streams)
    assert (mis.ids == nat.ids).all() and (mis.inserted == nat.inserted).all()
    # fair coins: 200 draws, a two-sided binomial test at 1e-4 would reject beyond 50 ± 28% of 200 -> [72, 128]
    assert 72 <= int(mis.inserted.sum()) <= 128
    # every wrong label is used (uniform over the 6 wrong classes: each expected 33 times)
    assert len(np.unique((mis.label - mis.true_label) % 7)) == 6
    with pytest.raises(ConfigError, match=r"audit.canaries=301 .* at most 300"):
        draw_canaries(AuditConfig(canaries=301), 5, 2, pool, true, 7)


def test_inserted_canaries_train_with_the_target_and_nobody_else(monkeypatch):
    cfg = _cfg(m=18)
    fed = build_federation(cfg)
    c = fed.canaries
    n_train = len(fed.data.train)
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    real = round_mod.local_round

    def spy(model, global_params, x, y, **kw):
        seen[int(kw["where"].rsplit(" ", 1)[1])] = (x.clone(), y.clone())
        return real(model, global_params, x, y, **kw)

    monkeypatch.setattr(round_mod, "local_round", spy)
    from fedleak.fl.local import get_params

    params = get_params(fed.model)
    for k in range(cfg.partition.num_clients):
        round_mod.client_update(fed, k, 0, 0.1, params)
    t = c.target
    # the count matches the coin flips: the target's data is its shard plus exactly the inserted canaries
    assert len(seen[t][1]) == len(fed.clients[t]) + int(c.inserted.sum())
    assert int(c.inserted.sum()) not in (0, c.m)  # both outcomes occur, so the check above is not vacuous
    extra_x, extra_y = seen[t][0][len(fed.clients[t]):], seen[t][1][len(fed.clients[t]):]
    ins = c.ids[c.inserted]
    test_rows = torch.as_tensor(ins - n_train)
    assert (ins >= n_train).all()  # tiny config: every train row is held, the pool is test rows
    assert torch.equal(extra_x, fed.data.test.x[test_rows])
    assert torch.equal(extra_y, torch.as_tensor(c.label[c.inserted]))  # the (wrong) canary labels
    for k in range(cfg.partition.num_clients):
        if k != t:
            assert torch.equal(seen[k][0], fed.data.train.x[torch.as_tensor(fed.clients[k])])
    # utility is evaluated without any canary row (inserted or not)
    keep = utility_test_rows(fed)
    assert set(keep.tolist()) == set(range(len(fed.data.test))) - set((c.ids - n_train).tolist())


def test_a_plain_run_has_no_canary_files_or_arrays(tmp_path):
    train(tiny_config(), tmp_path, quiet=True)
    assert not (tmp_path / "canaries.npz").exists()
    assert not set(CANARY_KEYS) & set(read_npz(round_path(tmp_path, 0), "").keys())
    assert "audit" not in yaml.safe_load((tmp_path / "config.yaml").read_text())


def _naive_gnorm2(model, params, x, y):
    """||∇_θ CE(f_θ(x), y)||² one sample at a time with plain autograd (independent of signals.compute)."""
    out = []
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    for i in range(len(y)):
        ps = {n: params[n].detach().clone().double().requires_grad_() for n in names}
        logits = torch.func.functional_call(model.double(), ps, (x[i : i + 1].double(),))
        loss = torch.nn.functional.cross_entropy(logits, y[i : i + 1])
        g = torch.autograd.grad(loss, [ps[n] for n in names])
        out.append(float(sum((gi ** 2).sum() for gi in g)))
    model.float()
    return np.array(out)


def test_recorded_canary_signals(tmp_path):
    cfg = _cfg(m=12)
    train(cfg, tmp_path, quiet=True)
    c = read_canaries(tmp_path)
    fed = build_federation(cfg)
    assert (c.ids == fed.canaries.ids).all() and (c.inserted == fed.canaries.inserted).all()
    z = read_npz(round_path(tmp_path, 0), "")
    for k in CANARY_KEYS:
        assert z[k].shape == (cfg.partition.num_clients, 12) and np.isfinite(z[k]).all()
    # round 0's gradients are taken at the initial model: ||g||² of each canary with its canary label
    from fedleak.fl.canaries import rows
    from fedleak.fl.local import get_params

    x, y = rows(fed, c.ids)
    assert torch.equal(y, torch.as_tensor(c.label))
    ref = _naive_gnorm2(fed.model, get_params(fed.model), fed.data.normalize(x), y)
    np.testing.assert_allclose(z["canary_gnorm2"][0], ref, rtol=1e-4)


def test_resume_reproduces_the_canary_signals_bit_for_bit(tmp_path):
    cfg = _cfg(m=10, fl={"rounds": 3, "batch_size": 8, "lr": 0.1})
    train(cfg, tmp_path / "whole", quiet=True)
    train(cfg, tmp_path / "parts", quiet=True, stop_after=1)
    round_path(tmp_path / "parts", 0).unlink()  # a deleted round is replayed, canaries included
    train(cfg, tmp_path / "parts", quiet=True)
    for r in range(3):
        a, b = (read_npz(round_path(tmp_path / d, r), "") for d in ("whole", "parts"))
        for k in (*CANARY_KEYS, "loss", "cos"):
            assert np.array_equal(a[k], b[k], equal_nan=True), (r, k)


def test_the_stacked_engine_records_the_same_canary_signals(tmp_path):
    base = {"rounds": 2, "batch_size": 8, "lr": 0.1, "local_epochs": 2}
    train(_cfg(m=10, fl={**base, "vectorize": "off"}), tmp_path / "loop", quiet=True)
    train(_cfg(m=10, fl={**base, "vectorize": "on"}), tmp_path / "stacked", quiet=True)
    for r in range(2):
        a, b = (read_npz(round_path(tmp_path / d, r), "") for d in ("loop", "stacked"))
        for k in ("canary_loss", "canary_cos"):
            # float32 training of a few hundred steps: the engines agree to rounding (docs/architecture.md)
            np.testing.assert_allclose(a[k], b[k], rtol=2e-3, atol=2e-4)


def test_too_many_canaries_is_a_one_line_error_naming_the_key_and_the_maximum(tmp_path):
    raw = yaml.safe_load(yaml.safe_dump(tiny_config().model_dump(mode="json")))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}
    p = subprocess.run([sys.executable, "-m", "fedleak.cli", "train", str(tmp_path / "c.yaml"), "--out",
                        str(tmp_path / "run"), "--set", "audit.canaries=21"], capture_output=True, text=True, env=env)
    assert_one_error_line(p.returncode, p.stderr, "audit.canaries=21", "at most 20")
    assert not (tmp_path / "run" / "config.yaml").exists()
