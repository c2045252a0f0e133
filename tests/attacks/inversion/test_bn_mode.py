"""BatchNorm in gradient inversion: the victim's bn_mode (train: batch statistics, eval: running statistics),
the attacker replaying it, the soteria-gs preset's BN-eval model against the GS script's score formula, and the
start-image clipping option."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from conftest import assert_within, longest_sum, rounding_tol
from fedleak.attacks.inversion.optimize import GradientInversion, InversionConfig, init_images, trial_generator
from fedleak.attacks.inversion.presets import get_preset
from fedleak.attacks.inversion.victim import LocalHyper, client_update
from fedleak.defenses import build_transform
from fedleak.models import build_model

pytestmark = pytest.mark.numerics


class GSConvNetBN(nn.Module):
    """The GS script's ConvNet-64 written out independently: [conv3x3-BN-ReLU] x6 (3->64->128->128->256->256->256),
    MaxPool2d(3), [conv3x3-BN-ReLU] x2 (256), MaxPool2d(3), flatten (2304), Linear(2304, C); ``width`` scales the
    channels as fedleak's ``width`` option does (64: the original)."""

    def __init__(self, classes: int = 10, width: int = 64) -> None:
        super().__init__()
        chans = [3] + [w * width // 64 for w in (64, 128, 128, 256, 256, 256, 256, 256)]
        layers: list[nn.Module] = []
        for i in range(8):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, padding=1), nn.BatchNorm2d(chans[i + 1]), nn.ReLU()]
            if i in (5, 7):
                layers.append(nn.MaxPool2d(3))
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.linear = nn.Linear(chans[-1] * 9, classes)

    def forward(self, x):
        return self.linear(self.features(x))


