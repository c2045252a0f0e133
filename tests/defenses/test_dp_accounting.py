"""ε from dp-accounting's RDP and PLD accountants, cross-checked against the exact composition of Gaussian
mechanisms (μ-GDP), fedleak's own RDP accountant (fedleak.defenses.accountant) and Opacus's PRV accountant."""

import math
import warnings

import numpy as np
import pytest

pytest.importorskip("dp_accounting")

from rdp_reference import DEFAULT_ORDERS, RDPAccountant, rdp_sampled_gaussian  # noqa: E402
from rdp_reference import epsilon as fedleak_rdp_epsilon  # noqa: E402
from fedleak.defenses.dp_accounting import (  # noqa: E402
    DEFAULT_ORDERS as LIBRARY_ORDERS,
    accountant_label,
    client_level_epsilon,
    fixed_size_epsilon,
    dpsgd_epsilon,
    history_epsilon,
    sampled_gaussian_event,
)
from fedleak.metrics.epsilon import gdp_epsilon  # noqa: E402

SAMPLED = [(0.01, 1.1, 1000), (0.02, 0.8, 500), (0.05, 1.0, 200), (0.5, 2.0, 20)]


@pytest.fixture(autouse=True)
def _quiet_absl():
    import logging

    logging.getLogger("absl").setLevel(logging.ERROR)  # dp-accounting logs excluded RDP orders as warnings


@pytest.mark.parametrize("sigma,steps", [(2.0, 30), (5.0, 1), (1.0, 20), (20.0, 1000)])
def test_full_participation_matches_exact_gaussian_composition(sigma, steps):
    """q = 1: T Gaussian mechanisms with noise σ compose exactly to μ-GDP with μ = √T/σ."""
    exact = gdp_epsilon(math.sqrt(steps) / sigma, 1e-5)
    pld = dpsgd_epsilon(1.0, sigma, steps, 1e-5, "pld")
    rdp = dpsgd_epsilon(1.0, sigma, steps, 1e-5, "rdp")
    assert exact - 1e-6 <= pld <= exact + 2e-3 + 1e-3 * exact  # pessimistic discretisation, ~1e-4 per unit ε
    assert rdp >= exact  # RDP conversion is an upper bound
    assert rdp == pytest.approx(fedleak_rdp_epsilon(1.0, sigma, steps, 1e-5), rel=1e-12)  # closed form on both


@pytest.mark.parametrize("q,sigma,steps", SAMPLED)
def test_rdp_agrees_with_fedleak_accountant(q, sigma, steps):
    """Integer orders: both compute the same finite binomial sum. Fractional orders: dp-accounting 0.6 sums the
    series' terms without their alternating signs (an upper bound, sometimes dropped as non-convergent), while
    fedleak's matches numerical integration (tests/test_defense_accountant.py). So its ε is >= fedleak's, and
    equal when both optimise over integer orders only."""
    import dp_accounting as dpa

    got = dpsgd_epsilon(q, sigma, steps, 1e-5, "rdp")
    mine = fedleak_rdp_epsilon(q, sigma, steps, 1e-5)
    assert mine - 1e-9 <= got <= mine * 1.01
    ints = [a for a in DEFAULT_ORDERS if float(a).is_integer()]
    acc = dpa.rdp.RdpAccountant(ints)
    acc.compose(sampled_gaussian_event(q, sigma, steps))
    np.testing.assert_allclose(np.asarray(acc.rdp), steps * rdp_sampled_gaussian(q, sigma, ints), rtol=1e-9)
    assert acc.get_epsilon(1e-5) == pytest.approx(fedleak_rdp_epsilon(q, sigma, steps, 1e-5, tuple(ints)), rel=1e-9)


@pytest.mark.parametrize("q,sigma,steps", SAMPLED[:2])
def test_pld_is_tighter_than_rdp_and_agrees_with_opacus_prv(q, sigma, steps):
    pld = dpsgd_epsilon(q, sigma, steps, 1e-5, "pld")
    assert pld < dpsgd_epsilon(q, sigma, steps, 1e-5, "rdp")
    accountants = pytest.importorskip("opacus.accountants")
    prv = accountants.PRVAccountant()
    for _ in range(steps):
        prv.step(noise_multiplier=sigma, sample_rate=q)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = prv.get_epsilon(delta=1e-5, eps_error=0.01)
    # two independent numerical methods for the same exact ε, each accurate to ~0.01
    assert pld == pytest.approx(ref, abs=0.03)


def test_heterogeneous_history_and_client_level():
    hist = [(0.02, 1.0, 30), (0.1, 1.5, 7), (1.0, 4.0, 3)]
    mine = RDPAccountant()
    for q, s, n in hist:
        mine.step(q, s, n)
    rdp = history_epsilon(hist, 1e-5, "rdp")
    assert mine.epsilon(1e-5) - 1e-9 <= rdp <= mine.epsilon(1e-5) * 1.01
    assert history_epsilon(hist, 1e-5, "pld") < rdp
    # client-level DP-FedAvg is the same mechanism with clients as records
    assert client_level_epsilon(0.1, 1.5, 7, 1e-5, "pld") == dpsgd_epsilon(0.1, 1.5, 7, 1e-5, "pld")
    # per-upload noise, no amplification: q = 1 over the rounds taken part in = exact μ-GDP
    assert client_level_epsilon(1.0, 4.0, 16, 1e-5, "pld") == pytest.approx(gdp_epsilon(1.0, 1e-5), abs=5e-3)


