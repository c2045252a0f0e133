"""Defenses inside the engine: signals are computed on what the server receives (spec W4), client subsets."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import assert_within, longest_sum, rounding_tol, tiny_config
from fedleak.defenses.update import Quant, Sparse
from fedleak.fl.simulation import build_federation, train
from fedleak.signals.store import load_signals


@pytest.mark.numerics
@pytest.mark.parametrize("name,params,cls", [("sparse", {"p": 0.9, "min_numel": 50}, Sparse),
                                             ("quant", {"bits": 2}, Quant)])
def test_signals_use_the_uploaded_model(tmp_path, monkeypatch, name, params, cls):
    cfg = tiny_config(fl__rounds=1, signals__rounds=[0], defense={"name": name, "params": params})
    fed = build_federation(cfg)
    theta0 = {n: p.detach().clone() for n, p in fed.model.named_parameters()}
    pairs = []
    orig = cls.transform_update

    def spy(self, delta, gen):
        out = orig(self, delta, gen)
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
    monkeypatch.setattr(Sparse, "transform_update", lambda self, d, g: calls.append(1) or orig(self, d, g))
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
