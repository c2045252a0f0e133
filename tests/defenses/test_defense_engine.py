"""Defenses inside the engine: signals are computed on what the server receives (spec W4), client subsets."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import assert_within, longest_sum, rounding_tol, tiny_config
from fedleak.defenses.update import Quant, Sparse
from fedleak.fl.federation import build_federation
from fedleak.fl.simulation import train
from fedleak.signals.loading import load_signals


@pytest.mark.numerics
@pytest.mark.parametrize("name,params,cls", [("sparse", {"p": 0.9, "min_numel": 50}, Sparse),
                                             ("quant", {"bits": 2}, Quant)])
def test_signals_use_the_uploaded_model(tmp_path, monkeypatch, name, params, cls):
    cfg = tiny_config(fl__rounds=1, signals__rounds=[0], defense={"name": name, "params": params})
    fed = build_federation(cfg)
    theta0 = {n: p.detach().clone() for n, p in fed.model.named_parameters()}
    pairs = []
    orig = cls.transform_update

    def spy(self, delta, gen, ctx=None):
        out = orig(self, delta, gen, ctx)
        pairs.append(({n: v.clone() for n, v in delta.items()}, {n: v.clone() for n, v in out.items()}))
        return out

    monkeypatch.setattr(cls, "transform_update", spy)
    run = train(cfg, tmp_path / "r", quiet=True)
    sig = load_signals(run)
    assert len(pairs) == cfg.partition.num_clients
    d = fed.data
    from fedleak.signals.candidates import gather

    x, y = gather(sig.cand_ids, len(d.train), d.train.x, d.train.y, d.test.x, d.test.y)
    xn = d.normalize(x).double()
    model = fed.model.double()  # the reference losses in float64

    def losses(params):
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(params[n])
            z = model(xn)
            loss = F.cross_entropy(z, y, reduction="none")
            # float32 logits (longest_sum terms) at their scale, through log-softmax
            return loss.numpy(), rounding_tol(longest_sum(model, xn), (1 + loss + 2 * z.abs().amax(1)).numpy())

    for k, (dense, up) in enumerate(pairs):  # clients run in id order
        uploaded = {n: theta0[n] - up[n] for n in up}
        local = {n: theta0[n] - dense[n] for n in dense}
        ref, tol = losses(uploaded)
        assert_within(sig.loss[0, k], ref, tol, f"client {k} loss")
        ref_local, _ = losses(local)
        assert (np.abs(sig.loss[0, k] - ref_local) > 10 * tol).any()  # the dense local model is clearly another
        dn2 = sum(float((v.double() ** 2).sum()) for v in up.values())
        assert sig.dnorm2[0, k] == pytest.approx(dn2, rel=1e-5)
        if name == "sparse":
            assert sum(int((v != 0).sum()) for v in up.values()) < sum(int((v != 0).sum()) for v in dense.values())


def test_defense_applies_only_to_listed_clients(tmp_path, monkeypatch):
    cfg = tiny_config(fl__rounds=2, signals__rounds=[1],
                      defense={"name": "sparse", "params": {"p": 0.99, "min_numel": 0}, "clients": [1]})
    calls = []
    orig = Sparse.transform_update
    monkeypatch.setattr(Sparse, "transform_update", lambda self, d, g, c=None: calls.append(1) or orig(self, d, g, c))
    run = train(cfg, tmp_path / "r", quiet=True)
    assert len(calls) == 2  # one client x two rounds
    sig = load_signals(run)
    # client 1's upload is ~1% of its entries: much smaller norm than the undefended clients'
    assert sig.dnorm2[0, 1] < 0.5 * min(sig.dnorm2[0, 0], sig.dnorm2[0, 2])


@pytest.mark.parametrize("defense", [
    {"name": "perturb", "params": {"sigma": 0.01}},
    {"name": "perturb", "params": {"sigma": 0.5, "clip": 1.0}},
    {"name": "mixup", "params": {"alpha": 0.5}},
    {"name": "augment", "params": {"recipe": "fedmia"}},
    {"name": "augment+sampling", "params": {"p": 0.5}},
    {"name": "instahide", "params": {"k": 2}},
    {"name": "quant", "params": {"bits": 4, "rounding": "stochastic"}},
])
def test_every_defense_trains_deterministically(tmp_path, defense):
    cfg = tiny_config(fl__rounds=2, signals__rounds=[1], defense=defense)
    a = load_signals(train(cfg, tmp_path / "a", quiet=True))
    b = load_signals(train(cfg, tmp_path / "b", quiet=True))
    np.testing.assert_array_equal(a.loss, b.loss)
    assert np.isfinite(a.loss).all() and np.isfinite(a.cos).all()


def test_gradient_defenses_train_fedavg_through_the_one_kernel(tmp_path):
    """Soteria / pruning are ordinary defenses of `fedleak train` (issue #11): full global pruning freezes the
    global model; Soteria zeroes the pruned columns of the defended layer's update at the global parameters."""
    from fedleak.defenses.base import UpdateContext
    from fedleak.defenses.gradient import GradientDefense, Soteria
    from fedleak.fl.local import get_params
    from fedleak.fl.round import client_update
    from fedleak.models.functional import soft_cross_entropy

    cfg = tiny_config(fl__rounds=2, signals__rounds=[1], defense={"name": "prune-global", "params": {"rate": 100}})
    fed = build_federation(cfg)
    theta0 = get_params(fed.model)
    run = train(cfg, tmp_path / "frozen", quiet=True)
    final = torch.load(run / "final_model.pt", weights_only=True)
    assert np.all(load_signals(run).dnorm2[0] == 0)  # every upload is exactly the global model
    for n, v in theta0.items():  # FedAvg's weighted sum of identical uploads only rounds (a few ulp)
        torch.testing.assert_close(final[n], v, rtol=4 * torch.finfo(torch.float32).eps, atol=0)

    cfg = tiny_config(fl__rounds=1, defense={"name": "soteria", "params": {"rate": 50}})
    fed = build_federation(cfg)
    assert isinstance(fed.defense, GradientDefense) and fed.defense.needs_context
    g0 = get_params(fed.model)
    up, _, _ = client_update(fed, 0, 0, cfg.fl.lr, g0)
    delta = {n: g0[n] - up[n] for n in g0}
    info = fed.defense.last_info
    assert info["param"] == "fc.weight" and 0.4 < info["pruned_fraction"] <= 0.6
    assert (delta["fc.weight"][:, ~info["mask"]] == 0).all()
    assert (delta["fc.weight"][:, info["mask"]] != 0).any()
    # the mask is Soteria's on the client's (normalised) data of the round at the global parameters
    idx = torch.as_tensor(fed.clients[0], dtype=torch.long)
    ctx = UpdateContext(model=fed.model, x=fed.data.normalize(fed.data.train.x[idx]), y=fed.data.train.y[idx],
                        params=g0, loss_fn=soft_cross_entropy, kind="update")
    undefended = tiny_config(fl__rounds=1)
    dense_up, _, _ = client_update(build_federation(undefended), 0, 0, cfg.fl.lr, g0)
    dense = {n: g0[n] - dense_up[n] for n in g0}
    expect, ref = Soteria(rate=50)(dense, ctx)
    assert torch.equal(ref["mask"], info["mask"])
    for n in g0:
        torch.testing.assert_close(delta[n], expect[n], rtol=0, atol=0)
