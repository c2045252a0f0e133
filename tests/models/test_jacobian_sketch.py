"""The randomised Jacobian-row-norm sketch against closed forms, its known distribution, and the exact rows."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import chi2
from torch import nn
from torch.nn import functional as F

from fedleak.defenses.gradient import jacobian_rows, representation_fn
from fedleak.models.jacobian_sketch import (
    draw_probes,
    row_norms_sketch,
    sketch_chunk_size,
    sketch_squared_norms,
    sketch_variance,
)

F64 = torch.float64


def _linear(W: torch.Tensor):
    return lambda x: x.flatten(1) @ W.T


def _chi2_bounds(m: int, tests: int, alpha: float = 1e-6) -> tuple[float, float]:
    """Two-sided χ²_m quantiles at family-wise level ``alpha`` over ``tests`` tests (Bonferroni)."""
    a = alpha / tests
    return float(chi2.ppf(a / 2, m)), float(chi2.ppf(1 - a / 2, m))


class SigmoidNet(nn.Module):
    """Two sigmoid convs (LeNet-like), representation 6*3*3 = 54 features."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 6, 5, 2, 2), nn.Sigmoid(), nn.Conv2d(6, 6, 5, 2, 2), nn.Sigmoid())
        self.fc = nn.Linear(54, 4)

    def forward(self, x):
        return self.fc(self.body(x).flatten(1))


