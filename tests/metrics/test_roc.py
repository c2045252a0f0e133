"""ROC metrics against hand-made curves, scikit-learn and the original code's formulas."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import auc as sk_auc
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from fedleak.errors import FedleakError
from fedleak.metrics.roc import (
    chance_p_value,
    fpr_key,
    log_auc_from_curve,
    roc_auc,
    roc_curve,
    roc_metrics,
    tpr_at_fpr,
)

pytestmark = pytest.mark.numerics  # float64 curve/AUC arithmetic against scikit-learn and hand-made cases


def test_hand_made_roc_without_ties():
    # scores ranked: 0.9(M) 0.8(N) 0.7(M) 0.6(M) 0.5(N) 0.4(N)
    y = np.array([1, 0, 1, 1, 0, 0])
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    fpr, tpr, thr = roc_curve(y, s)
    np.testing.assert_allclose(fpr, [0, 0, 1 / 3, 1 / 3, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 1 / 3, 2 / 3, 1, 1, 1])
    assert thr[0] == np.inf and thr[1] == 0.9 and thr[-1] == 0.4
    # pairs (member > non-member): 0.9 beats 3, 0.7 beats 2, 0.6 beats 2 -> 7 of 9
    assert roc_auc(y, s) == pytest.approx(7 / 9)
    # FPR <= 0: only the first member; FPR <= 1/3: all members
    assert tpr_at_fpr(fpr, tpr, 0.0) == pytest.approx(1 / 3)
    assert tpr_at_fpr(fpr, tpr, 1 / 3) == pytest.approx(1.0)
    # strict (the original): FPR < 1/3 -> only points at FPR 0
    assert tpr_at_fpr(fpr, tpr, 1 / 3, strict=True) == pytest.approx(1 / 3)
    m = roc_metrics(y, s, fprs=(0.5,))
    # best balanced accuracy: threshold 0.6 -> TPR 1, FPR 1/3 -> (1 + 2/3) / 2
    assert m.balanced_accuracy == pytest.approx(5 / 6)
    assert m.threshold == 0.6
    assert m.tpr[0.5] == pytest.approx(1.0)


def test_hand_made_roc_with_ties_is_one_diagonal_step():
    y = np.array([1, 0, 1, 0])
    s = np.array([1.0, 1.0, 0.0, 0.0])
    fpr, tpr, _ = roc_curve(y, s)
    np.testing.assert_allclose(fpr, [0, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 1])
    assert roc_auc(y, s) == pytest.approx(0.5)
    # a tie never counts as separating members: zero TPR at zero FPR
    assert tpr_at_fpr(fpr, tpr, 0.0) == 0.0


def test_perfect_and_inverted_and_infinite_scores():
    y = np.array([1, 1, 0, 0, 0])
    # tied infinities form one point, like any other tie
    fpr, tpr, _ = roc_curve(y, np.array([np.inf, np.inf, -np.inf, -np.inf, -np.inf]))
    np.testing.assert_allclose(fpr, [0, 0, 1])
    np.testing.assert_allclose(tpr, [0, 1, 1])
    assert roc_auc(np.array([1, 0, 1, 0]), np.array([-np.inf, -np.inf, 0, 1])) == pytest.approx(0.375)
    assert roc_auc(y, np.array([np.inf, 3, 2, 1, -np.inf])) == 1.0
    assert roc_auc(y, np.array([-np.inf, 0, 1, 2, 3])) == 0.0
    m = roc_metrics(y, np.array([5.0, 4, 3, 2, 1]))
    assert m.log_auc == pytest.approx(1.0)
    assert all(v == 1.0 for v in m.tpr.values())
    assert m.balanced_accuracy == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_curve_and_auc_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = 3000
    y = rng.random(n) < 0.3
    s = rng.normal(size=n) + 0.8 * y
    s = np.round(s, 2)  # plenty of ties
    fpr, tpr, thr = roc_curve(y, s)
    sf, st, sth = sk_roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sf)
    np.testing.assert_allclose(tpr, st)
    np.testing.assert_allclose(thr[1:], sth[1:])
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def _original_tpr_at(y, s, thr):
    """The original code: sklearn roc_curve (drop_intermediate=True); idx = #{fpr < thr}; tpr[idx-1]."""
    fpr, tpr, _ = sk_roc_curve(y, s)
    idx = int((fpr < thr).sum())
    return tpr[idx - 1]


