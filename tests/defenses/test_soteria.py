"""Soteria against independent computations: per-feature backward passes, full Jacobians, numpy.percentile."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from conftest import DiagModel, assert_within, longest_sum, rounding_tol
from fedleak.defenses.gradient import GradientContext, Soteria, jacobian_rows, prune_mask, representation_fn

pytestmark = pytest.mark.numerics


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
    """One full per-sample Jacobian with torch.autograd.functional.jacobian, sample by sample, in float64."""
    model, x = copy.deepcopy(model).double(), x.double()
    f = representation_fn(model, layer)
    rows = []
    for b in range(x.shape[0]):
        J = torch.autograd.functional.jacobian(lambda xb: f(xb[None])[0], x[b])  # [D, *img]
        rows.append(J.flatten(1))
    return torch.stack(rows)  # [B, D, n]


def assert_same_selection(keep: np.ndarray, keep_ref: np.ndarray, S: np.ndarray, tol: np.ndarray) -> None:
    """The mask prunes the m smallest of distinct scores. Scores computed within ``tol`` of the reference ``S`` give
    exactly the reference's decision for every feature more than 2·max(tol) below its largest pruned score or above
    its smallest kept one; the few in between may swap with a neighbour, but the number pruned is exact."""
    t = 2 * float(np.max(tol))
    sure = (S < S[~keep_ref].max() - t) | (S > S[keep_ref].min() + t)
    assert (~sure).sum() <= 4, "too many scores within rounding of the threshold for this check to mean much"
    assert np.array_equal(keep[sure], keep_ref[sure])
    assert int((~keep).sum()) == int((~keep_ref).sum())


def _jacobian_tols(model, x, J):
    """Float32 rounding tolerances of Jacobian entries (sums of at most longest_sum terms, at the scale of the
    largest entry) and of row norms (those entry errors plus a sum of n squares)."""
    n = longest_sum(model, x)
    entry = rounding_tol(n, float(J.abs().max()))
    norms = J.norm(dim=2)
    return entry, rounding_tol(n, norms) + rounding_tol(J.shape[2], norms) + entry


@pytest.mark.parametrize("method", ["vmap", "replicate", "loop"])
@pytest.mark.parametrize("net,layer", [(TinySigmoidNet, "fc"), (TinyReluNet, "hidden"), (TinyReluNet, "head")])
def test_batched_jacobian_row_norms_equal_per_sample_jacobians(method, net, layer):
    model, x, _ = _setup(net)
    f = representation_fn(model, layer)
    r, norms = jacobian_rows(f, x, chunk_size=7, method=method)  # odd chunk size: a ragged last chunk
    J = _reference_norms(model, x, layer)
    entry_tol, norm_tol = _jacobian_tols(model, x, J)
    assert_within(norms, J.norm(dim=2), norm_tol, "row norms")
    _, full = jacobian_rows(f, x, chunk_size=7, method=method, full=True)
    assert_within(full, J, entry_tol, "full Jacobian")
    feats = torch.tensor([9, 2, 5, 0])
    _, sub = jacobian_rows(f, x, chunk_size=3, method=method, features=feats)
    assert_within(sub, J.norm(dim=2)[:, feats], norm_tol[:, feats], "selected row norms")


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

    # independent score: per-feature backward passes on the representation in float64, then numpy
    Jfull = _reference_norms(model, x, "fc")
    J = Jfull.norm(dim=2)
    r = representation_fn(copy.deepcopy(model).double(), "fc")(x.double()).detach()
    den = {"legacy": r + 0.1, "notebook": r, "abs": r.abs() + 1e-6}[denominator]
    S = (J / den).sum(0).numpy()
    # float32 score S = Σ_b ‖J_b‖ / den_b: the row-norm error over den, plus the error of r (a sum over the
    # longest_sum, at the scale of the largest feature) amplified by ‖J‖ / den²
    _, norm_tol = _jacobian_tols(model, x, Jfull)
    r_tol = rounding_tol(longest_sum(model, x), float(r.abs().max()))
    S_tol = (norm_tol / den.abs() + J * r_tol / den**2).sum(0).numpy()
    assert_within(info["scores"], S, S_tol, "scores")
    keep_ref = ~(np.abs(S) < np.percentile(S, 40))
    assert_same_selection(info["mask"].numpy(), keep_ref, S, S_tol)

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
    m64 = copy.deepcopy(model).double()
    expected = expected.double()
    for b in range(3):
        gb = torch.autograd.grad(F.cross_entropy(m64(x[b : b + 1].double()), y[b : b + 1]) / 3, m64.fc.weight)[0]
        expected += gb * mask[b].double()[None]
    tol = rounding_tol(longest_sum(model, x), float(expected.abs().max()))
    assert_within(out["fc.weight"], expected, tol, "masked per-sample fc.weight gradients")
    for b in range(3):  # each row of the mask follows numpy.percentile on that sample's scores
        s = info["scores"][b].numpy()
        assert np.array_equal(mask[b].numpy(), ~(np.abs(s) < np.percentile(s, 30)))


def test_soteria_exact_variant_matches_pseudo_inverse():
    model, x, y = _setup(TinySigmoidNet, B=2)
    sot = Soteria(rate=50, method="exact", denominator="abs", ridge=0.0)
    v, r = sot.scores(GradientContext(model, x, y))
    J = _reference_norms(model, x, "fc")  # [B, 96, 768] in float64, full row rank
    r64 = representation_fn(copy.deepcopy(model).double(), "fc")(x.double()).detach()
    n = longest_sum(model, x)
    for b in range(2):
        sv = np.linalg.svd(J[b].numpy(), compute_uv=False)
        pinv = np.linalg.pinv(J[b].numpy())  # [n, D]
        dx = np.abs(r64[b].numpy()) * np.linalg.norm(pinv, axis=0)  # ‖r_i J⁺ e_i‖
        ref = 1.0 / (dx + 1e-6 * np.linalg.norm(pinv, axis=0))
        # the float32 Jacobian's relative error (a longest_sum-term sum) moves ‖J⁺e_i‖ by up to κ(J) times as much;
        # r's own error is divided by |r| (the "abs" denominator keeps it away from 0)
        rel = rounding_tol(n, sv[0] / sv[-1]) + rounding_tol(n, float(r64.abs().max()) / np.abs(r64[b].numpy()))
        assert_within(v[b], ref, rel * np.abs(ref), f"sample {b}")


def test_soteria_exact_equals_approx_when_jacobian_rows_are_orthogonal():
    # r = x ⊙ a: the Jacobian is diagonal, so (J Jᵀ)⁻¹ is diagonal and both variants coincide
    torch.manual_seed(0)
    model = DiagModel()
    x = torch.rand(2, 1, 3, 4) + 0.1
    ctx = GradientContext(model, x, torch.tensor([0, 2]))
    va, _ = Soteria(method="approx").scores(ctx)
    ve, _ = Soteria(method="exact", ridge=0.0).scores(ctx)
    # the same float32 Jacobian (exact: each row has one entry a_i) through two formulas: no sums, only the
    # rounding of a few operations (n = 1)
    assert_within(va, ve, rounding_tol(1, ve.abs()), "approx vs exact")


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
