"""Confidence intervals: Clopper–Pearson against scipy's exact binomial test, DeLong against the naive O(mn)
placement formula and a hand-computed case, and the coverage of each interval on simulated data."""

import math

import numpy as np
import pytest
from scipy.stats import binom, binomtest, norm

from fedleak.errors import FedleakError
from fedleak.metrics.intervals import (
    bootstrap_auc_interval,
    clopper_pearson,
    cp_lower,
    cp_upper,
    delong_interval,
    placement_values,
    tpr_intervals,
)
from fedleak.metrics.roc import roc_auc

CASES = [(0, 1), (1, 1), (0, 10), (3, 10), (10, 10), (4, 89), (0, 89), (88, 89), (17, 2000), (1999, 2000)]


@pytest.mark.parametrize("k,n", CASES)
@pytest.mark.parametrize("conf", [0.95, 0.99])
def test_clopper_pearson_matches_scipy_exact(k, n, conf):
    ref = binomtest(k, n).proportion_ci(confidence_level=conf, method="exact")
    lo, hi = clopper_pearson(k, n, conf)
    assert float(lo) == pytest.approx(ref.low, rel=1e-9, abs=1e-15)
    assert float(hi) == pytest.approx(ref.high, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("k,n", CASES)
def test_one_sided_bounds_match_scipy(k, n):
    alpha = 0.025
    low = binomtest(k, n, alternative="greater").proportion_ci(confidence_level=1 - alpha, method="exact").low
    high = binomtest(k, n, alternative="less").proportion_ci(confidence_level=1 - alpha, method="exact").high
    assert float(cp_lower(k, n, alpha)) == pytest.approx(low, rel=1e-9, abs=1e-15)
    assert float(cp_upper(k, n, alpha)) == pytest.approx(high, rel=1e-9, abs=1e-15)


def test_vectorised_bounds_equal_scalar_ones():
    k, n = np.array([0, 3, 10, 5]), np.array([10, 10, 10, 7])
    lo, hi = clopper_pearson(k, n)
    for i in range(k.size):
        a, b = clopper_pearson(int(k[i]), int(n[i]))
        assert lo[i] == a and hi[i] == b


def test_clopper_pearson_exact_coverage_is_at_least_nominal():
    """Coverage P_p(lo(K) <= p <= hi(K)), K ~ Binomial(n, p), summed exactly over K, on a grid of p."""
    n = 40
    k = np.arange(n + 1)
    lo, hi = clopper_pearson(k, n, 0.95)
    for p in np.linspace(0.001, 0.999, 500):
        cover = binom.pmf(k, n, p)[(lo <= p) & (p <= hi)].sum()
        assert cover >= 0.95 - 1e-12, p


def test_tpr_intervals_on_a_hand_made_roc():
    # 10 members, 20 non-members; at FPR <= 10% (2 non-members above) the best threshold keeps 6 members
    members = np.array([9.0, 8, 7, 6, 5.5, 4.5, 2, 1, 0.5, 0.1])
    nonmembers = np.array([5.0, 4.8, 3, 2.5, 1.5] + [0.0] * 15)
    y = np.r_[np.ones(10), np.zeros(20)]
    s = np.r_[members, nonmembers]
    (iv,) = tpr_intervals(y, s, fprs=[0.1])
    # naive: every threshold among the scores, keep those with FPR <= 0.1
    best = max((members >= t).sum() for t in s if (nonmembers >= t).mean() <= 0.1)
    assert (iv.k, iv.n, iv.tpr) == (best, 10, best / 10) == (6, 10, 0.6)
    ref = binomtest(6, 10).proportion_ci(0.95, method="exact")
    assert (iv.lower, iv.upper) == pytest.approx((ref.low, ref.high), rel=1e-9)


def _naive_delong(pos, neg):
    """Independent O(mn) DeLong: ψ by explicit loops, placements, sample variances."""
    m, n = len(pos), len(neg)
    psi = [[1.0 if x > y else 0.5 if x == y else 0.0 for y in neg] for x in pos]
    v10 = [sum(row) / n for row in psi]
    v01 = [sum(psi[i][j] for i in range(m)) / m for j in range(n)]
    auc = sum(v10) / m
    s10 = sum((v - auc) ** 2 for v in v10) / (m - 1)
    s01 = sum((v - auc) ** 2 for v in v01) / (n - 1)
    return auc, math.sqrt(s10 / m + s01 / n), v10, v01


def test_delong_hand_computed_case():
    # members 0.9, 0.8, 0.4; non-members 0.7, 0.4, 0.1 (one tie).
    # V10 = [1, 1, 1/2], V01 = [2/3, 5/6, 1], AUC = 5/6, S10 = 1/12, S01 = 1/36, Var = (1/12 + 1/36)/3 = 1/27.
    y = np.array([1, 1, 1, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.4, 0.7, 0.4, 0.1])
    iv = delong_interval(y, s)
    assert iv.auc == pytest.approx(5 / 6, rel=1e-15)
    assert iv.se == pytest.approx(1 / math.sqrt(27), rel=1e-14)
    z = norm.ppf(0.975)
    assert iv.lower == pytest.approx(5 / 6 - z / math.sqrt(27), rel=1e-12)
    assert iv.upper == 1.0  # clipped
    v10, v01 = placement_values(s[:3], s[3:])
    np.testing.assert_allclose(v10, [1, 1, 0.5])
    np.testing.assert_allclose(v01, [2 / 3, 5 / 6, 1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_delong_matches_naive_formula_with_ties_and_infinities(seed):
    rng = np.random.default_rng(seed)
    pos = np.round(rng.normal(0.7, 1, 37), 1)  # rounding makes many ties
    neg = np.round(rng.normal(0, 1, 52), 1)
    pos[0], neg[0], neg[1] = np.inf, -np.inf, np.inf
    y = np.r_[np.ones(pos.size), np.zeros(neg.size)]
    s = np.r_[pos, neg]
    auc, se, v10, v01 = _naive_delong(pos.tolist(), neg.tolist())
    iv = delong_interval(y, s, confidence=0.9)
    assert iv.auc == pytest.approx(auc, rel=1e-12)
    assert iv.auc == pytest.approx(roc_auc(y, s), rel=1e-12)
    assert iv.se == pytest.approx(se, rel=1e-10)
    assert iv.lower == pytest.approx(max(0, auc - norm.ppf(0.95) * se), rel=1e-10)
    got10, got01 = placement_values(pos, neg)
    np.testing.assert_allclose(got10, v10, rtol=1e-12)
    np.testing.assert_allclose(got01, v01, rtol=1e-12)


def _simulate(rng, m, n, shift):
    y = np.r_[np.ones(m), np.zeros(n)]
    return y, np.r_[rng.normal(shift, 1, m), rng.normal(0, 1, n)]


def test_delong_coverage_on_simulated_data():
    """Members ~ N(1, 1), non-members ~ N(0, 1): true AUC = Φ(1/√2). 1000 draws of 100 + 120 scores; the share of
    95% intervals that contain it has a standard error of ~0.7 points, so [93%, 97%] is a 3-σ band."""
    true_auc = norm.cdf(1 / math.sqrt(2))
    hits = 0
    for seed in range(1000):
        y, s = _simulate(np.random.default_rng(seed), 100, 120, 1.0)
        iv = delong_interval(y, s)
        hits += iv.lower <= true_auc <= iv.upper
    assert 0.93 <= hits / 1000 <= 0.97


@pytest.mark.slow
def test_bootstrap_coverage_and_agreement_with_delong():
    true_auc = norm.cdf(0.8 / math.sqrt(2))
    hits = 0
    for seed in range(200):
        y, s = _simulate(np.random.default_rng(10_000 + seed), 80, 80, 0.8)
        iv = bootstrap_auc_interval(y, s, n_boot=400, seed=seed)
        hits += iv.lower <= true_auc <= iv.upper
    # percentile bootstrap is slightly liberal at this size; 200 draws: SE of the share ~1.5 points
    assert 0.89 <= hits / 200 <= 0.99
    y, s = _simulate(np.random.default_rng(7), 2000, 2000, 0.8)
    b, d = bootstrap_auc_interval(y, s, n_boot=500, seed=1), delong_interval(y, s)
    assert b.auc == pytest.approx(d.auc, rel=1e-12)
    # both estimate the same standard error; a 500-replicate bootstrap SD has ~3% relative error
    assert b.se == pytest.approx(d.se, rel=0.15)


def test_bootstrap_is_seeded_and_stratified():
    y, s = _simulate(np.random.default_rng(3), 30, 50, 1.0)
    a, b = bootstrap_auc_interval(y, s, n_boot=200, seed=5), bootstrap_auc_interval(y, s, n_boot=200, seed=5)
    assert a == b
    # a perfect separation stays perfect in every stratified replicate (an unstratified one could lose a class)
    perfect = bootstrap_auc_interval(np.r_[np.ones(5), np.zeros(5)], np.arange(10.0)[::-1], n_boot=200)
    assert (perfect.auc, perfect.lower, perfect.upper) == (1.0, 1.0, 1.0)


def test_bad_inputs_are_user_errors():
    y = np.array([1, 1, 0, 0])
    with pytest.raises(FedleakError, match="NaN"):
        delong_interval(y, np.array([1.0, np.nan, 0, 0]))
    with pytest.raises(FedleakError, match="at least one member"):
        tpr_intervals(np.zeros(4), np.arange(4.0))
    with pytest.raises(FedleakError, match="at least 2 members"):
        delong_interval(np.array([1, 0, 0]), np.array([1.0, 0, 0.5]))
    with pytest.raises(FedleakError, match="confidence"):
        clopper_pearson(1, 4, confidence=95)
    with pytest.raises(FedleakError, match="0 <= k <= n"):
        cp_upper(5, 4, 0.05)
    with pytest.raises(FedleakError, match="n_boot"):
        bootstrap_auc_interval(y, np.arange(4.0), n_boot=10)