def _original_log_auc(y, s):
    fpr, tpr, _ = sk_roc_curve(y, s)
    with np.errstate(divide="ignore"):
        lf = (np.clip(np.log10(fpr), -5, None) + 5) / 5
        lt = (np.clip(np.log10(tpr), -5, None) + 5) / 5
    return sk_auc(lf, lt)


@pytest.mark.parametrize("seed", [3, 4])
def test_strict_convention_and_log_auc_match_the_original_formulas(seed):
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(2000, bool), np.zeros(5000, bool)]
    s = rng.normal(size=y.size) + 1.2 * y
    fpr, tpr, _ = roc_curve(y, s)
    for t in (0.1, 0.02, 0.01, 0.001, 0.0001):
        assert tpr_at_fpr(fpr, tpr, t, strict=True) == pytest.approx(_original_tpr_at(y, s, t))
    assert log_auc_from_curve(fpr, tpr) == pytest.approx(_original_log_auc(y, s), abs=1e-9)


def test_le_convention_counts_false_positives_exactly():
    # 1000 non-members: FPR <= 0.1% allows exactly one false positive, < 0.1% allows none
    rng = np.random.default_rng(5)
    neg = rng.normal(size=1000)
    order = np.sort(neg)[::-1]
    pos = np.r_[order[0] + 1 + np.arange(7), (order[0] + order[1]) / 2 + np.zeros(5), order[1] - 1 - np.arange(88)]
    y = np.r_[np.ones(pos.size, bool), np.zeros(neg.size, bool)]
    s = np.r_[pos, neg]
    m_le = roc_metrics(y, s, fprs=(0.001,))
    m_lt = roc_metrics(y, s, fprs=(0.001,), strict=True)
    assert m_le.tpr[0.001] == pytest.approx(12 / 100)  # above the 2nd-highest non-member
    assert m_lt.tpr[0.001] == pytest.approx(7 / 100)  # above every non-member
    assert m_le.as_dict()[fpr_key(0.001)] == m_le.tpr[0.001]
    assert fpr_key(0.001) == "tpr@0.1%" and fpr_key(0.1) == "tpr@10%" and fpr_key(0.0001) == "tpr@0.01%"


def test_tpr_at_fpr_against_brute_force_thresholds():
    rng = np.random.default_rng(6)
    y = rng.random(400) < 0.5
    s = np.round(rng.normal(size=400) + y, 1)
    fpr, tpr, _ = roc_curve(y, s)
    for t in (0.0, 0.01, 0.05, 0.2, 0.5):
        best = 0.0
        for th in np.r_[np.inf, np.unique(s)]:
            pred = s >= th
            f = (pred & ~y).sum() / (~y).sum()
            if f <= t:
                best = max(best, (pred & y).sum() / y.sum())
        assert tpr_at_fpr(fpr, tpr, t) == pytest.approx(best)


def test_balanced_accuracy_matches_sklearn_at_every_threshold():
    rng = np.random.default_rng(7)
    y = rng.random(300) < 0.3
    s = np.round(rng.normal(size=300) + y, 1)
    best = max(balanced_accuracy_score(y, s >= th) for th in np.unique(s))
    m = roc_metrics(y, s)
    assert m.balanced_accuracy == pytest.approx(best)
    assert balanced_accuracy_score(y, s >= m.threshold) == pytest.approx(best)


def test_log_auc_of_chance_diagonal_is_one_half():
    fpr = np.logspace(-6, 0, 2001)
    assert log_auc_from_curve(np.r_[0, fpr], np.r_[0, fpr]) == pytest.approx(0.5, abs=1e-6)


def test_bad_inputs_give_clear_errors():
    with pytest.raises(FedleakError, match="member and one non-member"):
        roc_metrics(np.ones(3, bool), np.arange(3.0))
    with pytest.raises(FedleakError, match="NaN"):
        roc_curve(np.array([1, 0]), np.array([np.nan, 0.0]))
    with pytest.raises(FedleakError, match="same length"):
        roc_curve(np.array([1, 0, 1]), np.array([0.0, 1.0]))
    with pytest.raises(FedleakError, match="0/1"):
        roc_curve(np.array([2, 0]), np.array([0.0, 1.0]))


def test_chance_p_value_matches_binomial_tail():
    from scipy.stats import binom

    assert chance_p_value(1000, 0.0, 0.001) == 1.0
    assert chance_p_value(1000, 0.005, 0.001) == pytest.approx(binom.sf(4, 1000, 0.001))
    assert chance_p_value(5000, 0.2, 0.001) < 1e-100
