"""The hand-written reference RDP accountant (tests/defenses/rdp_reference.py) against Opacus's RDP accountant,
numerical integration and the closed form for q = 1."""

import math

import numpy as np
import pytest
from scipy import integrate
from scipy.stats import norm

from rdp_reference import DEFAULT_ORDERS, RDPAccountant, eps_from_rdp, epsilon, rdp_sampled_gaussian

pytestmark = pytest.mark.numerics  # float64 series against quadrature, Opacus and closed forms

CASES = [(0.01, 1.1), (0.1, 0.8), (0.5, 2.0), (0.9, 1.0), (0.2, 0.3), (0.02, 5.0)]


def _a_by_quadrature(q, sigma, alpha):
    """A_α = E_{z~N(0,σ²)}[((1−q) + q·N(z;1,σ²)/N(z;0,σ²))^α] by numerical integration (independent of the series)."""
    def f(z):
        log_ratio = np.logaddexp(math.log1p(-q), math.log(q) + (2 * z - 1) / (2 * sigma**2))
        return math.exp(norm.logpdf(z, 0, sigma) + alpha * log_ratio)

    # the integrand is a mixture of Gaussians centred between 0 and α
    lo, hi = -40 * sigma, alpha + 40 * sigma
    val, _ = integrate.quad(f, lo, hi, points=[0.0, 0.5, alpha], limit=500, epsabs=0, epsrel=1e-11)
    return val


@pytest.mark.parametrize("q,sigma,alpha", [(0.01, 1.1, 1.5), (0.1, 0.8, 2.7), (0.3, 2.0, 7.0), (0.05, 1.0, 12.0),
                                           (0.6, 1.5, 3.3)])
def test_rdp_matches_numerical_integration(q, sigma, alpha):
    expect = math.log(_a_by_quadrature(q, sigma, alpha)) / (alpha - 1)
    got = rdp_sampled_gaussian(q, sigma, [alpha])[0]
    assert got == pytest.approx(expect, rel=1e-6)


def test_full_batch_is_the_gaussian_mechanism_closed_form():
    orders = np.array(DEFAULT_ORDERS)
    np.testing.assert_allclose(rdp_sampled_gaussian(1.0, 1.7), orders / (2 * 1.7**2))
    # ε from the conversion of Balle et al. 2020, minimised over the grid by hand
    T, s, d = 30, 2.0, 1e-5
    expect = min(T * a / (2 * s * s) + math.log((a - 1) / a) - (math.log(d) + math.log(a)) / (a - 1) for a in orders)
    assert epsilon(1.0, s, T, d) == pytest.approx(expect, rel=1e-12)


def test_edge_cases():
    assert epsilon(0.1, 1.0, 0, 1e-5) == 0.0
    assert (rdp_sampled_gaussian(0.0, 1.0) == 0).all()
    assert math.isinf(epsilon(0.1, 0.0, 3, 1e-5))
    with pytest.raises(ValueError):
        eps_from_rdp(np.zeros(len(DEFAULT_ORDERS)), 0.0)
    # more noise -> less ε; more steps -> more ε
    assert epsilon(0.05, 2.0, 100, 1e-5) < epsilon(0.05, 1.0, 100, 1e-5) < epsilon(0.05, 1.0, 400, 1e-5)




@pytest.mark.parametrize("q,sigma", CASES)
def test_rdp_and_epsilon_match_opacus(q, sigma):
    rdp_mod = pytest.importorskip("opacus.accountants.analysis.rdp")
    ref = rdp_mod.compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=list(DEFAULT_ORDERS))
    np.testing.assert_allclose(rdp_sampled_gaussian(q, sigma), ref, rtol=1e-6)
    acc_mod = pytest.importorskip("opacus.accountants")
    acc = acc_mod.RDPAccountant()
    for _ in range(50):
        acc.step(noise_multiplier=sigma, sample_rate=q)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_eps = acc.get_epsilon(delta=1e-5)
    assert epsilon(q, sigma, 50, 1e-5) == pytest.approx(ref_eps, rel=1e-6)


def test_heterogeneous_history_matches_opacus():
    acc_mod = pytest.importorskip("opacus.accountants")
    ref = acc_mod.RDPAccountant()
    mine = RDPAccountant()
    for q, s, n in [(0.02, 1.0, 30), (0.1, 1.5, 7), (1.0, 4.0, 3)]:
        for _ in range(n):
            ref.step(noise_multiplier=s, sample_rate=q)
        mine.step(q, s, n)
    assert mine.epsilon(1e-6) == pytest.approx(ref.get_epsilon(delta=1e-6), rel=1e-6)
