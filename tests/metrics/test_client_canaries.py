"""Client canaries (Andrew et al. 2024): the directions, their cosines with a model delta against a direct
computation, and the one-shot ε on exactly Gaussian cosines and on a simulated Gaussian-mechanism sum."""

import math

import numpy as np
import pytest
import torch

from fedleak.errors import FedleakError
from fedleak.metrics.client_canaries import (
    canary_cosines,
    canary_direction,
    canary_directions,
    one_shot_epsilon,
    one_shot_interval,
)
from fedleak.metrics.epsilon import gdp_epsilon


def test_directions_have_the_clip_norm_and_are_reproducible():
    a = canary_direction(7, 3, 1000, clip_norm=2.5)
    assert np.linalg.norm(a) == pytest.approx(2.5, rel=1e-12)
    np.testing.assert_array_equal(a, canary_direction(7, 3, 1000, clip_norm=2.5))
    assert not np.allclose(a, canary_direction(7, 4, 1000, 2.5))
    assert not np.allclose(a, canary_direction(8, 3, 1000, 2.5))
    stack = canary_directions(7, [3, 0], 1000, 2.5)
    np.testing.assert_array_equal(stack[0], a)
    np.testing.assert_array_equal(stack[1], canary_direction(7, 0, 1000, 2.5))


def test_directions_are_isotropic():
    """Unit directions in R^P: pairwise cosines have mean 0 and variance 1/P. With n directions the mean over
    pairs is (‖Σu‖² − n) / (n(n − 1)), whose standard deviation is about sqrt(2/P)/n; the 7140 pairs of 120
    directions estimate the variance to a few percent."""
    P, n = 500, 120
    u = canary_directions(1, range(n), P)
    cos = (u @ u.T)[np.triu_indices(n, 1)]
    assert abs(cos.mean()) < 4 * math.sqrt(2 / P) / n
    assert cos.var() * P == pytest.approx(1.0, rel=0.1)
    assert (u**2).mean() * P == pytest.approx(1.0, rel=1e-12)  # every row has norm 1


def test_cosines_match_a_direct_computation_for_numpy_and_torch_deltas():
    rng = np.random.default_rng(0)
    P = 3000
    delta = rng.normal(0, 1, P) + 30 * canary_direction(5, 2, P)  # cos ≈ 30 / sqrt(3000 + 900)
    c = canary_directions(5, range(6), P)
    expect = c @ delta / (np.linalg.norm(c, axis=1) * np.linalg.norm(delta))
    np.testing.assert_allclose(canary_cosines(delta, 5, range(6)), expect, rtol=1e-12, atol=1e-15)
    # a float32 torch tensor (any shape) is flattened and promoted to float64
    t = torch.tensor(delta.reshape(30, 100), dtype=torch.float32)
    expect32 = c @ t.double().numpy().ravel() / (np.linalg.norm(c, axis=1) * float(t.double().norm()))
    np.testing.assert_allclose(canary_cosines(t, 5, range(6)), expect32, rtol=1e-12, atol=1e-15)
    assert canary_cosines(delta, 5, range(6))[2] > 0.4  # the planted canary stands out


def test_one_shot_epsilon_hand_case():
    # in: {1, 3} (mean 2, var 2); out: {0, 2} (mean 1, var 2): pooled σ = √2, μ = 1/√2, i.e. the Gaussian
    # mechanism with sensitivity 1 and noise σ = √2
    est = one_shot_epsilon([1.0, 3.0], [0.0, 2.0], 1e-5)
    assert (est.mu_in, est.mu_out, est.sigma) == pytest.approx((2.0, 1.0, math.sqrt(2)))
    assert est.gdp_mu == pytest.approx(1 / math.sqrt(2))
    dpa = pytest.importorskip("dp_accounting")
    assert est.epsilon == pytest.approx(dpa.get_epsilon_gaussian(math.sqrt(2), 1e-5), rel=1e-6)


def test_one_shot_epsilon_on_exact_gaussian_cosines():
    """Cosines drawn exactly from N(μσ, σ²) (inserted) and N(0, σ²) (held out): the estimate is consistent.
    Tolerance: μ̂ has a standard error of about sqrt(2/n) (difference of means plus the σ estimate), mapped to ε
    through the slope dε/dμ, at 4 standard errors."""
    mu, sigma, delta, n = 1.0, 0.003, 1e-5, 20_000
    true_eps = gdp_epsilon(mu, delta)
    slope = (gdp_epsilon(mu + 1e-4, delta) - gdp_epsilon(mu - 1e-4, delta)) / 2e-4
    tol = 4 * math.sqrt(2 / n + mu**2 / (4 * n)) * slope
    for seed in range(10):
        rng = np.random.default_rng(seed)
        est = one_shot_epsilon(rng.normal(mu * sigma, sigma, n), rng.normal(0, sigma, n), delta)
        assert est.epsilon == pytest.approx(true_eps, abs=tol)


