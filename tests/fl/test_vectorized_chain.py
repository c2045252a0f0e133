"""The stacked engine's Linear/ReLU fast path (fedleak.fl.vectorized_chain), its fused optimizer steps and the
CPU's client groups.

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

from fedleak.config import FLConfig
from fedleak.fl import vectorized, vectorized_policy
from fedleak.defenses.base import Defense
from fedleak.fl.local import TrainingDiverged, get_params, local_update, make_optimizer
from fedleak.fl.vectorized_policy import group_size
from fedleak.fl.vectorized_chain import Op, linear_chain
from fedleak.fl.vectorized_optim import make_stacked_optimizer
from fedleak.models import build_model

from test_vectorized import IID, LR, OPTIMIZERS, UNEQUAL, assert_same_states, make_clients, make_fl, max_diff
from test_vectorized import gens as gens_for
from test_vectorized import normalize, run_loop, run_vec


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


def test_group_size() -> None:
    """Parameters, gradients and optimizer state of a group fit CPU_GROUP_BYTES (at least one client; off the CPU
    one group): the MNIST-sized MLP (235,146 float32 parameters, 2.8 MB with SGD momentum) in pairs, digits' in one
    group of 10."""
    mnist, digits = build_model("mlp", 10, (1, 28, 28)), build_model("mlp", 10, (1, 8, 8))
    sgd = FLConfig(optimizer="sgd", momentum=0.9)
    assert group_size(mnist, sgd, 10) == (8 * 2**20) // (3 * 4 * 235_146) == 2
    assert group_size(mnist, FLConfig(optimizer="adam"), 10) == (8 * 2**20) // (4 * 4 * 235_146) == 2
    assert group_size(mnist, FLConfig(optimizer="sgd", momentum=0.0), 10) == (8 * 2**20) // (2 * 4 * 235_146) == 4
    assert group_size(digits, sgd, 10) == 10 and group_size(digits, sgd, 3) == 3
    assert group_size(mnist.double(), sgd, 10) == 1
    assert group_size(mnist, sgd, 10, device="cuda") == 10


@pytest.mark.parametrize("per_group", [1, 3])
@pytest.mark.parametrize("opt", ["sgd-momentum-wd", "adam"])
def test_groups_equal_the_loop(monkeypatch, per_group: int, opt: str) -> None:
    """Clients stacked in groups of 1 or 3 (4 clients: a last, smaller group), two rounds with carried optimizer
    states: float64 equal to the loop, states and generators included."""
    model = _chain_model("mlp", torch.float64)
    tensors = 3 if opt.startswith("sgd") else 4  # parameters, gradients, momentum | Adam's two moments
    per_client = tensors * sum(p.numel() * p.element_size() for p in model.parameters())
    monkeypatch.setattr(vectorized_policy, "CPU_GROUP_BYTES", per_group * per_client)
    assert group_size(model, make_fl(opt), len(UNEQUAL)) == per_group
    g0 = get_params(model)
    xs, ys = make_clients(UNEQUAL, (1, 6, 6), torch.float64, seed=3)
    fl, lr = make_fl(opt, fresh=False), LR[OPTIMIZERS[opt]["optimizer"]]
    p1, _, s_loop, _ = run_loop(model, g0, xs, ys, fl, lr)
    _, _, s_vec, _ = run_vec(model, g0, xs, ys, fl, lr)
    start = {n: sum(p[n] for p in p1) / len(p1) for n in g0}
    p_loop, l_loop, s_loop2, g_loop = run_loop(model, start, xs, ys, fl, lr, states=s_loop, seed=7)
    p_vec, l_vec, s_vec2, g_vec = run_vec(model, start, xs, ys, fl, lr, states=s_vec, seed=7)
    assert max_diff(p_vec, p_loop) < 1e-12
    assert l_vec == pytest.approx(l_loop, rel=1e-13, abs=0)
    assert_same_states(s_vec2, s_loop2, 1e-12)
    for a, b in zip(g_vec, g_loop):
        assert torch.equal(a.get_state(), b.get_state())


def test_groups_raise_for_the_first_diverging_client(monkeypatch) -> None:
    """Clients 1 and 3 diverge, in different groups of 2: the loop's error names client 1, and the second group
    (clients 2 and 3) never trains: its generators are left untouched, as the loop leaves them."""
    model = _chain_model("mlp", torch.float32)
    monkeypatch.setattr(vectorized_policy, "CPU_GROUP_BYTES", 2 * 3 * sum(4 * p.numel() for p in model.parameters()))
    g0 = get_params(model)
    xs, ys = make_clients(UNEQUAL, (1, 6, 6), torch.float32)
    xs[1][0, 0, 0, 0] = float("nan")
    xs[3][2, 0, 1, 1] = float("inf")
    fl = make_fl("sgd-momentum")
    loop_gens, vec_gens = gens_for(UNEQUAL), gens_for(UNEQUAL)
    with pytest.raises(TrainingDiverged) as loop_err:
        for k in range(len(xs)):
            local_update(model, g0, xs[k], ys[k], fl=fl, lr=0.05, num_classes=5, normalize=normalize,
                         defense=Defense(), gen=loop_gens[k], where=f"client {k}")
    with pytest.raises(TrainingDiverged) as vec_err:
        vectorized.local_updates_vectorized(model, g0, xs, ys, vec_gens, fl=fl, lr=0.05, num_classes=5,
                                            normalize=normalize, wheres=[f"client {k}" for k in range(len(xs))])
    assert "client 1" in str(loop_err.value) and str(vec_err.value) == str(loop_err.value)
    for k in (0, 2, 3):  # (client 1's: the stacked engine draws every epoch's order up front, the loop lazily)
        assert torch.equal(vec_gens[k].get_state(), loop_gens[k].get_state())
    assert torch.equal(vec_gens[2].get_state(), gens_for(UNEQUAL)[2].get_state())  # never drawn from
