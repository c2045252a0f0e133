"""The logit margin φ = logit_y − logsumexp(other logits), recorded next to the loss from the same forward, against
a naive float64 loop (one sample at a time through a float64 copy of the model, the other logits' logsumexp written
out with math.exp/math.log around their maximum)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.nn import functional as F

from conftest import EPS64, assert_within, longest_sum, rounding_tol
from fedleak.models import build_model
from fedleak.signals.compute import logit_margins, per_sample_loss_margin, per_sample_losses

pytestmark = pytest.mark.numerics


def _naive_margins(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[list[float], torch.Tensor]:
    m64 = copy.deepcopy(model).double().eval()
    out, rows = [], []
    with torch.no_grad():
        for i in range(len(x)):
            z = m64(x[i : i + 1].double())[0].tolist()
            rows.append(z)
            others = [v for c, v in enumerate(z) if c != int(y[i])]
            top = max(others)
            lse = top + math.log(sum(math.exp(v - top) for v in others))
            out.append(z[int(y[i])] - lse)
    return out, torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("name,shape", [("mlp", (1, 8, 8)), ("lenet_dlg", (3, 32, 32))])
def test_margin_matches_naive_float64_loop(name, shape):
    torch.manual_seed(0)
    model = build_model(name, 5, shape)
    x, y = torch.randn(13, *shape) * 3, torch.randint(0, 5, (13,))
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss, margin = per_sample_loss_margin(model, params, x, y, batch_size=4)
    ref, z = _naive_margins(model, x, y)
    # the float32 forward's rounding enters each logit (sums of longest_sum terms of size ~|z|); φ is a difference
    # of a logit and a logsumexp (1-Lipschitz in the logits), so twice that bounds its error
    tol = rounding_tol(longest_sum(model, x), 1.0 + 2 * z.abs().amax(1))
    assert_within(margin, torch.tensor(ref), tol, "margin")
    assert margin.dtype == torch.float32 and loss.dtype == torch.float32
    # same forward: the loss is the loss per_sample_losses records, bit for bit
    assert torch.equal(loss, per_sample_losses(model, params, x, y, batch_size=4))


def test_margin_formula_on_hand_made_logits():
    # two classes: φ = z_y − z_other exactly; CE = softplus(−φ) for any number of classes
    z = torch.tensor([[2.0, -1.0], [0.5, 4.0]])
    y = torch.tensor([0, 0])
    assert torch.equal(logit_margins(z, y), torch.tensor([3.0, -3.5]))
    torch.manual_seed(1)
    z = torch.randn(50, 7, dtype=torch.float64) * 20  # large logits: a naive exp would overflow in float32
    y = torch.randint(0, 7, (50,))
    phi = logit_margins(z, y).double()
    ce = F.cross_entropy(z, y, reduction="none")
    assert_within(F.softplus(-phi), ce, rounding_tol(7, 1.0 + z.abs().amax(1), k=16.0), "CE = softplus(-margin)")
    # stability: logits around 1e4 (exp overflows even in float64) still give the exact difference of two
    big = torch.tensor([[1e4, 1e4 - 3.0]], dtype=torch.float64)
    assert logit_margins(big, torch.tensor([0])).item() == pytest.approx(3.0, abs=1e4 * 8 * EPS64)
