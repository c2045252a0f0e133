"""The inversion victim's multi-step FedAvg update comes from the federated-round kernel (fedleak.fl.round): it
equals the old functional SGD loop computed in float64 (an independent copy kept here) and the attacker's
differentiable unroll on the true data, for models with and without BatchNorm, in both bn_modes; the model and the
state the server sent keep their bits."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from conftest import EPS32, assert_within, longest_sum
from fedleak.attacks.inversion.victim import LocalHyper, client_update, local_update
from fedleak.models.functional import soft_cross_entropy

pytestmark = pytest.mark.numerics


def _bn_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(6 * 6 * 6, 5))
    with torch.no_grad():  # non-trivial running statistics, so eval mode differs from train mode
        net[1].running_mean.uniform_(-0.3, 0.3)
        net[1].running_var.uniform_(0.5, 2.0)
    return net


def _plain_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 10 * 10, 5))


def _old_loop_f64(model: nn.Module, x: torch.Tensor, y: torch.Tensor, local: LocalHyper, train: bool):
    """The victim's update as computed before it called the kernel (functional SGD, fresh buffer copies each
    step), in float64: (θ_0 − θ_K per parameter, the largest |gradient| entry over all steps)."""
    net = copy.deepcopy(model).double().train(train)
    p = {k: v.detach().clone().requires_grad_(True) for k, v in net.named_parameters()}
    bufs = {k: v.detach().clone() for k, v in net.named_buffers()}
    start = {k: v.detach().clone() for k, v in p.items()}
    gmax = 0.0
    for idx in local.batches(x.shape[0]):
        logits = functional_call(net, {**{k: b.clone() for k, b in bufs.items()}, **p}, (x.double()[idx],))
        grads = torch.autograd.grad(soft_cross_entropy(logits, y[idx]), list(p.values()))
        gmax = max(gmax, max(float(g.abs().max()) for g in grads))
        p = {k: (v - local.lr * g).detach().requires_grad_(True) for (k, v), g in zip(p.items(), grads)}
    return {k: start[k] - p[k].detach() for k in start}, gmax


def _tol(model: nn.Module, x: torch.Tensor, local: LocalHyper, param: torch.Tensor, gmax: float) -> torch.Tensor:
    """float32 rounding bound of θ_0 − θ_K: each of the K steps adds lr·g with g's sums over ``longest_sum`` terms
    of one sample times the batch (terms bounded by the largest gradient entry, gmax), and the errors of earlier
    steps carry on (×K); the kernel's upload form θ_0 − (θ_0 − (θ_0 − θ_K)) adds a few roundings of |θ_0|."""
    b = local.batch_size or x.shape[0]
    n = longest_sum(model, x) * b
    k = local.steps
    grad_part = 8.0 * EPS32 * math.sqrt(n) * k * k * local.lr * gmax
    return grad_part + 4.0 * EPS32 * (param.detach().abs() + k * local.lr * gmax)


CASES = [
    pytest.param(_plain_net, "eval", LocalHyper(steps=3, lr=0.1, batch_size=2), id="plain-eval"),
    pytest.param(_plain_net, "train", LocalHyper(steps=4, lr=0.05, batch_size=None), id="plain-train-fullbatch"),
    pytest.param(_bn_net, "eval", LocalHyper(steps=3, lr=0.1, batch_size=2), id="bn-eval"),
    pytest.param(_bn_net, "train", LocalHyper(steps=3, lr=0.1, batch_size=2), id="bn-train"),
]


@pytest.mark.parametrize("make, mode, local", CASES)
def test_victim_update_is_the_kernel_and_matches_old_loop_and_attacker(make, mode, local):
    model = make(3)
    g = torch.Generator().manual_seed(11)
    x = torch.randn(3, 3, 12, 12, generator=g)  # 3 images, batches of 2: the cyclic schedule wraps around
    y = torch.tensor([0, 4, 2])
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    view, _ = client_update(model, x, y, local=local, bn_mode=mode)
    assert view.kind == "update" and set(view.update) == {n for n, _ in model.named_parameters()}

    # the client's model and the state the server holds keep the sent bits (running statistics included)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    for k, v in {**view.params, **view.buffers}.items():
        assert torch.equal(v, before[k]), k

    ref, gmax = _old_loop_f64(model, x, y, local, mode == "train")
    model.train(mode == "train")
    attacker = local_update(model, view.params, view.buffers, x, y, local, soft_cross_entropy, create_graph=True)
    model.eval()  # longest_sum's probe pass below must not write running statistics
    for name, p in model.named_parameters():
        tol = _tol(model, x, local, p, gmax)
        assert_within(view.update[name], ref[name], tol, f"victim vs float64 old loop, {name}")
        assert_within(attacker[name].detach(), ref[name], tol, f"attacker unroll vs float64 old loop, {name}")
        assert_within(view.update[name], attacker[name].detach(), 2 * tol, f"victim vs attacker unroll, {name}")
    # the update is not trivially small next to the tolerance: the check has teeth
    assert max(float(u.abs().max()) for u in view.update.values()) > 1e3 * float(_tol(model, x, local, torch.zeros(()), gmax))


def test_bn_mode_changes_the_multi_step_update():
    """The kernel's train_mode flag reaches the steps: with non-trivial running statistics the eval-mode update
    differs from the train-mode one by far more than rounding (and each matches its own float64 loop above)."""
    model = _bn_net(5)
    x, y = torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(2)), torch.tensor([1, 0, 3, 2])
    local = LocalHyper(steps=2, lr=0.1, batch_size=2)
    tr, _ = client_update(model, x, y, local=local, bn_mode="train")
    ev, _ = client_update(model, x, y, local=local, bn_mode="eval")
    diff = max(float((tr.update[k] - ev.update[k]).abs().max()) for k in tr.update)
    assert diff > 1e-3
