"""fedleak.flower.audit: the flwr-free recorder behind the Flower wrappers (runs without the extra)."""

import numpy as np
import pytest
import torch

from conftest import tiny_config
from fedleak.config import ConfigError
from fedleak.flower.audit import FlowerAudit, aggregate_only, params_from_arrays
from fedleak.signals.loading import load_signals
from fedleak.signals.store import read_meta, read_metrics


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)
        self.register_buffer("scale", torch.ones(1))

    def forward(self, x):
        return self.lin(x) * self.scale


def test_params_from_arrays_by_name_by_position_and_errors():
    net = _Net()
    w, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.array([7.0, 8.0], np.float32)
    # by name: extra state_dict entries (buffers) are ignored, values copied
    got = params_from_arrays(net, {"lin.weight": w, "lin.bias": b, "scale": np.ones(1, np.float32)})
    assert list(got) == ["lin.weight", "lin.bias"]
    assert torch.equal(got["lin.weight"], torch.from_numpy(w)) and torch.equal(got["lin.bias"], torch.from_numpy(b))
    w[0, 0] = 99.0
    assert got["lin.weight"][0, 0] == 0.0  # a copy, not a view of the caller's array
    # by position (state_dict order: own buffer first, then the child's parameters) and as the keys
    # "0", "1", ... of ArrayRecord(list_of_ndarrays)
    assert list(net.state_dict()) == ["scale", "lin.weight", "lin.bias"]
    pos = [np.ones(1, np.float32), np.zeros((2, 3), np.float32), np.ones(2, np.float32)]
    for arrays in (pos, {str(i): a for i, a in enumerate(pos)}):
        got = params_from_arrays(net, arrays)
        assert torch.equal(got["lin.bias"], torch.ones(2)) and torch.equal(got["lin.weight"], torch.zeros(2, 3))
    with pytest.raises(ConfigError, match="positional arrays"):
        params_from_arrays(net, pos[:2])
    with pytest.raises(ConfigError, match="shape"):
        params_from_arrays(net, [np.ones(1, np.float32), np.zeros((3, 2), np.float32), np.ones(2, np.float32)])
    with pytest.raises(ConfigError, match="shape"):
        params_from_arrays(net, {"lin.weight": w.T, "lin.bias": b})
    with pytest.raises(ConfigError, match="lack the model's parameters"):
        params_from_arrays(net, {"fc.weight": w, "fc.bias": b})


def test_aggregate_only_detects_secure_aggregation_views():
    g = {"a": torch.zeros(3)}
    agg = {"a": torch.tensor([1.0, 2.0, 3.0])}
    assert aggregate_only({0: agg, 1: {"a": agg["a"].clone()}, 2: {"a": agg["a"].clone()}}, g)
    assert not aggregate_only({0: agg, 1: {"a": agg["a"] + 1e-6}}, g)  # real, different updates
    assert not aggregate_only({0: g, 1: {"a": g["a"].clone()}}, g)  # nobody moved (lr 0): genuine uploads
    assert not aggregate_only({0: agg}, g)  # one client: its update is the aggregate, nothing hidden


def test_manual_rounds_reproduce_engine_and_reject_bad_input(tmp_path):
    """Feeding FlowerAudit what the engine's clients upload (in scrambled order) rebuilds `fedleak train`'s run."""
    from fedleak.fl.federation import build_federation
    from fedleak.fl.round import aggregate, client_update
    from fedleak.fl.simulation import train
    from fedleak.seeding import participants
    from fedleak.fl.schedule import lr_at

    cfg = tiny_config(partition__num_clients=4, fl__participation=0.5, fl__rounds=2)
    # bit for bit against the engine's per-client loop, which is what the ClientApp (client_update) runs
    ref = train(cfg.model_copy(update={"fl": cfg.fl.model_copy(update={"vectorize": "off"})}), tmp_path / "ref",
                quiet=True)
    audit = FlowerAudit(cfg, tmp_path / "fl", engine="test")
    fed = build_federation(cfg)
    gp = audit.initial_params()
    init = {n: v.clone() for n, v in gp.items()}
    for rnd in range(cfg.fl.rounds):
        lr = lr_at(cfg.fl.schedule, cfg.fl.lr, rnd, cfg.fl.rounds)
        audit.global_sent(rnd, gp, lr)
        ups, losses = {}, {}
        for k in reversed(participants(cfg, rnd)):
            ups[k], losses[k], _ = client_update(fed, k, rnd, lr, gp)
        gp = aggregate(ups, fed.weights)
        audit.round_finished(rnd, ups, gp, {k: {"train_loss": v} for k, v in losses.items()})
    a, b = load_signals(ref), load_signals(tmp_path / "fl")
    for key in ("loss", "dot", "cos", "diff", "gnorm2", "dnorm2", "participated", "ids"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)
    for ra, rb in zip(read_metrics(ref), read_metrics(tmp_path / "fl")):
        for key in ("round", "lr", "test_acc", "test_loss", "client_train_loss", "client_test_acc"):
            assert ra[key] == rb[key], key
    fin_a = torch.load(ref / "final_model.pt", weights_only=True)
    fin_b = torch.load(tmp_path / "fl" / "final_model.pt", weights_only=True)
    assert all(torch.equal(fin_a[n], fin_b[n]) for n in fin_a)
    assert read_meta(tmp_path / "fl")["engine"] == "test"
    assert all(torch.equal(audit.initial_params()[n], init[n]) for n in init)  # a snapshot, not the live model

    with pytest.raises(ConfigError, match="cannot be resumed"):
        FlowerAudit(cfg, tmp_path / "fl")
    other = FlowerAudit(cfg, tmp_path / "other")
    other.global_sent(0, audit.initial_params())
    with pytest.raises(ConfigError, match="outside 0..3"):
        other.round_finished(0, {7: gp}, None)
    with pytest.raises(RuntimeError, match="no global model"):
        other.round_finished(1, {0: gp}, None)


def test_num_rounds_override_sets_recorded_rounds(tmp_path):
    cfg = tiny_config(fl__rounds=3, signals={"every": 2})
    audit = FlowerAudit(cfg, tmp_path / "r", num_rounds=6)
    assert audit.cfg.fl.rounds == 6 and audit.recorded == [1, 3, 5]
    assert "rounds: 6" in (tmp_path / "r" / "config.yaml").read_text()


def test_flower_sim_without_flwr_says_how_to_install(tmp_path, monkeypatch):
    """The CLI registers flower-sim without flwr and explains the extra when it is missing."""
    import sys

    from typer.testing import CliRunner

    from fedleak.cli import app

    for name in [m for m in sys.modules if m == "flwr" or m.startswith(("flwr.", "fedleak.flower."))]:
        if name != "fedleak.flower.commands":
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "flwr", None)  # "not installed"
    res = CliRunner().invoke(app, ["flower-sim", "digits-quick", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2
    assert "fedleak[flower]" in res.output
    assert not (tmp_path / "r").exists()