class ReluNet(nn.Module):
    """conv -> GroupNorm(per channel) -> ReLU -> max-pool (ConvNet-64's block), representation 8*3*3 = 72."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.GroupNorm(8, 8)
        self.fc = nn.Linear(72, 4)

    def forward(self, x):
        return self.fc(F.max_pool2d(F.relu(self.norm(self.conv(x))), 4).flatten(1))


def _net(cls, B=3, seed=0):
    torch.manual_seed(seed)
    model = cls().double()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.randn(B, 3, 12, 12, dtype=F64)
    return representation_fn(model, "fc"), x


def _estimate_from_full_jacobian(J: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    """Naive reference: mean over probes k of (J_b p_kb)_i², J [B, D, n], P [m, B, ...]."""
    m, B = P.shape[:2]
    out = torch.zeros(J.shape[:2], dtype=F64)
    for k in range(m):
        for b in range(B):
            out[b] += (J[b] @ P[k, b].reshape(-1)) ** 2
    return out / m


# ---------------------------------------------------------------------------------------------- linear maps


def test_gaussian_sketch_of_linear_map_follows_chi2():
    g = torch.Generator().manual_seed(0)
    D, n, B, m = 24, 40, 3, 32
    W = torch.randn(D, n, generator=g, dtype=F64) * torch.logspace(-2, 2, D, dtype=F64)[:, None]
    x = torch.randn(B, n, generator=g, dtype=F64)
    r, q = sketch_squared_norms(_linear(W), x, m, "gaussian", torch.Generator().manual_seed(1), chunk=5)
    assert torch.allclose(r, x @ W.T, rtol=1e-12)
    exact = W.square().sum(1).expand(B, D)
    lo, hi = _chi2_bounds(m, B * D)
    stat = m * q / exact  # ~ χ²_m exactly, for every (b, i)
    assert bool((stat > lo).all() and (stat < hi).all()), (stat.min(), stat.max(), lo, hi)
    norms = row_norms_sketch(_linear(W), x, m, "gaussian", torch.Generator().manual_seed(1), chunk=5)
    assert torch.equal(norms, q.sqrt())


def test_rademacher_is_exact_on_single_entry_rows_and_gaussian_is_not():
    # rows with one non-zero entry: (a·v)² = a_j² for v_j = ±1, so Var = 2(‖a‖⁴ − Σa_j⁴) = 0
    s = torch.linspace(0.5, 3.0, 7, dtype=F64)
    W = torch.zeros(7, 9, dtype=F64)
    W[torch.arange(7), torch.tensor([8, 0, 3, 3, 5, 1, 2])] = s
    x = torch.randn(2, 9, dtype=F64)
    est = row_norms_sketch(_linear(W), x, 1, "rademacher", torch.Generator().manual_seed(3))
    assert torch.allclose(est, s.expand(2, 7), rtol=1e-15)
    assert torch.equal(sketch_variance(W, "rademacher"), torch.zeros(7, dtype=F64))
    assert torch.allclose(sketch_variance(W, "gaussian"), 2 * s**4)
    est_g = row_norms_sketch(_linear(W), x, 1, "gaussian", torch.Generator().manual_seed(3))
    assert not torch.allclose(est_g, s.expand(2, 7), rtol=1e-2)


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_unbiased_with_the_closed_form_variance(kind):
    # N copies of one sample in a batch get independent probes: N independent m-probe estimates in one call
    g = torch.Generator().manual_seed(5)
    D, n, N, m = 6, 8, 6000, 2
    W = torch.randn(D, n, generator=g, dtype=F64) * 0.5 ** torch.arange(n, dtype=F64)  # mass on few inputs
    x = torch.randn(1, n, generator=g, dtype=F64).expand(N, n)
    _, q = sketch_squared_norms(_linear(W), x, m, kind, torch.Generator().manual_seed(6))
    exact = W.square().sum(1)
    var = sketch_variance(W, kind, m)
    z_mean = (q.mean(0) - exact) / (var / N).sqrt()
    assert bool((z_mean.abs() < 5.5).all()), z_mean
    centred = q - q.mean(0)
    s2 = centred.square().mean(0)
    se_s2 = ((centred**4).mean(0) - s2**2).div(N).sqrt()  # standard error of the sample variance
    assert bool(((s2 - var).abs() < 6 * se_s2).all()), ((s2 - var) / se_s2)
    if kind == "rademacher":  # the test can tell the two variances apart for this W
        assert bool(((sketch_variance(W, "gaussian", m) - s2) > 6 * se_s2).all())


# ---------------------------------------------------------------------------------------------- networks


@pytest.mark.parametrize("cls", [SigmoidNet, ReluNet])
@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_sketch_equals_naive_estimate_from_exact_jacobian(cls, kind):
    f, x = _net(cls)
    _, J = jacobian_rows(f, x, chunk_size=16, full=True)  # [B, D, n] exact, float64
    P = draw_probes(5, tuple(x.shape), kind, torch.Generator().manual_seed(9), F64)
    _, q = sketch_squared_norms(f, x, P, chunk=2)
    assert torch.allclose(q, _estimate_from_full_jacobian(J, P), rtol=1e-10, atol=1e-300)
    # the generator path draws exactly those probes
    _, q_gen = sketch_squared_norms(f, x, 5, kind, torch.Generator().manual_seed(9), chunk=3)
    assert torch.allclose(q_gen, q, rtol=1e-12)


@pytest.mark.parametrize("cls", [SigmoidNet, ReluNet])
def test_gaussian_sketch_of_conv_net_within_chi2_bounds_of_exact_rows(cls):
    f, x = _net(cls, B=2)
    r, norms = jacobian_rows(f, x, chunk_size=16)
    m = 48
    r_s, est = sketch_squared_norms(f, x, m, "gaussian", torch.Generator().manual_seed(2))
    assert torch.allclose(r_s, r, rtol=1e-12)
    live = norms > 0  # ReLU-pool features with r = 0 have an exactly zero row (checked below)
    lo, hi = _chi2_bounds(m, int(live.sum()))
    stat = m * est[live] / norms[live].square()
    assert bool((stat > lo).all() and (stat < hi).all()), (stat.min(), stat.max(), lo, hi)
    assert torch.equal(est[~live], torch.zeros_like(est[~live]))


def test_dead_relu_features_are_exactly_zero():
    torch.manual_seed(4)
    conv = nn.Conv2d(3, 4, 3, padding=1).double().requires_grad_(False)
    f = lambda x: F.relu(conv(x)).flatten(1)  # noqa: E731
    x = torch.randn(2, 3, 6, 6, dtype=F64)
    r, q = sketch_squared_norms(f, x, 16, "rademacher", torch.Generator().manual_seed(0))
    _, exact = jacobian_rows(f, x, chunk_size=32)
    dead = r == 0
    assert 0.3 < float(dead.double().mean()) < 0.7
    assert torch.equal(q[dead], torch.zeros_like(q[dead])) and torch.equal(exact[dead], q[dead])
    assert bool((q[~dead] > 0).all())


def test_batch_independence_one_sample_at_a_time():
    f, x = _net(ReluNet, B=4)  # GroupNorm normalises per sample: no coupling
    P = draw_probes(6, tuple(x.shape), "gaussian", torch.Generator().manual_seed(1), F64)
    _, q = sketch_squared_norms(f, x, P)
    for b in range(4):
        _, qb = sketch_squared_norms(f, x[b : b + 1], P[:, b : b + 1], chunk=4)
        assert torch.allclose(q[b : b + 1], qb, rtol=1e-12), b


def test_deterministic_under_a_seed_and_independent_of_chunking():
    f, x = _net(SigmoidNet)
    a = row_norms_sketch(f, x, 20, "rademacher", torch.Generator().manual_seed(7))
    b = row_norms_sketch(f, x, 20, "rademacher", torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    for chunk in (1, 3, 20, 64):
        c = row_norms_sketch(f, x, 20, "rademacher", torch.Generator().manual_seed(7), chunk=chunk)
        assert torch.allclose(a, c, rtol=1e-13), chunk
    d = row_norms_sketch(f, x, 20, "rademacher", torch.Generator().manual_seed(8))
    assert not torch.allclose(a, d)


def test_probe_stream_and_values():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    whole = draw_probes(10, (2, 5), "gaussian", g1)
    parts = torch.cat([draw_probes(4, (2, 5), "gaussian", g2), draw_probes(6, (2, 5), "gaussian", g2)])
    assert torch.equal(whole, parts)
    rad = draw_probes(400, (50,), "rademacher", torch.Generator().manual_seed(0), F64)
    assert set(rad.unique().tolist()) == {-1.0, 1.0}
    assert abs(float(rad.mean())) < 5 / math.sqrt(rad.numel())  # mean 0, unit variance: 5 standard errors


def test_chunk_size_follows_the_memory_budget():
    f, x = _net(ReluNet, B=2)
    # largest per-sample activation of ReluNet: the conv output 8*12*12 = 1152 elements
    per_probe = 4 * 1152 * 2 * 8  # 4 tangents, B = 2, float64
    assert sketch_chunk_size(f, x, memory_budget_mb=1.0) == 2**20 // per_probe
    assert sketch_chunk_size(f, x, memory_budget_mb=1e-6) == 1


def test_bad_arguments_name_what_to_fix():
    f, x = _net(SigmoidNet, B=2)
    with pytest.raises(ValueError, match="probes must be a positive integer"):
        row_norms_sketch(f, x, 0)
    with pytest.raises(ValueError, match="probes must be a positive integer"):
        row_norms_sketch(f, x, True)
    with pytest.raises(ValueError, match="unknown probe kind 'uniform'"):
        row_norms_sketch(f, x, 4, "uniform")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"explicit probes must have shape \[m, 2, 3, 12, 12\]"):
        row_norms_sketch(f, x, torch.randn(4, 1, 3, 12, 12, dtype=F64))
    with pytest.raises(ValueError, match="chunk must be a positive integer"):
        row_norms_sketch(f, x, 4, chunk=0)
    with pytest.raises(ValueError, match=r"f must map \[B, \.\.\.\] to \[B, D\]"):
        row_norms_sketch(lambda z: z, x, 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_cpu_result_for_the_same_seed():
    f, x = _net(SigmoidNet)
    cpu = row_norms_sketch(f, x, 16, "gaussian", torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = SigmoidNet().double().cuda().requires_grad_(False)
    f_cuda = representation_fn(model, "fc")
    gpu = row_norms_sketch(f_cuda, x.cuda(), 16, "gaussian", torch.Generator().manual_seed(0))
    assert gpu.device.type == "cuda"
    assert torch.allclose(gpu.cpu(), cpu, rtol=1e-10)