@pytest.mark.parametrize("noise_multiplier", [1.0, 2.0])
def test_one_shot_epsilon_on_a_simulated_gaussian_mechanism(noise_multiplier):
    """Δ = Σ inserted canaries (norm C) + N(0, (σC)² I_P): each canary's cosine is ≈ N(1/‖Δ‖·C, σ²C²/‖Δ‖²), so the
    estimate targets the Gaussian mechanism with μ = 1/σ. Cross-talk between canaries adds variance
    (k − 1)/(P σ²) ≈ 1% here; tolerance as in the exact test, at 4.5 standard errors for n = 400."""
    P, k, C, delta = 40_000, 400, 0.7, 1e-5
    rng = np.random.default_rng(int(noise_multiplier * 10))
    model_delta = rng.normal(0, noise_multiplier * C, P)
    for i in range(k):
        model_delta += canary_direction(11, i, P, C)
    est = one_shot_epsilon(canary_cosines(model_delta, 11, range(k)),
                           canary_cosines(model_delta, 11, range(k, 2 * k)), delta)
    mu = 1 / noise_multiplier
    slope = (gdp_epsilon(mu + 1e-4, delta) - gdp_epsilon(mu - 1e-4, delta)) / 2e-4
    assert est.gdp_mu == pytest.approx(mu, abs=4.5 * math.sqrt(2 / k + mu**2 / (4 * k)))
    assert est.epsilon == pytest.approx(gdp_epsilon(mu, delta), abs=4.5 * math.sqrt(2 / k + mu**2 / (4 * k)) * slope)
    # the geometry: cos_i ≈ (C² + <c_i, z>) / (C ‖Δ‖), so the fitted spread is σC/‖Δ‖ (pooled over 2k − 2
    # degrees of freedom: relative SE 1/sqrt(2(2k − 2))) and the held-out mean is ≈ 0
    norm = float(np.linalg.norm(model_delta))
    assert est.sigma * norm / C == pytest.approx(noise_multiplier, rel=4 / math.sqrt(2 * (2 * k - 2)) + 0.01)
    assert abs(est.mu_out) < 4 * est.sigma / math.sqrt(k)


def test_bad_inputs_are_user_errors():
    with pytest.raises(FedleakError, match="all zeros"):
        canary_cosines(np.zeros(10), 0, [0])
    with pytest.raises(FedleakError, match="finite"):
        canary_cosines(np.array([1.0, np.nan]), 0, [0])
    with pytest.raises(FedleakError, match="at least 2"):
        one_shot_epsilon([0.1], [0.0, 0.2], 1e-5)
    with pytest.raises(FedleakError, match="clip_norm"):
        canary_direction(0, 0, 10, clip_norm=0)


@pytest.mark.parametrize("mu", [0.5, 1.5])
def test_one_shot_interval_covers_the_true_epsilon_at_its_confidence(mu):
    """Seeded simulation: 400 audits of exactly Gaussian cosines (n = 150 per side). Each one-sided limit at 0.95
    must hold in 95% of them; 400 Bernoulli(0.95) trials stay within ±3.3 standard deviations (±0.036)."""
    true_eps, hits_lo, hits_hi, trials = gdp_epsilon(mu, 1e-5), 0, 0, 400
    rng = np.random.default_rng(12)
    for _ in range(trials):
        est = one_shot_epsilon(rng.normal(mu * 0.01, 0.01, 150), rng.normal(0, 0.01, 150), 1e-5)
        lo, hi = one_shot_interval(est, 0.95)
        assert lo <= est.epsilon <= hi
        hits_lo += lo <= true_eps
        hits_hi += true_eps <= hi
    band = 3.3 * math.sqrt(0.95 * 0.05 / trials)
    assert abs(hits_lo / trials - 0.95) < band and abs(hits_hi / trials - 0.95) < band
    with pytest.raises(FedleakError, match="confidence"):
        one_shot_interval(est, 1.0)
