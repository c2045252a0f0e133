"""The stacked engine's Linear/ReLU fast path (fedleak.fl.vectorized_chain) and its fused optimizer steps.

Which models take the fast path is checked on hand-made models (accepted chains and near misses); what it
computes is checked against the per-client loop (K separate ``local_update`` calls with torch.optim and autograd)
in float64, where any difference in algebra would show far above rounding, and in float32 against a float64 run
of the loop on a few steps.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedleak.fl.local import get_params
from fedleak.fl.vectorized_chain import Op, linear_chain
from fedleak.fl.vectorized_optim import make_stacked_optimizer
from fedleak.fl.local import make_optimizer
from fedleak.models import build_model

from test_vectorized import IID, LR, OPTIMIZERS, UNEQUAL, assert_same_states, make_clients, make_fl, max_diff
from test_vectorized import run_loop, run_vec


class FunctionalChain(nn.Module):
    """A chain written with functions (torch.flatten, F.relu) and a bias-free layer."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(36, 9, bias=False)
        self.b = nn.Linear(9, 7)
        self.c = nn.Linear(7, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.a(torch.flatten(x, 1)))
        return self.c(torch.relu(self.b(h)))


class Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(36, 36), nn.Linear(36, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(torch.relu(self.a(x.flatten(1))))))  # self.a applied twice


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(36, 36), nn.Linear(36, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(1)
        return self.b(h + torch.relu(self.a(h)))


class Unused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.spare = nn.Linear(36, 5), nn.Parameter(torch.zeros(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x.flatten(1))


def test_chains_recognised() -> None:
    mlp = build_model("mlp", 5, (1, 6, 6), hidden=[16, 12])  # flatten, Linear, ReLU, Linear, ReLU, fc
    assert linear_chain(mlp) == [
        Op("flatten"), Op("linear", 0, 1), Op("relu"), Op("linear", 2, 3), Op("relu"), Op("linear", 4, 5),
    ]
    assert linear_chain(FunctionalChain()) == [
        Op("flatten"), Op("linear", 0, None), Op("relu"), Op("linear", 1, 2), Op("relu"), Op("linear", 3, 4),
    ]
    assert linear_chain(nn.Sequential(nn.Flatten(), nn.Linear(36, 5))) == [Op("flatten"), Op("linear", 0, 1)]


@pytest.mark.parametrize(
    "model",
    [
        build_model("lenet_dlg", 5, (1, 8, 8)),  # convolutions
        nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.Tanh(), nn.Linear(8, 5)),  # another activation
        nn.Sequential(nn.Linear(6, 8), nn.Flatten(), nn.Linear(48, 5)),  # a Linear on the image's last axis
        nn.Sequential(nn.Flatten(0), nn.Linear(36, 5)),  # flattening the batch axis too
        nn.Sequential(nn.Flatten(), nn.ReLU()),  # no Linear at all
        Shared(),
        Residual(),
        Unused(),
    ],
    ids=["conv", "tanh", "linear-first", "flatten0", "no-linear", "shared", "residual", "unused-param"],
)
def test_other_models_take_the_general_path(model: nn.Module) -> None:
    assert linear_chain(model) is None


def _chain_model(kind: str, dtype) -> nn.Module:
    torch.manual_seed(5)
    model = FunctionalChain() if kind == "functional" else build_model("mlp", 5, (1, 6, 6), hidden=[16, 12])
    return model.to(dtype)


@pytest.mark.parametrize("kind", ["mlp", "functional"])
@pytest.mark.parametrize("sizes", [IID, UNEQUAL], ids=["iid", "unequal"])
@pytest.mark.parametrize("opt", ["sgd", "sgd-momentum-wd", "adam-wd", "adamw"])
@pytest.mark.parametrize("epochs", [1, 2])
def test_fast_path_float64_equals_the_loop(kind: str, opt: str, sizes: list[int], epochs: int) -> None:
    """The hand-written forward/backward and the fused optimizer steps: the loop's result to float64 rounding
    (one epoch: each batch normalised per step; two: all rows normalised once)."""
    model = _chain_model(kind, torch.float64)
    assert linear_chain(model) is not None
    g0 = get_params(model)
    xs, ys = make_clients(sizes, (1, 6, 6), torch.float64, seed=9)
    fl, lr = make_fl(opt, fresh=False, epochs=epochs), LR[OPTIMIZERS[opt]["optimizer"]]
    p_loop, l_loop, s_loop, g_loop = run_loop(model, g0, xs, ys, fl, lr)
    p_vec, l_vec, s_vec, g_vec = run_vec(model, g0, xs, ys, fl, lr)
    assert max_diff(p_vec, p_loop) < 1e-12
    assert max_diff(p_vec, [g0] * len(sizes)) > 1e-3  # training moved the models
    assert l_vec == pytest.approx(l_loop, rel=1e-13, abs=0)
    assert_same_states(s_vec, s_loop, 1e-12)
    for a, b in zip(g_vec, g_loop):
        assert torch.equal(a.get_state(), b.get_state())


@pytest.mark.parametrize("opt", ["sgd-momentum-wd", "adamw"])
def test_fast_path_float32_to_rounding(opt: str) -> None:
    """float32, one epoch (2 steps of batch 8 on 12 samples): every parameter within the rounding of the steps
    taken from a float64 run of the loop, as close as the float32 loop itself comes (factor 4)."""
    model = _chain_model("mlp", torch.float32)
    g0 = get_params(model)
    xs, ys = make_clients(IID, (1, 6, 6), torch.float32, seed=2)
    fl, lr = make_fl(opt, epochs=1), LR[OPTIMIZERS[opt]["optimizer"]]
    p_vec, l_vec, _, _ = run_vec(model, g0, xs, ys, fl, lr)
    p_loop, l_loop, _, _ = run_loop(model, g0, xs, ys, fl, lr)
    p_ref, l_ref, _, _ = run_loop(model.double(), {n: p.double() for n, p in g0.items()},
                                  [x.double() for x in xs], ys, fl, lr)
    eps = torch.finfo(torch.float32).eps
    steps, scale = math.ceil(max(IID) / 8), max(float(p.abs().max()) for p in g0.values())
    floor = steps * 8 * eps * scale
    err_vec, err_loop = max_diff(p_vec, p_ref), max_diff(p_loop, p_ref)
    assert err_vec <= 4 * err_loop + floor, (err_vec, err_loop, floor)
    assert max_diff(p_vec, p_ref) < 1e-5 < max_diff(p_ref, [g0] * len(IID))
    for a, r in zip(l_vec, l_ref):
        assert abs(a - r) <= 64 * eps * abs(r)


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_optimizer_paths_agree_with_torch_optim(opt: str) -> None:
    """The fused kernels (contiguous gradients) and the foreach fallback (transposed gradients, as vmap gives for
    a linear layer) each equal K torch.optim instances, on the full stack and on a prefix of the clients."""
    torch.manual_seed(1)
    K, shape = 3, (4, 5)
    fl = make_fl(opt)
    lr = LR[fl.optimizer]
    for contiguous in (True, False):
        stacked = [torch.randn(K, *shape, dtype=torch.float64)]
        refs = [nn.Parameter(stacked[0][k].clone()) for k in range(K)]
        opts = [make_optimizer([r], fl, lr) for r in refs]
        vec = make_stacked_optimizer(fl, lr, stacked)
        for m in (3, 3, 2):
            g = torch.randn(m, *shape, dtype=torch.float64)
            for k in range(m):
                refs[k].grad = g[k].clone()
                opts[k].step()
            grads = [g.clone() if contiguous else g.transpose(1, 2).contiguous().transpose(1, 2)]
            assert grads[0].is_contiguous() == contiguous
            vec.step(grads, m)
        for k in range(K):
            assert float((stacked[0][k] - refs[k].detach()).abs().max()) < 1e-14, (opt, contiguous, k)
