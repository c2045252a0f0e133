"""BatchNorm models in the FedAvg engine: buffers travel with the uploads, the server averages them (or FedBN keeps
them local), checkpoints carry them, and the signals use the running statistics the server received."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import assert_within, longest_sum, rounding_tol, tiny_config
from fedleak.config import ConfigError
from fedleak.fl.federation import build_federation
from fedleak.fl.round import aggregate, client_update
from fedleak.fl.simulation import train
from fedleak.models.functional import batchnorm_state_names
from fedleak.signals.candidates import gather
from fedleak.signals.loading import load_signals

SYN = {"n_train": 120, "n_test": 40, "num_classes": 4, "channels": 1, "size": 12}
BN_MODEL = {"name": "convnet64", "options": {"norm": "batch", "width": 4}}


def bn_config(**over):
    return tiny_config(model=BN_MODEL, data__synthetic=SYN, **over)


def test_aggregate_buffers_hand_computed():
    w = np.array([1.0, 3.0, 6.0])
    up = {
        k: {
            "bn.weight": torch.tensor([float(k), 1.0]),
            "bn.running_mean": torch.tensor([float(k), -2.0 * k]),
            "bn.running_var": torch.tensor([1.0 + k, 4.0]),
            "bn.num_batches_tracked": torch.tensor(5 + 2 * k),
        }
        for k in (2, 0, 1)
    }
    agg = aggregate(up, w)
    # hand-computed: weights 1/10, 3/10, 6/10 for clients 0, 1, 2
    assert torch.allclose(agg["bn.running_mean"], torch.tensor([1.5, -3.0]))
    assert torch.allclose(agg["bn.running_var"], torch.tensor([2.5, 4.0]))
    assert torch.allclose(agg["bn.weight"], torch.tensor([1.5, 1.0]))
    # num_batches_tracked: the maximum over the uploads, still an integer
    assert agg["bn.num_batches_tracked"].dtype == torch.int64 and int(agg["bn.num_batches_tracked"]) == 9
    part = aggregate({0: up[0], 1: up[1]}, w)
    assert torch.allclose(part["bn.running_mean"], torch.tensor([0.75, -1.5]))
    assert int(part["bn.num_batches_tracked"]) == 7


def test_one_local_step_updates_running_stats_by_the_momentum_formula():
    """One SGD step on the whole client batch: BN's first layer sees conv0(x) at the global weights, so its running
    statistics become 0.9·init + 0.1·(batch mean, unbiased batch variance), computed here directly."""
    cfg = bn_config(fl__batch_size=64, fl__local_epochs=1)
    fed = build_federation(cfg)
    g0 = {**{n: p.detach().clone() for n, p in fed.model.named_parameters()},
          **{n: b.detach().clone() for n, b in fed.model.named_buffers()}}
    up, _, _ = client_update(fed, 0, 0, cfg.fl.lr, g0)
    x = fed.data.normalize(fed.data.train.x[torch.as_tensor(fed.clients[0])]).double()
    assert len(x) <= 64  # one step
    z = F.conv2d(x, g0["convs.0.weight"].double(), g0["convs.0.bias"].double(), padding=1)
    mean = z.mean(dim=(0, 2, 3))
    var = z.var(dim=(0, 2, 3), unbiased=True)
    n, zmax = 9 + len(x) * 144, float(z.abs().max())  # the conv's fan-in, then the batch reduction
    assert_within(up["norms.0.running_mean"], 0.1 * mean, rounding_tol(n, zmax), "running_mean")
    assert_within(up["norms.0.running_var"], 0.9 + 0.1 * var, rounding_tol(n, 1.0 + zmax**2), "running_var")
    assert int(up["norms.0.num_batches_tracked"]) == 1
    assert set(up) == set(g0)  # the upload carries every parameter and buffer


def _start_state(fed):
    return {**{n: p.detach().clone() for n, p in fed.model.named_parameters()},
            **{n: b.detach().clone() for n, b in fed.model.named_buffers()}}


def test_fedavg_round_averages_buffers_by_example_count(tmp_path):
    cfg = bn_config(partition__scheme="dirichlet", partition__beta=0.5, partition__min_size=5, fl__rounds=2)
    fed = build_federation(cfg)
    g0 = _start_state(fed)
    run = train(cfg, tmp_path / "r", quiet=True, stop_after=1)
    g1 = torch.load(run / "checkpoint.pt", weights_only=True)["global"]
    ups = {k: client_update(build_federation(cfg), k, 0, cfg.fl.lr, g0)[0] for k in range(3)}
    w = fed.weights / fed.weights.sum()
    assert set(g1) == set(g0)
    for n in g0:
        if n.endswith("num_batches_tracked"):
            assert int(g1[n]) == max(int(u[n]) for u in ups.values())
            continue
        ref = sum(w[k] * ups[k][n].double() for k in range(3))  # float64 weighted mean
        assert_within(g1[n], ref, rounding_tol(3, float(ref.abs().max()) + 1e-30), n)
    assert not torch.equal(g1["norms.0.running_mean"], g0["norms.0.running_mean"])


def test_fedbn_keeps_batchnorm_local(tmp_path):
    cfg = bn_config(fl__bn="local", fl__rounds=2)
    fed = build_federation(cfg)
    g0 = _start_state(fed)
    bn = batchnorm_state_names(fed.model)
    assert {"norms.0.weight", "norms.0.bias", "norms.0.running_mean", "norms.0.running_var",
            "norms.0.num_batches_tracked"} <= bn
    run = train(cfg, tmp_path / "r", quiet=True, stop_after=1)
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    # the server never received BatchNorm state: its copy is still the initial one
    for n in bn:
        assert torch.equal(ck["global"][n], g0[n]), n
    store: dict = {}
    ups = {k: client_update(build_federation(cfg), k, 0, cfg.fl.lr, g0, bn_states=store)[0] for k in range(3)}
    for k, u in ups.items():
        assert not (set(u) & bn), "a FedBN upload must not contain BatchNorm entries"
        assert set(store[k]) == bn
        for n in bn:  # the checkpoint keeps each client's private BatchNorm state
            assert torch.equal(ck["local_bn"][k][n], store[k][n]), (k, n)
    w = fed.weights / fed.weights.sum()
    for n in set(g0) - bn:
        ref = sum(w[k] * ups[k][n].double() for k in range(3))
        assert_within(ck["global"][n], ref, rounding_tol(3, float(ref.abs().max()) + 1e-30), n)
    # round 1: client 0 starts from the global non-BN parameters and *its own* BatchNorm state
    f2 = build_federation(cfg)
    mine = dict(store)
    up1, _, _ = client_update(f2, 0, 1, cfg.fl.lr, ck["global"], bn_states=mine)
    manual = {k: dict(v) for k, v in store.items()}
    other = {k: dict(v) for k, v in store.items()}
    other[0] = {n: g0[n] for n in bn}  # the same round from the initial BN state instead
    up_init, _, _ = client_update(build_federation(cfg), 0, 1, cfg.fl.lr, ck["global"], bn_states=other)
    assert not torch.equal(up1["linear.weight"], up_init["linear.weight"])
    assert set(mine[0]) == bn and not torch.equal(mine[0]["norms.0.running_mean"], manual[0]["norms.0.running_mean"])


def test_client_update_fedbn_without_store_is_refused():
    cfg = bn_config(fl__bn="local")
    fed = build_federation(cfg)
    with pytest.raises(ValueError, match="bn_states"):
        client_update(fed, 0, 0, cfg.fl.lr, _start_state(fed))


@pytest.mark.parametrize("mode", ["fedavg", "local"])
def test_resume_equals_uninterrupted(tmp_path, mode):
    cfg = bn_config(fl__bn=mode, fl__rounds=4, partition__num_clients=4, fl__participation=0.5)
    ref = train(cfg, tmp_path / "ref", quiet=True)
    run = tmp_path / "split"
    train(cfg, run, quiet=True, stop_after=2)
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ck["round"] == 1 and (("local_bn" in ck) == (mode == "local"))
    train(cfg, run, quiet=True)
    a, b = load_signals(ref), load_signals(run)
    for k in ("loss", "dot", "cos", "diff", "gnorm2", "ids", "dnorm2"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)
    fa = torch.load(ref / "final_model.pt", weights_only=True)
    fb = torch.load(run / "final_model.pt", weights_only=True)
    assert fa.keys() == fb.keys() and any("running_var" in n for n in fa)
    for n in fa:
        assert torch.equal(fa[n], fb[n]), n


def test_signals_use_the_uploaded_running_statistics_in_eval_mode(tmp_path):
    """The recorded loss of client k is the per-sample CE of k's uploaded model (parameters *and* running
    statistics) in eval mode, recomputed with a plain nn.Module in float64."""
    cfg = bn_config(fl__rounds=1)
    fed = build_federation(cfg)
    g0 = _start_state(fed)
    run = train(cfg, tmp_path / "r", quiet=True)
    sig = load_signals(run)
    d = fed.data
    x, y = gather(sig.cand_ids, len(d.train), d.train.x, d.train.y, d.test.x, d.test.y)
    x = d.normalize(x).double()
    for k in range(3):
        up = client_update(build_federation(cfg), k, 0, cfg.fl.lr, g0)[0]
        net = copy.deepcopy(fed.model).double()
        net.load_state_dict({n: v.double() if v.is_floating_point() else v for n, v in up.items()})
        with torch.no_grad():
            ref = F.cross_entropy(net.eval()(x), y, reduction="none")
        assert_within(sig.loss[0, k], ref, rounding_tol(longest_sum(fed.model, x[:1].float()), 1.0 + ref), f"loss {k}")
        # with the *global* running statistics instead, the losses differ: the uploaded ones were used
        net.load_state_dict({n: (g0[n] if "running" in n else up[n]).double() if up[n].is_floating_point() else up[n]
                             for n in up})
        with torch.no_grad():
            other = F.cross_entropy(net.eval()(x), y, reduction="none")
        assert float((other - ref).abs().max()) > 1e-3


def test_config_hash_unchanged_at_default_and_local_recorded():
    from fedleak.config import dump_config

    assert "bn:" not in dump_config(tiny_config())
    assert "bn: local" in dump_config(tiny_config(fl__bn="local"))


def test_dpsgd_with_batchnorm_refused():
    cfg = bn_config(defense={"name": "dpsgd"})
    with pytest.raises(ConfigError, match="BatchNorm"):
        build_federation(cfg)


def test_flower_audit_refuses_models_with_buffers(tmp_path):
    from fedleak.flower.audit import FlowerAudit

    with pytest.raises(ConfigError, match="buffers") as e:
        FlowerAudit(bn_config(), tmp_path / "fl")
    assert "fedleak train" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "fl" / "config.yaml").exists()  # refused before the run directory was written


def test_checkpoint_with_foreign_client_bn_state_is_a_one_line_error(tmp_path):
    from fedleak.signals.store import StoreError

    cfg = bn_config(fl__bn="local", fl__rounds=3)
    run = train(cfg, tmp_path / "r", quiet=True, stop_after=1)
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    ck["local_bn"][0]["norms.0.running_mean"] = torch.zeros(3)  # another model's shape
    torch.save(ck, run / "checkpoint.pt")
    with pytest.raises(StoreError, match="local_bn") as e:
        train(cfg, run, quiet=True)
    assert "checkpoint.pt" in str(e.value) and "\n" not in str(e.value)


def test_stacked_engine_refuses_bn_and_auto_falls_back_saying_why():
    from fedleak.fl.simulation import choose_engine

    with pytest.raises(ConfigError, match="BatchNorm2d"):
        choose_engine(build_federation(bn_config(fl__vectorize="on")))
    use, why = choose_engine(build_federation(bn_config(fl__vectorize="auto")))
    assert not use and "one by one" in why and "BatchNorm2d" in why
