"""Signals of a BatchNorm model: per-sample gradients and losses in eval mode with the given running statistics,
against a naive float64 loop (one autograd backward per sample through a plain nn.Module in eval mode)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from conftest import assert_within, longest_sum, rounding_tol
from fedleak.models import build_model
from fedleak.signals.compute import gradient_signals, per_sample_gradients, per_sample_losses, trainable_names

pytestmark = pytest.mark.numerics


def _state_with_stats(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """The model's parameters and non-trivial running statistics (as a server would have received them)."""
    g = torch.Generator().manual_seed(seed)
    state = {n: p.detach().clone() for n, p in model.named_parameters()}
    for n, b in model.named_buffers():
        if n.endswith("running_mean"):
            state[n] = torch.rand(b.shape, generator=g) - 0.5
        elif n.endswith("running_var"):
            state[n] = 0.5 + 1.5 * torch.rand(b.shape, generator=g)
        else:
            state[n] = b.clone() + 7
    return state


def _naive64(model: nn.Module, state: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor):
    """(losses [N], per-sample gradients [N, P]) in float64, one sample at a time, model.eval()."""
    m = copy.deepcopy(model).double().eval()
    m.load_state_dict({n: v.double() if v.is_floating_point() else v for n, v in state.items()})
    names = trainable_names(m)
    params = dict(m.named_parameters())
    losses, rows = [], []
    for i in range(len(y)):
        m.zero_grad()
        loss = F.cross_entropy(m(x[i : i + 1].double()), y[i : i + 1])
        loss.backward()
        losses.append(loss.detach())
        rows.append(torch.cat([params[n].grad.reshape(-1) for n in names]))
    assert all(torch.equal(b, state[n]) for n, b in m.named_buffers() if not b.is_floating_point())
    return torch.stack(losses), torch.stack(rows)


@pytest.mark.parametrize("name,opts,shape", [
    ("resnet20_bn", {}, (3, 8, 8)),
    ("convnet64", {"norm": "batch", "width": 4}, (3, 12, 12)),
])
def test_bn_eval_per_sample_gradients_match_naive_float64_loop(name, opts, shape):
    torch.manual_seed(0)
    model = build_model(name, 5, shape, **opts)
    state = _state_with_stats(model, 1)
    x, y = torch.randn(6, *shape), torch.randint(0, 5, (6,))
    loss64, G64 = _naive64(model, state, x, y)
    n = longest_sum(model, x)
    G = per_sample_gradients(model, state, x, y)
    gnorm = G64.norm(dim=1, keepdim=True)
    assert_within(G, G64, rounding_tol(n, gnorm), f"{name} per-sample gradients")
    losses = per_sample_losses(model, state, x, y)
    assert_within(losses, loss64, rounding_tol(n, 1.0 + loss64), f"{name} losses")
    # the running statistics matter: the same parameters with fresh statistics give other gradients
    fresh = {**state, **{k: v for k, v in model.state_dict().items() if "running" in k}}
    assert float((per_sample_gradients(model, fresh, x, y) - G).abs().max()) > 1e-3 * float(gnorm.max())
    # the model's own mode and buffers are left alone
    assert model.training and all(torch.equal(b, model.state_dict()[k]) for k, b in model.named_buffers())

    K, P = 3, G64.shape[1]
    deltas = torch.randn(K, P, generator=torch.Generator().manual_seed(2)) * 1e-2
    sig = gradient_signals(model, state, deltas, x, y, chunk_size=4)
    dnorm = deltas.double().norm(dim=1)
    assert_within(sig["dot"], deltas.double() @ G64.T, rounding_tol(P, dnorm[:, None] * gnorm.T), "dot")
    assert_within(sig["gnorm2"], gnorm[:, 0] ** 2, rounding_tol(P, gnorm[:, 0] ** 2), "gnorm2")
