"""Empirical ε from a ROC: the μ-GDP curve against dp-accounting and numerical integration, the bounded ε against
scipy's exact one-sided binomial bounds and a naive threshold loop, and validity on mechanisms with known ε."""

import math

import numpy as np
import pytest
from scipy import integrate
from scipy.stats import binomtest, norm

from fedleak.errors import FedleakError
from fedleak.metrics.epsilon import (
    bounded_epsilon,
    empirical_epsilon,
    epsilon_from_rates,
    gdp_delta,
    gdp_epsilon,
    split_halves,
)


def _hockey_stick(eps, mu):
    """δ(ε) = ∫ max(0, φ(x − μ) − e^ε φ(x)) dx by quadrature; the integrand is positive for x > ε/μ + μ/2."""
    x0 = eps / mu + mu / 2
    val, _ = integrate.quad(lambda x: norm.pdf(x - mu) - math.exp(eps) * norm.pdf(x), x0, x0 + 40 + mu,
                            epsabs=0, epsrel=1e-12, limit=200)
    return val


@pytest.mark.parametrize("mu", [0.3, 1.0, 2.0, 4.0])
@pytest.mark.parametrize("eps", [0.0, 0.5, 2.0, 6.0])
def test_gdp_delta_matches_numerical_integration(mu, eps):
    ref = _hockey_stick(eps, mu)
    assert gdp_delta(eps, mu) == pytest.approx(ref, rel=1e-8, abs=1e-15)


@pytest.mark.parametrize("mu", [0.1, 0.5, 1.0, 2.0, 3.0, 8.0])
@pytest.mark.parametrize("delta", [1e-10, 1e-5, 1e-3, 0.1])
def test_gdp_epsilon_matches_dp_accounting(mu, delta):
    dpa = pytest.importorskip("dp_accounting")
    # the Gaussian mechanism with sensitivity 1 and noise σ is (1/σ)-GDP
    assert gdp_epsilon(mu, delta) == pytest.approx(dpa.get_epsilon_gaussian(1 / mu, delta), rel=1e-6, abs=1e-9)


def test_gdp_epsilon_edge_cases():
    assert gdp_epsilon(0.0, 1e-5) == 0.0
    assert gdp_epsilon(0.1, 0.5) == 0.0  # δ(0) = 2Φ(0.05) − 1 ≈ 0.04 < 0.5
    assert math.isinf(gdp_epsilon(1.0, 0.0))
    assert gdp_delta(gdp_epsilon(1.5, 1e-6), 1.5) == pytest.approx(1e-6, rel=1e-8)


def test_epsilon_from_rates_hand_cases():
    assert float(epsilon_from_rates(0.5, 0.01, 0.0)) == pytest.approx(math.log(50))
    assert float(epsilon_from_rates(0.5, 0.01, 0.1)) == pytest.approx(math.log(40))
    # the complement test: 1 − FPR = 0.5, 1 − TPR = 0.001 -> log(500)
    assert float(epsilon_from_rates(0.999, 0.5, 0.0)) == pytest.approx(math.log(500))
    assert float(epsilon_from_rates(0.3, 0.4, 0.0)) == 0.0  # worse than chance: no evidence
    assert math.isinf(float(epsilon_from_rates(0.2, 0.0, 0.0)))


def _reference_bound(tp, n_pos, fp, n_neg, delta, alpha):
    tpr_lo = binomtest(tp, n_pos, alternative="greater").proportion_ci(1 - alpha / 2, method="exact").low
    fpr_hi = binomtest(fp, n_neg, alternative="less").proportion_ci(1 - alpha / 2, method="exact").high
    cands = [0.0]
    if tpr_lo > delta:
        cands.append(math.log((tpr_lo - delta) / fpr_hi))
    if 1 - fpr_hi > delta:
        cands.append(math.log((1 - fpr_hi - delta) / (1 - tpr_lo)))
    return max(cands)


@pytest.mark.parametrize("tp,n_pos,fp,n_neg", [(40, 100, 0, 100), (89, 89, 3, 500), (4, 89, 0, 1000),
                                                (999, 1000, 500, 1000), (0, 50, 0, 50), (50, 50, 50, 50)])
@pytest.mark.parametrize("delta", [0.0, 1e-5, 0.05])
def test_bounded_epsilon_matches_scipy_exact_bounds(tp, n_pos, fp, n_neg, delta):
    got = float(bounded_epsilon(tp, n_pos, fp, n_neg, delta, 0.05))
    assert got == pytest.approx(_reference_bound(tp, n_pos, fp, n_neg, delta, 0.05), rel=1e-9, abs=1e-12)


