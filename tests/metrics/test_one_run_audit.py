"""One-run audit (Steinke, Nasr & Jagielski 2023): the p-value against a brute-force evaluation of the theorem's
binomial tail, the ε bound against a closed form, and validity / tightness on mechanisms with known ε."""

import math

import numpy as np
import pytest

from fedleak.errors import FedleakError
from fedleak.metrics.epsilon import gdp_epsilon
from fedleak.metrics.one_run_audit import (
    epsilon_lower_bound,
    guesses_from_scores,
    one_run_audit,
    one_run_audit_best,
    p_value,
)


def _brute_p_value(m, r, v, eps, delta):
    """The theorem written out: f(j) = Σ_{t >= j} C(r, t) p^t (1 − p)^(r − t), p = e^ε / (1 + e^ε), and
    P[V >= v] <= f(v) + 2 m δ max_{i = 1..m} (f(v − i) − f(v)) / i  (f(j) = 1 for j <= 0)."""
    p = math.exp(eps) / (1 + math.exp(eps))

    def f(j):
        if j <= 0:
            return 1.0
        return math.fsum(math.comb(r, t) * p**t * (1 - p) ** (r - t) for t in range(j, r + 1))

    fv = f(v)
    extra = max((f(v - i) - fv) / i for i in range(1, m + 1))
    return min(1.0, fv + 2 * m * delta * extra)


@pytest.mark.parametrize("m,r,v", [(10, 10, 9), (50, 20, 15), (200, 60, 45), (200, 200, 120), (30, 5, 1)])
@pytest.mark.parametrize("eps", [0.0, 0.3, 1.0, 2.5])
@pytest.mark.parametrize("delta", [0.0, 1e-4, 1e-2])
def test_p_value_matches_brute_force_theorem(m, r, v, eps, delta):
    got, ref = p_value(m, r, v, eps, delta), _brute_p_value(m, r, v, eps, delta)
    assert got == pytest.approx(ref, rel=1e-9, abs=1e-14)


@pytest.mark.parametrize("r", [1, 5, 20, 100, 1000])
@pytest.mark.parametrize("conf", [0.95, 0.99])
def test_all_guesses_correct_has_a_closed_form(r, conf):
    """v = r, δ = 0: p-value = p^r, so ε̂ = logit((1 − conf)^(1/r)) (0 if that is below 1/2)."""
    p = (1 - conf) ** (1 / r)
    expect = max(0.0, math.log(p / (1 - p)))
    assert epsilon_lower_bound(10 * r, r, r, 0.0, conf) == pytest.approx(expect, rel=1e-8, abs=1e-9)


def test_bound_is_the_first_rejected_epsilon_and_p_value_is_monotone():
    rng = np.random.default_rng(0)
    for _ in range(60):
        m = int(rng.integers(20, 2000))
        r = int(rng.integers(1, m + 1))
        v = int(rng.integers(0, r + 1))
        delta = float(10 ** rng.uniform(-7, -2)) if rng.random() < 0.7 else 0.0
        grid = np.linspace(0, 10, 101)
        ps = [p_value(m, r, v, float(e), delta) for e in grid]
        assert np.all(np.diff(ps) >= -1e-12), (m, r, v, delta)
        e = epsilon_lower_bound(m, r, v, delta)
        if e > 0:
            assert p_value(m, r, v, max(0.0, e - 1e-6), delta) <= 0.05 + 1e-9
            assert p_value(m, r, v, e + 1e-6, delta) > 0.05
        else:
            assert p_value(m, r, v, 0.0, delta) > 0.05 - 1e-12 or v == 0


def test_randomised_response_failure_probability_is_at_most_beta():
    """ε-randomised response guesses are correct with probability p = e^ε/(1+e^ε), so V ~ Binomial(r, p): the
    exact probability that the bound exceeds ε, summed over v, must be <= 5% (the theorem is tight here)."""
    eps, r = 1.0, 300
    p = math.exp(eps) / (1 + math.exp(eps))
    fail = math.fsum(math.comb(r, v) * p**v * (1 - p) ** (r - v)
                     for v in range(r + 1) if epsilon_lower_bound(r, r, v) > eps)
    assert 0.02 < fail <= 0.05


