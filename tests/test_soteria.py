"""Soteria against independent computations: per-feature backward passes, full Jacobians, numpy.percentile."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fedleak.defenses.gradient import GradientContext, Soteria, jacobian_rows, prune_mask, representation_fn


class TinySigmoidNet(nn.Module):
    """A 2-conv sigmoid LeNet in miniature: representation = 6*4*4 = 96 features."""

    def __init__(self, c=3, classes=5):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, 6, 5, 2, 2), nn.Sigmoid(), nn.Conv2d(6, 6, 5, 2, 2), nn.Sigmoid())
        self.fc = nn.Linear(96, classes)

    def forward(self, x):
        return self.fc(self.body(x).flatten(1))


class TinyReluNet(nn.Module):
    """ReLU + GroupNorm + max-pool features (like ConvNet-64), then two Linear layers."""

    def __init__(self, classes=4):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.GroupNorm(8, 8)
        self.hidden = nn.Linear(8 * 4 * 4, 20)
        self.head = nn.Linear(20, classes)

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.norm(self.conv(x))), 4).flatten(1)
        return self.head(F.relu(self.hidden(h)))


def _setup(net_cls=TinySigmoidNet, B=3, seed=0, **kw):
    torch.manual_seed(seed)
    model = net_cls(**kw)
    x = torch.randn(B, 3, 16, 16)
    y = torch.randint(0, 4, (B,))
    return model, x, y


def _grads(model, x, y):
    loss = F.cross_entropy(model(x), y)
    return dict(zip([n for n, _ in model.named_parameters()], torch.autograd.grad(loss, list(model.parameters()))))


def _reference_norms(model, x, layer):
    """One full per-sample Jacobian with torch.autograd.functional.jacobian, sample by sample."""
    f = representation_fn(model, layer)
    rows = []
    for b in range(x.shape[0]):
        J = torch.autograd.functional.jacobian(lambda xb: f(xb[None])[0], x[b])  # [D, *img]
        rows.append(J.flatten(1))
    return torch.stack(rows)  # [B, D, n]


@pytest.mark.parametrize("method", ["vmap", "replicate", "loop"])
@pytest.mark.parametrize("net,layer", [(TinySigmoidNet, "fc"), (TinyReluNet, "hidden"), (TinyReluNet, "head")])
def test_batched_jacobian_row_norms_equal_per_sample_jacobians(method, net, layer):
    model, x, _ = _setup(net)
    f = representation_fn(model, layer)
    r, norms = jacobian_rows(f, x, chunk_size=7, method=method)  # odd chunk size: a ragged last chunk
    J = _reference_norms(model, x, layer)
    assert torch.allclose(norms, J.norm(dim=2), rtol=1e-5, atol=1e-7)
    _, full = jacobian_rows(f, x, chunk_size=7, method=method, full=True)
    assert torch.allclose(full, J, rtol=1e-5, atol=1e-7)
    feats = torch.tensor([9, 2, 5, 0])
    _, sub = jacobian_rows(f, x, chunk_size=3, method=method, features=feats)
    assert torch.allclose(sub, J.norm(dim=2)[:, feats], rtol=1e-5, atol=1e-7)


def test_representation_is_input_of_named_linear():
    model, x, _ = _setup(TinyReluNet)
    box = []
    h = model.head.register_forward_hook(lambda m, i, o: box.append(i[0]))
    model(x)
    h.remove()
    assert torch.equal(representation_fn(model, "head")(x), box[0])
    with pytest.raises(ValueError, match="no module named"):
        representation_fn(model, "nope")


@pytest.mark.parametrize("rate", [0, 1, 10, 37.5, 60, 99, 100])
def test_mask_follows_numpy_percentile(rate):
    g = torch.Generator().manual_seed(1)
    S = torch.rand(768, generator=g, dtype=torch.float64)
    keep, tau = prune_mask(S, rate)
    ref_tau = np.percentile(S.numpy(), rate)
    assert float(tau) == pytest.approx(ref_tau, rel=1e-12, abs=1e-15)
    assert np.array_equal(keep.numpy(), ~(np.abs(S.numpy()) < ref_tau))
    assert int((~keep).sum()) == math.ceil(rate * (768 - 1) / 100)  # distinct scores


def test_mask_ties_at_threshold_are_kept_and_topk_is_exact():
    S = torch.tensor([1.0, 2.0, 2.0, 2.0, 3.0])
    keep, tau = prune_mask(S, 50)  # numpy: percentile = 2.0, only the 1.0 is strictly below
    assert float(tau) == np.percentile(S.numpy(), 50) == 2.0
    assert keep.tolist() == [False, True, True, True, True]
    keep_k, _ = prune_mask(S, 60, "topk")  # round(0.6*5) = 3 smallest, ties by index
    assert keep_k.tolist() == [False, False, False, True, True]


def test_soteria_lenet_notebook_1_percent_keeps_760_of_768():
    from fedleak.models import build_model

    torch.manual_seed(50)
    model = build_model("lenet_soteria", 10, (3, 32, 32), init="uniform")
    x = torch.rand(1, 3, 32, 32)
    y = torch.tensor([3])
    grads = _grads(model, x, y)
    ctx = GradientContext(model, x, y)
    out, info = Soteria(rate=1, denominator="notebook")(grads, ctx)
    assert info["mask"].sum().item() == 760 and info["num_features"] == 768
    assert info["pruned_fraction"] == pytest.approx(8 / 768)


@pytest.mark.parametrize("denominator", ["legacy", "notebook", "abs"])
def test_soteria_scores_mask_and_only_masked_columns_zeroed(denominator):
    model, x, y = _setup(TinySigmoidNet, B=2)
    grads = _grads(model, x, y)
    out, info = Soteria(rate=40, denominator=denominator, chunk_size=16)(grads, GradientContext(model, x, y))

    # independent score: per-feature backward passes on the representation, then numpy
    J = _reference_norms(model, x, "fc").norm(dim=2)
    r = representation_fn(model, "fc")(x).detach()
    den = {"legacy": r + 0.1, "notebook": r, "abs": r.abs() + 1e-6}[denominator]
    S = (J / den).sum(0).numpy()
    keep_ref = ~(np.abs(S) < np.percentile(S, 40))
    assert np.array_equal(info["mask"].numpy(), keep_ref)
    assert np.allclose(info["scores"].numpy(), S, rtol=1e-5)

    w = out["fc.weight"]
    assert torch.equal(w[:, ~torch.from_numpy(keep_ref)], torch.zeros_like(w[:, ~torch.from_numpy(keep_ref)]))
    assert torch.equal(w[:, torch.from_numpy(keep_ref)], grads["fc.weight"][:, torch.from_numpy(keep_ref)])
    for name in grads:
        if name != "fc.weight":
            assert torch.equal(out[name], grads[name]), name  # bias and conv gradients untouched
    assert info["pruned_fraction"] == pytest.approx(math.ceil(0.4 * 95) / 96)


def test_soteria_defends_intermediate_linear_by_name():
    model, x, y = _setup(TinyReluNet, B=2)
    grads = _grads(model, x, y)
    out, info = Soteria(rate=50, layer="hidden", denominator="abs")(grads, GradientContext(model, x, y))
    assert info["param"] == "hidden.weight" and info["num_features"] == 128
    zero_cols = (out["hidden.weight"] == 0).all(0)
    assert torch.equal(zero_cols, ~info["mask"] | (grads["hidden.weight"] == 0).all(0))
    assert torch.equal(out["head.weight"], grads["head.weight"])


def test_soteria_per_sample_masks_equal_masking_each_samples_gradient():
    model, x, y = _setup(TinySigmoidNet, B=3)
    grads = _grads(model, x, y)
    out, info = Soteria(rate=30, reduction="per-sample")(grads, GradientContext(model, x, y))
    mask = info["mask"]
    assert mask.shape == (3, 96)
    # independent: each sample's own fc.weight gradient (1/B of a mean loss), masked by its own mask
    expected = torch.zeros_like(grads["fc.weight"])
    for b in range(3):
        gb = torch.autograd.grad(F.cross_entropy(model(x[b : b + 1]), y[b : b + 1]) / 3, model.fc.weight)[0]
        expected += gb * mask[b].float()[None]
    assert torch.allclose(out["fc.weight"], expected, atol=1e-7)
    for b in range(3):  # each row of the mask follows numpy.percentile on that sample's scores
        s = info["scores"][b].numpy()
        assert np.array_equal(mask[b].numpy(), ~(np.abs(s) < np.percentile(s, 30)))


def test_soteria_exact_variant_matches_pseudo_inverse():
    model, x, y = _setup(TinySigmoidNet, B=2)
    sot = Soteria(rate=50, method="exact", denominator="abs", ridge=0.0)
    v, r = sot.scores(GradientContext(model, x, y))
    J = _reference_norms(model, x, "fc").double()  # [B, 96, 768], full row rank
    for b in range(2):
        pinv = np.linalg.pinv(J[b].numpy())  # [n, D]
        dx = np.abs(r[b].double().numpy()) * np.linalg.norm(pinv, axis=0)  # ‖r_i J⁺ e_i‖
        assert np.allclose(v[b].double().numpy(), 1.0 / (dx + 1e-6 * np.linalg.norm(pinv, axis=0)), rtol=1e-4)


def test_soteria_exact_equals_approx_when_jacobian_rows_are_orthogonal():
    # r = x ⊙ a: the Jacobian is diagonal, so (J Jᵀ)⁻¹ is diagonal and both variants coincide
    class Diag(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Parameter(torch.linspace(0.5, 2.0, 12))
            self.fc = nn.Linear(12, 3)

        def forward(self, x):
            return self.fc(x.flatten(1) * self.a)

    torch.manual_seed(0)
    model = Diag()
    x = torch.rand(2, 1, 3, 4) + 0.1
    ctx = GradientContext(model, x, torch.tensor([0, 2]))
    va, _ = Soteria(method="approx").scores(ctx)
    ve, _ = Soteria(method="exact", ridge=0.0).scores(ctx)
    assert torch.allclose(va, ve, rtol=1e-5)


def test_soteria_on_fedavg_update_and_unknown_options():
    model, x, y = _setup(TinySigmoidNet, B=2)
    grads = _grads(model, x, y)
    ctx = GradientContext(model, x, y, kind="update")
    out, info = Soteria(rate=20)(grads, ctx)
    assert (out["fc.weight"][:, ~info["mask"]] == 0).all()
    with pytest.raises(ValueError, match="per-sample"):
        Soteria(reduction="per-sample")(grads, ctx)
    with pytest.raises(ValueError, match="denominator"):
        Soteria(denominator="bogus")(grads, GradientContext(model, x, y))