def test_split_is_stratified_seeded_and_half():
    y = np.r_[np.ones(11, bool), np.zeros(30, bool)]
    a, b = split_halves(y, 3), split_halves(y, 3)
    assert (a == b).all() and not (a == split_halves(y, 4)).all()
    assert (a & y).sum() == 5 and (a & ~y).sum() == 15


def _naive_split_bound(y, s, delta, alpha, seed):
    """The held-out procedure written out with loops: thresholds = every selection-half score (and +inf)."""
    sel = split_halves(y, seed)
    sp, sn = s[sel & y], s[sel & ~y]
    best, best_t = -1.0, math.inf
    for t in [math.inf] + sorted(set(s[sel].tolist()), reverse=True):
        e = _reference_bound(int((sp >= t).sum()), sp.size, int((sn >= t).sum()), sn.size, delta, alpha)
        if e > best:
            best, best_t = e, t
    ep, en = s[~sel & y], s[~sel & ~y]
    held = _reference_bound(int((ep >= best_t).sum()), ep.size, int((en >= best_t).sum()), en.size, delta, alpha)
    optimistic = max(_reference_bound(int((s[y] >= t).sum()), int(y.sum()), int((s[~y] >= t).sum()),
                                      int((~y).sum()), delta, alpha) for t in [math.inf] + s.tolist())
    return held, best_t, optimistic


@pytest.mark.parametrize("seed", [0, 1])
def test_empirical_epsilon_matches_naive_procedure(seed):
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(60, bool), np.zeros(80, bool)]
    s = np.r_[np.round(rng.normal(1.5, 1, 60), 1), np.round(rng.normal(0, 1, 80), 1)]  # with ties
    res = empirical_epsilon(y, s, 1e-3, confidence=0.9, seed=seed)
    held, t, optimistic = _naive_split_bound(y, s, 1e-3, 0.1, seed)
    assert res.threshold == t
    assert res.epsilon == pytest.approx(held, rel=1e-9, abs=1e-12)
    assert res.optimistic == pytest.approx(optimistic, rel=1e-9, abs=1e-12)
    assert res.n_pos == 30 and res.n_neg == 40
    assert res.epsilon > 0  # a shift of 1.5σ is visible with 30 + 40 held-out candidates


def test_bound_stays_below_the_true_epsilon_of_the_gaussian_mechanism():
    """Members ~ N(μ, 1), non-members ~ N(0, 1): μ-GDP, true ε = gdp_epsilon(μ, δ). In ≥ 95% of seeds the
    95% bound is below it (here: always, as thresholds on a Gaussian are far from the tangent at δ = 1e-5)."""
    mu, delta, n = 2.0, 1e-5, 2000
    true_eps = gdp_epsilon(mu, delta)
    bounds = []
    for seed in range(100):
        rng = np.random.default_rng(seed)
        s = np.r_[rng.normal(mu, 1, n), rng.normal(0, 1, n)]
        bounds.append(empirical_epsilon(np.r_[np.ones(n), np.zeros(n)], s, delta, seed=seed).epsilon)
    bounds = np.array(bounds)
    assert (bounds <= true_eps).mean() >= 0.95
    assert np.median(bounds) > 1.0  # and it is informative


@pytest.mark.slow
def test_bound_is_nearly_tight_and_still_valid_for_a_pure_dp_mechanism():
    """Laplace mechanism: members ~ 1 + Lap(1), non-members ~ Lap(1) is ε = 1 pure DP and every threshold above 1
    has TPR/FPR = e exactly, so the bound comes close to 1; it must stay <= 1 in >= 95% of seeds."""
    n = 2000
    bounds = []
    for seed in range(200):
        rng = np.random.default_rng(seed)
        s = np.r_[1 + rng.laplace(0, 1, n), rng.laplace(0, 1, n)]
        bounds.append(empirical_epsilon(np.r_[np.ones(n), np.zeros(n)], s, 0.0, seed=seed).epsilon)
    bounds = np.array(bounds)
    assert (bounds <= 1.0).mean() >= 0.95
    assert np.median(bounds) > 0.6  # (0.76 with these seeds)


def test_bad_inputs_are_user_errors():
    y, s = np.r_[np.ones(5), np.zeros(5)], np.arange(10.0)
    with pytest.raises(FedleakError, match="delta"):
        empirical_epsilon(y, s, delta=1.5)
    with pytest.raises(FedleakError, match="at least 2 members"):
        empirical_epsilon(np.r_[1, np.zeros(9)], s, 1e-5)
    with pytest.raises(FedleakError, match="NaN"):
        empirical_epsilon(y, np.r_[np.nan, s[1:]], 1e-5)