def test_monotone_and_edge_cases():
    base = dpsgd_epsilon(0.05, 1.0, 100, 1e-5, "rdp")
    assert dpsgd_epsilon(0.05, 2.0, 100, 1e-5, "rdp") < base < dpsgd_epsilon(0.05, 1.0, 400, 1e-5, "rdp")
    assert dpsgd_epsilon(0.01, 1.0, 100, 1e-5, "rdp") < base
    assert dpsgd_epsilon(0.05, 1.0, 0, 1e-5) == 0.0
    assert dpsgd_epsilon(0.0, 1.0, 100, 1e-5) == 0.0
    assert math.isinf(dpsgd_epsilon(0.05, 0.0, 100, 1e-5))
    assert history_epsilon([], 1e-5) == 0.0


@pytest.mark.parametrize("args,match", [
    ((1.5, 1.0, 10, 1e-5), "sampling rate"),
    ((0.1, -1.0, 10, 1e-5), "noise multiplier"),
    ((0.1, 1.0, 2.5, 1e-5), "non-negative integer"),
    ((0.1, 1.0, 10, 0.0), "delta"),
])
def test_bad_parameters_raise(args, match):
    with pytest.raises(ValueError, match=match):
        dpsgd_epsilon(*args)


def test_unknown_accountant_is_named():
    with pytest.raises(ValueError, match="unknown accountant 'moments'; use one of rdp, pld"):
        dpsgd_epsilon(0.1, 1.0, 10, 1e-5, "moments")


def test_orders_and_labels():
    assert LIBRARY_ORDERS == DEFAULT_ORDERS  # the reference's grid is Opacus's (test_defense_accountant.py)
    assert accountant_label("rdp") == "dp-accounting RDP" and accountant_label("pld") == "dp-accounting PLD"
    with pytest.raises(ValueError, match="unknown accountant 'prv'"):
        accountant_label("prv")


def _pair_epsilon(q, z, delta):
    """A lower bound on the exact ε of one round of the fixed-size sampled Gaussian mechanism (replace-one): the
    ε at δ between the output distributions of one worst-case pair of neighbouring data sets, by quadrature.

    Records are scalars in [−1, 1] (replace-one L2 sensitivity 2), the noise std is 2z. D: every record −1, so the
    output is N(−1, (2z)²); D': record k replaced by +1, sampled with probability q = m/K (m = 1), so the output
    is (1 − q)·N(−1, (2z)²) + q·N(+1, (2z)²). δ(ε) is the larger hockey-stick divergence of the two directions."""
    from scipy import integrate, optimize
    from scipy.stats import norm

    s = 2 * z
    p = lambda x: norm.pdf(x, -1, s)  # noqa: E731
    p2 = lambda x: (1 - q) * norm.pdf(x, -1, s) + q * norm.pdf(x, 1, s)  # noqa: E731

    def hs(eps):
        lo, hi = -1 - 40 * s, 1 + 40 * s
        a = integrate.quad(lambda x: max(0.0, p2(x) - math.exp(eps) * p(x)), lo, hi, limit=400, points=[-1, 1])[0]
        b = integrate.quad(lambda x: max(0.0, p(x) - math.exp(eps) * p2(x)), lo, hi, limit=400, points=[-1, 1])[0]
        return max(a, b) - delta

    return 0.0 if hs(0.0) <= 0 else optimize.brentq(hs, 0.0, 50.0, xtol=1e-9)


@pytest.mark.parametrize("K,z", [(4, 1.0), (10, 0.7), (2, 2.0)])
def test_fixed_size_sampling_bounds_a_worst_case_pair_and_amplifies(K, z):
    """One round, 1 of K clients: dp-accounting's bound (RDP, replace-one, Wang et al. 2019 Thm. 27) lies above
    the exact ε of a worst-case neighbouring pair (so it is not obviously wrong), and below the unsampled
    Gaussian mechanism's (sampling amplifies)."""
    delta = 1e-5
    got = fixed_size_epsilon(K, 1, z, 1, delta)
    assert _pair_epsilon(1 / K, z, delta) <= got < fedleak_rdp_epsilon(1.0, z, 1, delta)
    # every record sampled: the plain Gaussian mechanism's RDP, α/(2z²), the same conversion as the reference
    assert fixed_size_epsilon(K, K, z, 7, delta) == pytest.approx(fedleak_rdp_epsilon(1.0, z, 7, delta), rel=1e-9)
    # more rounds, more ε; a larger sample, more ε
    assert got < fixed_size_epsilon(K, 1, z, 5, delta)
    if K > 2:
        assert got < fixed_size_epsilon(K, 2, z, 1, delta)


def test_fixed_size_edge_cases():
    assert fixed_size_epsilon(5, 2, 1.0, 0, 1e-5) == 0.0
    assert math.isinf(fixed_size_epsilon(5, 2, 0.0, 3, 1e-5))
    for args in [(5, 6, 1.0, 3, 1e-5), (5, 0, 1.0, 3, 1e-5), (5, 2, 1.0, 3, 0.0), (5, 2, -1.0, 3, 1e-5)]:
        with pytest.raises(ValueError):
            fixed_size_epsilon(*args)


def test_dropped_orders_are_not_logged_into_a_run(caplog):
    """dp-accounting warns (absl) for every fractional RDP order it drops; a run computes ε every round, so the
    wrapper silences absl while it computes and restores its level."""
    import logging

    log = logging.getLogger("absl")
    log.setLevel(logging.NOTSET)
    with caplog.at_level(logging.WARNING):
        dpsgd_epsilon(0.5, 2.0, 23, 1e-5, "rdp")  # drops orders 1.5-1.9 (test_rdp_agrees_with_fedleak_accountant)
        fixed_size_epsilon(50, 5, 1.3, 17, 1e-5)
    assert not [r for r in caplog.records if r.name == "absl"]
    assert log.level == logging.NOTSET