def _copy_weights(src: nn.Module, dst: GSConvNetBN) -> None:
    """Copy fedleak's ConvNet weights (convs[i], norms[i], linear) into the written-out net; BN statistics stay at
    their initial values (running mean 0, variance 1)."""
    convs = [m for m in dst.features if isinstance(m, nn.Conv2d)]
    norms = [m for m in dst.features if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for i in range(8):
            for a, b in ((src.convs[i], convs[i]), (src.norms[i], norms[i])):
                b.weight.copy_(a.weight)
                b.bias.copy_(a.bias)
        dst.linear.weight.copy_(src.linear.weight)
        dst.linear.bias.copy_(src.linear.bias)
    assert all(float(m.running_mean.abs().max()) == 0 and float((m.running_var - 1).abs().max()) == 0 for m in norms)


def test_soteria_gs_preset_is_bn_eval():
    spec = get_preset("soteria-gs")
    assert spec.model == "convnet64" and spec.model_options == {"norm": "batch"} and spec.bn_mode == "eval"
    assert spec.defense == "soteria" and spec.defense_params == {"rate": 60.0, "denominator": "legacy"}
    torch.manual_seed(spec.model_seed)
    model = build_model(spec.model, 10, (3, 32, 32), **spec.model_options)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 8


@pytest.mark.parametrize("width", [8, pytest.param(64, marks=pytest.mark.slow)])
def test_soteria_gs_mask_equals_the_gs_score_formula_on_the_bn_eval_model(width):
    """The preset's victim side (BN ConvNet in eval mode right after init, Soteria legacy at 60 %) against the GS
    script's formula computed directly on an independently written BN net: every feature's keep/prune agrees.
    width=64 is the preset's model exactly (2,304 features; minutes on a busy CPU, hence slow); width=8 the same
    architecture at 1/8 of the channels (288 features)."""
    spec = get_preset("soteria-gs")
    torch.manual_seed(spec.model_seed)
    model = build_model(spec.model, 10, (3, 32, 32), **{**spec.model_options, "width": width}).eval()
    mean, std = spec.mean_std()
    g = torch.Generator().manual_seed(5)
    x = (torch.rand(1, 3, 32, 32, generator=g) - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    y = torch.tensor([3])
    transform = build_transform(spec.defense, **spec.defense_params)
    view, truth = client_update(model, x, y, transform=transform, labels_known=True, mean=mean, std=std,
                                bn_mode=spec.bn_mode)
    mask = truth.transform_info["mask"].numpy()

    # the GS script: a fresh ConvNet with BatchNorm, .eval() right after initialisation
    ref = GSConvNetBN(10, width)
    _copy_weights(model, ref)
    ref.eval()
    xg = x.clone().requires_grad_(True)
    r = ref.features(xg)  # [1, D], the input of the last Linear
    D = r.shape[1]
    norms = np.empty(D)
    for s in range(0, D, 256):  # ∂r_i/∂x for a chunk of one-hot cotangents at a time (autograd, batched)
        idx = torch.arange(s, min(D, s + 256))
        cot = torch.zeros(len(idx), *r.shape)
        cot[torch.arange(len(idx)), 0, idx] = 1.0
        (gi,) = torch.autograd.grad(r, xg, cot, retain_graph=True, is_grads_batched=True)
        norms[idx.numpy()] = gi.double().flatten(1).norm(dim=1).numpy()
    v = norms / (r.detach().double().numpy()[0] + 0.1)  # legacy GS denominator r + 0.1
    S = v  # one image: the batch sum is the row
    tau = np.percentile(S, spec.defense_params["rate"])
    ref_mask = ~(np.abs(S) < tau)
    assert mask.shape == ref_mask.shape == (36 * width,)
    assert (mask == ref_mask).mean() == 1.0
    assert int((~mask).sum()) == math.ceil(0.6 * (D - 1))  # ⌈p·(D−1)/100⌉ pruned (inversion.md §3.2)
    # the shared gradient is the BN-eval gradient with exactly those columns of linear.weight zeroed
    ref.zero_grad()
    F.cross_entropy(ref(x), y).backward()
    expect = ref.linear.weight.grad * torch.as_tensor(ref_mask, dtype=torch.float32)[None, :]
    tol = rounding_tol(longest_sum(model, x), float(ref.linear.weight.grad.abs().max()) + 1e-12)
    assert_within(view.update["linear.weight"], expect, tol, "masked linear.weight")


def _bn_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = build_model("convnet64", 4, (3, 12, 12), norm="batch", width=4)
    with torch.no_grad():  # running statistics as after some training
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.3, 0.3)
                mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


def _direct_gradient(model: nn.Module, x, y, train: bool) -> dict[str, torch.Tensor]:
    net = copy.deepcopy(model).double().train(train)
    loss = F.cross_entropy(net(x.double()), y)
    names = [n for n, _ in net.named_parameters()]
    return dict(zip(names, torch.autograd.grad(loss, list(net.parameters()))))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_victim_gradient_uses_the_declared_bn_mode(mode):
    model = _bn_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(3, 3, 12, 12), torch.tensor([0, 2, 1])
    view, _ = client_update(model, x, y, labels_known=True, bn_mode=mode)
    assert view.side.bn_mode == mode
    ref = _direct_gradient(model, x, y, train=mode == "train")
    other = _direct_gradient(model, x, y, train=mode != "train")
    # scale: the whole gradient's norm (in train mode a conv bias before BN has a zero gradient: only rounding)
    n, scale = longest_sum(model, x), float(torch.cat([g.reshape(-1) for g in ref.values()]).norm())
    for k, g in view.update.items():
        assert_within(g, ref[k], rounding_tol(n * len(y), scale), k)
    assert max(float((view.update[k].double() - other[k]).abs().max()) for k in ref) > 1e-4
    # nothing was written: the model and the state the server sent keep their running statistics
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
        if k in view.buffers:
            assert torch.equal(view.buffers[k], state[k]), k


@pytest.mark.parametrize("local", [None, LocalHyper(steps=2, lr=0.05, batch_size=2)])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_attacker_replays_the_declared_mode(mode, local):
    """At the true images the attacker's dummy update equals the shared one (cost ~ 0) in the declared mode; an
    attacker assuming the other mode does not match."""
    model = _bn_model(1)
    x, y = torch.randn(3, 3, 12, 12), torch.tensor([0, 2, 1])
    view, truth = client_update(model, x, y, labels_known=True, bn_mode=mode, local=local)
    cfg = InversionConfig(cost="sim", labels="known", iterations=1)
    right = GradientInversion(model, view, cfg).matching_cost(truth.x, None)
    lied = dataclasses.replace(view, side=dataclasses.replace(view.side, bn_mode="eval" if mode == "train" else "train"))
    wrong = GradientInversion(model, lied, cfg).matching_cost(truth.x, None)
    assert right < 1e-5
    assert wrong > 100 * max(right, 1e-7)


def test_clip_start_false_starts_from_the_unclipped_draw():
    model = _bn_model(2)
    x, y = torch.randn(1, 3, 12, 12), torch.tensor([1])
    view, _ = client_update(model, x, y, labels_known=True, mean=(0.5,), std=(0.25,))
    base = dict(cost="sim", labels="known", iterations=1, optimizer="adam", boxed=True, tv=0.0, seed=4)
    clipped = GradientInversion(model, view, InversionConfig(**base))
    raw = GradientInversion(model, view, InversionConfig(**base, clip_start=False))
    x0 = init_images(raw.cfg, (1, 3, 12, 12), trial_generator(4, 0))
    lo, hi = (b.view(1, -1, 1, 1) for b in view.side.pixel_bounds())
    assert bool(((x0 < lo) | (x0 > hi)).any())  # randn leaves the box [-2, 2]
    # the objective logged at iteration 0 is measured at the start image: unclipped vs clipped
    h_raw = raw.run_trial(0)[3][0][1]
    h_clip = clipped.run_trial(0)[3][0][1]
    assert h_raw == pytest.approx(raw._objective_value(x0, None), rel=1e-6)
    assert h_clip == pytest.approx(clipped._objective_value(torch.maximum(torch.minimum(x0, hi), lo), None), rel=1e-6)
    assert h_raw != h_clip
    # unboxed attacks never clip, so the option changes nothing there
    a = GradientInversion(model, view, InversionConfig(**{**base, "boxed": False})).run_trial(0)[0]
    b = GradientInversion(model, view, InversionConfig(**{**base, "boxed": False}, clip_start=False)).run_trial(0)[0]
    assert torch.equal(a, b)