def test_guesses_from_scores_hand_case():
    s = np.array([0.1, 5.0, -2.0, 3.0, 0.0, 3.0])
    np.testing.assert_array_equal(guesses_from_scores(s, 2, 1), [0, 1, -1, 1, 0, 0])  # tie at 3.0: first wins
    np.testing.assert_array_equal(guesses_from_scores(s, 0, 0), np.zeros(6))
    t = guesses_from_scores(s, 3, 3)
    assert (t != 0).all() and t[1] == 1 and t[2] == -1


def test_one_run_audit_counts_by_hand():
    scores = np.array([9.0, 8, 7, 6, 5, 4, 3, 2, 1, 0])
    included = np.array([1, 1, 0, 1, 0, 1, 0, 0, 1, 0])
    a = one_run_audit(scores, included, k_plus=3, k_minus=2, delta=1e-3)
    # guesses: in = {9, 8, 7} (2 correct), out = {1, 0} (1 correct)
    assert (a.m, a.guesses, a.correct) == (10, 5, 3)
    assert a.epsilon == epsilon_lower_bound(10, 5, 3, 1e-3) == 0.0  # 3 of 5 is no evidence


def test_best_of_choices_uses_bonferroni():
    rng = np.random.default_rng(1)
    inc = rng.random(2000) < 0.5
    s = 1.5 * inc + rng.normal(0, 1, 2000)
    choices = [(50, 0), (200, 0), (200, 200)]
    best = one_run_audit_best(s, inc, choices, delta=1e-5)
    singles = [one_run_audit(s, inc, kp, km, 1e-5, confidence=1 - 0.05 / 3).epsilon for kp, km in choices]
    assert best.epsilon == max(singles) and best.confidence == 0.95
    assert best.epsilon < max(one_run_audit(s, inc, kp, km, 1e-5).epsilon for kp, km in choices)


def _laplace_canaries(rng, m, eps):
    inc = rng.random(m) < 0.5
    return inc + rng.laplace(0, 1 / eps, m), inc  # (scores, coins); sensitivity 1, scale 1/ε: ε-DP per canary


def test_laplace_canaries_bound_is_valid_and_approaches_epsilon():
    """Above the shift (and below 0) the Laplace likelihood ratio is exactly e^ε, so the top/bottom quarter
    guesses behave like ε-randomised response: the bound stays <= ε in >= 95% of seeds and tends to ε."""
    eps = 1.0
    bounds = np.array([one_run_audit(*_laplace_canaries(np.random.default_rng(s), 1000, eps), 250, 250).epsilon
                       for s in range(300)])
    assert (bounds <= eps).mean() >= 0.95
    medians = [np.median([one_run_audit(*_laplace_canaries(np.random.default_rng(100 + s), m, eps),
                                        m // 4, m // 4).epsilon for s in range(5)])
               for m in (1000, 10_000, 100_000)]
    assert medians[0] < medians[1] < medians[2] <= eps
    assert medians[2] > eps - 0.05  # r = 50,000 guesses: the binomial bound is within ~0.02 of ε


def test_gaussian_canaries_bound_is_valid_and_grows_with_m():
    """Gaussian mechanism (shift μ = 2, unit noise) per canary: (ε, δ)-DP with ε = gdp_epsilon(2, δ)."""
    mu, delta = 2.0, 1e-5
    true_eps = gdp_epsilon(mu, delta)

    def audit(seed, m):
        rng = np.random.default_rng(seed)
        inc = rng.random(m) < 0.5
        return one_run_audit(mu * inc + rng.normal(0, 1, m), inc, m // 20, 0, delta).epsilon

    small = np.array([audit(s, 1000) for s in range(100)])
    assert (small <= true_eps).mean() >= 0.95
    medians = [np.median([audit(1000 + s, m) for s in range(5)]) for m in (200, 2000, 20_000)]
    assert medians[0] < medians[1] < medians[2] < true_eps
    assert medians[2] > 3.0  # far from ε = 10: thresholding a Gaussian caps the one-run bound


def test_bad_inputs_are_user_errors():
    with pytest.raises(FedleakError, match="correct <= guesses <= canaries"):
        p_value(10, 11, 3, 1.0)
    with pytest.raises(FedleakError, match="k_plus"):
        guesses_from_scores(np.arange(5.0), 4, 2)
    with pytest.raises(FedleakError, match="included"):
        one_run_audit(np.arange(5.0), np.array([1, 0, 2, 0, 1]), 1)
    with pytest.raises(FedleakError, match="confidence"):
        epsilon_lower_bound(10, 5, 5, confidence=1.0)
