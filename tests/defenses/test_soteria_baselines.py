"""Soteria's baselines: gradient pruning (per-tensor percentile, global top-k) and DP noise."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from conftest import assert_within, longest_sum, rounding_tol
from fedleak.defenses import build_transform
from fedleak.defenses.gradient import Compose, DPNoise, GradientContext, GradientPruning, Soteria


def _grads(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": torch.randn(4, 3, 3, 3, generator=g),
        "conv.bias": torch.randn(4, generator=g),
        "fc.weight": torch.randn(5, 36, generator=g),
        "fc.bias": torch.randn(5, generator=g),
    }


@pytest.mark.numerics
@pytest.mark.parametrize("rate", [10, 33.3, 60, 90])
def test_per_tensor_pruning_matches_numpy_percentile(rate):
    grads = _grads()
    out, info = GradientPruning(rate=rate, scope="tensor")(grads)
    total = 0
    for name, g in grads.items():
        a = np.abs(g.numpy()).astype(np.float64)
        keep = ~(a < np.percentile(a, rate))
        assert np.array_equal(out[name].numpy() != 0, keep), name
        assert np.array_equal(out[name].numpy()[keep], g.numpy()[keep])
        n = g.numel()
        assert (~keep).sum() == math.ceil(rate * (n - 1) / 100)  # distinct magnitudes
        total += (~keep).sum()
    assert info["num_pruned"] == total


@pytest.mark.parametrize("rate", [20, 40, 60, 80])
def test_global_topk_prunes_smallest_magnitudes_over_all_tensors(rate):
    grads = _grads(1)
    out, info = GradientPruning(rate=rate, scope="global")(grads)
    flat = torch.cat([g.flatten() for g in grads.values()])
    kprune = round(rate * flat.numel() / 100)
    assert info["num_pruned"] == kprune
    thresh = flat.abs().sort().values[kprune]  # the smallest kept magnitude
    for name, g in grads.items():
        kept = out[name] != 0
        assert torch.equal(kept, g.abs() >= thresh), name


def test_pruning_layer_selection_and_bias_exclusion():
    grads = _grads(2)
    out, _ = GradientPruning(rate=50, layers=["fc"], include_bias=False)(grads)
    for name in ("conv.weight", "conv.bias", "fc.bias"):
        assert torch.equal(out[name], grads[name])
    assert (out["fc.weight"] == 0).sum() == math.ceil(0.5 * (180 - 1))
    with pytest.raises(ValueError, match="no parameters under"):
        GradientPruning(rate=50, layers=["missing"])(grads)


@pytest.mark.numerics  # float32 randn/Laplace draws take another (vectorised) kernel per CPU capability
def test_laplace_and_gaussian_noise_statistics_without_clipping():
    zeros = {"w": torch.zeros(200_000)}
    g = torch.Generator().manual_seed(0)
    lap, _ = DPNoise(scale=0.1, mechanism="laplace")(zeros, None, g)
    w = lap["w"].double()
    assert w.abs().mean().item() == pytest.approx(0.1, rel=0.02)  # E|Laplace(0,b)| = b
    assert w.var().item() == pytest.approx(2 * 0.1**2, rel=0.03)
    gau, _ = DPNoise(scale=0.05, mechanism="gaussian")(zeros, None, g)
    assert gau["w"].std().item() == pytest.approx(0.05, rel=0.02)
    # reproducible with the same generator seed
    a, _ = DPNoise(scale=0.1)(zeros, None, torch.Generator().manual_seed(5))
    b, _ = DPNoise(scale=0.1)(zeros, None, torch.Generator().manual_seed(5))
    assert torch.equal(a["w"], b["w"])


def test_whole_update_clipping():
    grads = {"a": torch.full((4,), 3.0), "b": torch.full((9,), 4.0 / 3.0)}  # norm sqrt(36 + 16) = sqrt(52)
    out, info = DPNoise(scale=0.0, clip=1.0)(grads)
    norm = math.sqrt(sum(float(v.double().pow(2).sum()) for v in out.values()))
    # a float32 norm over the 13 entries, then one scaling of each
    assert norm == pytest.approx(1.0, rel=rounding_tol(13, 1.0)) and info["clipped_fraction"] == 1.0
    out2, _ = DPNoise(scale=0.0, clip=100.0)(grads)
    assert all(torch.equal(out2[k], grads[k]) for k in grads)


@pytest.mark.numerics
def test_per_example_clipping_equals_a_loop_over_samples():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    x, y = torch.randn(4, 6), torch.tensor([0, 2, 1, 2])
    ctx = GradientContext(model, x, y)
    names = [n for n, _ in model.named_parameters()]
    grads = dict(zip(names, torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))))
    out, info = DPNoise(scale=0.0, clip=0.3, per_example=True)(grads, ctx)
    m64 = copy.deepcopy(model).double()  # the reference loop runs in float64
    expected = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in m64.named_parameters()}
    gmax = 0.0
    for b in range(4):
        gb = torch.autograd.grad(F.cross_entropy(m64(x[b : b + 1].double()), y[b : b + 1]), list(m64.parameters()))
        nb = torch.sqrt(sum(t.pow(2).sum() for t in gb))
        f = min(1.0, 0.3 / float(nb))
        gmax = max(gmax, max(float(t.abs().max()) for t in gb))
        for n, t in zip(names, gb):
            expected[n] += t * f / 4
    # per-sample float32 gradients (longest_sum terms) and their norms (P terms), at the per-sample gradient scale
    P = sum(p.numel() for p in model.parameters())
    tol = rounding_tol(longest_sum(model, x) + P, gmax)
    for n in names:
        assert_within(out[n], expected[n], tol, n)
    # with a huge clip it reproduces the plain batch gradient (float64 reference: the mean of the unclipped ones)
    same, _ = DPNoise(scale=0.0, clip=1e9, per_example=True)(grads, ctx)
    batch = torch.autograd.grad(F.cross_entropy(m64(x.double()), y), list(m64.parameters()))
    for n, t in zip(names, batch):
        assert_within(same[n], t, tol, n)


def test_build_transform_and_compose():
    assert isinstance(build_transform("prune-global", rate=10), GradientPruning)
    assert build_transform("dp-laplace", scale=0.1).mechanism == "laplace"
    with pytest.raises(ValueError, match="unknown defense"):
        build_transform("soterya")
    with pytest.raises(ValueError, match="defense 'soteria'"):
        build_transform("soteria", rat=3)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Sigmoid(), nn.Linear(5, 3))
    x, y = torch.randn(2, 6), torch.tensor([0, 1])
    grads = dict(zip([n for n, _ in model.named_parameters()],
                     torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))))
    out, info = Compose([Soteria(rate=40), GradientPruning(rate=10)])(grads, GradientContext(model, x, y))
    assert set(info) == {"soteria", "prune"}
    assert info["soteria"]["param"] == "2.weight"  # last nn.Linear found by name, not by index
    assert (out["2.weight"][:, ~info["soteria"]["mask"]] == 0).all()


def test_every_update_defense_is_a_transform_and_training_only_defenses_are_refused():
    """`fedleak invert --defense quant`: one registry, both pipelines (issue #11)."""
    from fedleak.config import ConfigError
    from fedleak.defenses import UpdateTransform
    from fedleak.defenses.update import quantize

    q = build_transform("quant", bits=2, rounding="floor")
    assert isinstance(q, UpdateTransform) and q.name == "quant"
    grads = _grads()
    out, info = q(grads, None, torch.Generator().manual_seed(0))
    for n, v in grads.items():  # floor rounding is deterministic: the defense's own quantiser, tensor by tensor
        assert torch.equal(out[n], quantize(v, 2, "floor", None))
    with pytest.raises(ConfigError, match="acts on the client's local training"):
        build_transform("mixup")


def test_gradient_defense_params_models_match_the_transforms_and_reject_bad_values():
    """One pydantic params model per gradient defense; its documented defaults are the transform's own."""
    import dataclasses

    from fedleak.config import ConfigError
    from fedleak.defenses.gradient import GRADIENT_PARAMS

    for name, model in GRADIENT_PARAMS.items():
        cls = {"soteria": Soteria, "dp-gaussian": DPNoise, "dp-laplace": DPNoise}.get(name, GradientPruning)
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        for key, field in model.model_fields.items():
            assert defaults[key] == field.default, (name, key)
    with pytest.raises(ConfigError, match=r"defense 'soteria': parameter 'rate' must lie in \[0, 100\]"):
        build_transform("soteria", rate=150)
    with pytest.raises(ConfigError, match="parameter 'denominator' must be one of legacy, notebook, abs"):
        build_transform("soteria", denominator="other")
    with pytest.raises(ConfigError, match="parameter 'scale' must be >= 0"):
        build_transform("dp-gaussian", scale=-1)
    assert build_transform("prune", layers="fc.weight").layers == ["fc.weight"]
