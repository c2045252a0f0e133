"""Membership attacks against naive loops, closed forms and scipy's p-value combinations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import combine_pvalues, norm

from fedleak.attacks.mia import (
    ATTACKS,
    aggregate,
    evaluate,
    fedmia,
    fedmia_rounds,
    resolve_names,
    run_attacks,
)
from fedleak.attacks.mia.attacks import MAD_TO_SIGMA
from fedleak.errors import FedleakError
from fedleak.metrics.roc import roc_auc, roc_metrics
from fedleak.signals.loading import Signals
from fedleak.signals.store import StoreError

pytestmark = pytest.mark.numerics  # FedMIA z-scores, Φ and p-value combinations in float64


def make_signals(R=4, K=5, N=60, seed=0, participated=None, target=0, owner=None, shift=0.0) -> Signals:
    rng = np.random.default_rng(seed)
    if owner is None:
        owner = rng.integers(-1, K, N)
    mem = owner[None, :] == np.arange(K)[:, None]  # [K, N]
    loss = np.abs(rng.normal(1, 0.5, (R, K, N))) - shift * mem
    cos = rng.normal(0, 0.05, (R, K, N)) + shift * 0.1 * mem
    gn = np.exp(rng.normal(0, 0.5, (R, 1, N))).repeat(K, 1)
    dn = np.exp(rng.normal(0, 0.3, (R, K)))
    dot = cos * np.sqrt(gn * dn[:, :, None])
    part = np.ones((R, K), bool) if participated is None else np.asarray(participated, bool)
    arrs = {"loss": loss, "cos": cos, "gnorm2": gn, "dot": dot, "diff": 2 * dot - gn}
    for a in arrs.values():
        a[~part] = np.nan
    dn = np.where(part, dn, np.nan)
    ids = np.broadcast_to(np.arange(N), (R, K, N)).copy()
    return Signals(
        rounds=np.arange(R) * 10 + 9,
        ids=ids,
        dnorm2=dn,
        participated=part,
        client_test_acc=np.full((R, K), 0.5),
        lr=np.full(R, 0.1),
        owner=np.asarray(owner),
        cand_ids=np.arange(N),
        target=target,
        **arrs,
    )


# ----------------------------------------------------------------- single round and temporal


def test_single_round_attacks_slice_the_target_row():
    sig = make_signals()
    r = 2
    got = run_attacks(sig, ["blackbox-loss", "grad-cosine", "grad-diff", "grad-norm"], round=29, target=3)
    np.testing.assert_array_equal(got["blackbox-loss"], -sig.loss[r, 3])
    np.testing.assert_array_equal(got["grad-cosine"], sig.cos[r, 3])
    np.testing.assert_array_equal(got["grad-diff"], sig.diff[r, 3])
    np.testing.assert_array_equal(got["grad-norm"], -sig.gnorm2[r, 3])
    # grad-diff = ||Δ||² − ||Δ − g||² written out with the store's quantities
    d = sig.dnorm2[r, 3] - (sig.dnorm2[r, 3] - 2 * sig.dot[r, 3] + sig.gnorm2[r, 3])
    np.testing.assert_allclose(got["grad-diff"], d, rtol=1e-9, atol=1e-12)


def test_default_round_is_last_one_the_target_took_part_in():
    part = np.ones((4, 5), bool)
    part[3, 1] = False
    sig = make_signals(participated=part)
    np.testing.assert_array_equal(ATTACKS["blackbox-loss"](sig, target=1), -sig.loss[2, 1])
    np.testing.assert_array_equal(ATTACKS["blackbox-loss"](sig, target=0), -sig.loss[3, 0])
    np.testing.assert_array_equal(ATTACKS["blackbox-loss"](sig, round=-2, target=0), -sig.loss[2, 0])
    with pytest.raises(StoreError, match="did not take part in round 39"):
        ATTACKS["grad-cosine"](sig, round=39, target=1)
    with pytest.raises(StoreError, match="was not recorded"):
        ATTACKS["grad-cosine"](sig, round=5)
    with pytest.raises(StoreError, match="does not exist"):
        ATTACKS["grad-cosine"](sig, target=7)


def test_temporal_attacks_are_means_over_participated_rounds():
    part = np.ones((4, 5), bool)
    part[1, 2] = False
    sig = make_signals(participated=part)
    for name, key, sign in (("loss-series", "loss", -1), ("avg-cosine", "cos", 1), ("avg-diff", "diff", 1), ("avg-norm", "gnorm2", -1)):
        got = ATTACKS[name](sig, target=2)
        want = np.zeros(sig.loss.shape[2])
        for n in range(want.size):
            vals = [getattr(sig, key)[r, 2, n] for r in range(4) if r != 1]
            want[n] = sign * sum(vals) / len(vals)
        np.testing.assert_allclose(got, want, rtol=1e-12)
        assert not np.isnan(got).any()


# ----------------------------------------------------------------- FedMIA


def naive_fedmia(sig, measure, target, ddof=0, eps=1e-8, agg="mean", three_sigma=False, robust=False):
    """Straight from the paper's equations, one candidate and one round at a time."""
    R, K, N = sig.loss.shape
    sign = -1.0 if measure == "loss" else 1.0
    per_round = []
    for r in range(R):
        if not sig.participated[r, target]:
            continue
        shadows = [k for k in range(K) if k != target and sig.participated[r, k]]
        if len(shadows) <= ddof:
            continue
        zs = []
        for n in range(N):
            vals = np.array([sign * getattr(sig, measure)[r, k, n] for k in shadows], float)
            x = sign * getattr(sig, measure)[r, target, n]
            if robust:
                mu = float(np.median(vals))
                sd = math.sqrt((MAD_TO_SIGMA * float(np.median(np.abs(vals - mu)))) ** 2 + eps)
            else:
                if three_sigma:
                    m0, s0 = vals.mean(), vals.std(ddof=ddof)
                    kept = vals[vals < m0 + 3 * s0]
                    vals = kept if kept.size else np.array([vals.min()])
                mu = vals.mean()
                var = ((vals - mu) ** 2).sum() / max(vals.size - ddof, 1)
                sd = math.sqrt(var + eps)
            zs.append((x - mu) / sd)
        per_round.append(zs)
    z = np.array(per_round)
    cdf = norm.cdf(z)
    if agg == "mean":
        return cdf.mean(0)
    if agg == "mean-log":
        return np.log(cdf).mean(0)
    raise AssertionError(agg)


@pytest.mark.parametrize("measure", ["loss", "cos"])
@pytest.mark.parametrize("ddof", [0, 1])
def test_fedmia_matches_naive_loop(measure, ddof):
    part = np.ones((4, 5), bool)
    part[0, 3] = False  # a shadow missing in one round
    part[2, 0] = False  # the target missing in one round
    sig = make_signals(participated=part, shift=0.3)
    got = fedmia(sig, measure, ddof=ddof)
    want = naive_fedmia(sig, measure, 0, ddof=ddof)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    assert list(fedmia_rounds(sig, measure).rounds) == [9, 19, 39]


def test_fedmia_i_and_ii_registry_entries():
    sig = make_signals(shift=0.3)
    got = run_attacks(sig, ["fedmia-i", "fedmia-ii"], target=2, aggregation="mean-log")
    np.testing.assert_allclose(got["fedmia-i"], naive_fedmia(sig, "loss", 2, agg="mean-log"), rtol=1e-10)
    np.testing.assert_allclose(got["fedmia-ii"], naive_fedmia(sig, "cos", 2, agg="mean-log"), rtol=1e-10)


def test_fedmia_closed_form():
    # shadows alternate -1/+1 (mean 0, population variance 1); the target sits at 1.5 in every round
    R, K, N = 3, 5, 2
    sig = make_signals(R=R, K=K, N=N)
    sig.cos[:] = np.array([0.0, -1, 1, -1, 1])[None, :, None]
    sig.cos[:, 0, :] = 1.5
    z = 1.5 / math.sqrt(1 + 1e-8)
    np.testing.assert_allclose(fedmia(sig, "cos"), norm.cdf(z))
    # sample variance (ddof=1): 4 / 3
    np.testing.assert_allclose(fedmia(sig, "cos", ddof=1), norm.cdf(1.5 / math.sqrt(4 / 3 + 1e-8)))
    # identical shadows: σ = sqrt(eps)
    sig.cos[:, 1:, :] = 0.25
    np.testing.assert_allclose(fedmia_rounds(sig, "cos", eps=0.01).z, (1.5 - 0.25) / 0.1)


def test_aggregations_match_scipy_p_value_combinations():
    rng = np.random.default_rng(1)
    z = rng.normal(0.5, 1.2, (7, 40))
    p = norm.sf(z)  # one-tailed p-value of "this is a non-member" per round
    fisher = aggregate(z, "fisher")
    stouffer = aggregate(z, "stouffer")
    for n in range(z.shape[1]):
        assert fisher[n] == pytest.approx(combine_pvalues(p[:, n], method="fisher").statistic, rel=1e-9)
        assert stouffer[n] == pytest.approx(combine_pvalues(p[:, n], method="stouffer").statistic, rel=1e-9)
    np.testing.assert_allclose(aggregate(z, "mean"), norm.cdf(z).mean(0))
    np.testing.assert_allclose(aggregate(z, "mean-log"), np.log(norm.cdf(z)).mean(0))
    np.testing.assert_allclose(aggregate(z, "max"), z.max(0))
    # the log forms stay finite and ordered deep in the tails, where Φ itself saturates
    far = np.array([[40.0, 41.0], [-40.0, -41.0]]).T
    assert np.all(np.isfinite(aggregate(far, "fisher"))) and aggregate(far, "mean-log")[0] > aggregate(far, "mean-log")[1]
    with pytest.raises(FedleakError, match="aggregation"):
        aggregate(z, "median")


def _one_outlier(S: int) -> np.ndarray:
    v = np.zeros(S)
    v[0] = 1.0
    return v


def test_three_sigma_bound_is_sqrt_s_minus_1():
    # closed form: with ddof=0 the largest z-score one of S values can reach is √(S−1), with ddof=1 (S−1)/√S
    rng = np.random.default_rng(2)
    for S in range(2, 15):
        v = _one_outlier(S)
        assert (v[0] - v.mean()) / v.std() == pytest.approx(math.sqrt(S - 1))
        assert (v[0] - v.mean()) / v.std(ddof=1) == pytest.approx((S - 1) / math.sqrt(S))
        x = rng.standard_cauchy((20000, S))
        zmax = ((x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)).max()
        assert zmax <= math.sqrt(S - 1) + 1e-9


@pytest.mark.parametrize("K", [3, 6, 10])
def test_three_sigma_filter_never_fires_with_at_most_9_shadows(K):
    rng = np.random.default_rng(K)
    sig = make_signals(R=3, K=K, N=300, seed=K, shift=0.5)
    sig.cos[:, 1:, :100] = rng.standard_cauchy((3, K - 1, 100))  # heavy tails
    sig.cos[:, 1:, 100:200] = _one_outlier(K - 1)[None, :, None] * 1e6  # the adversarial configuration
    plain = fedmia_rounds(sig, "cos")
    filt = fedmia_rounds(sig, "cos", outlier_filter=True)
    assert filt.n_removed == 0
    np.testing.assert_array_equal(filt.z, plain.z)


def test_three_sigma_filter_with_ten_shadows_sample_std_never_fires():
    sig = make_signals(R=2, K=11, N=50, seed=9)
    sig.cos[:, 1:, :] = _one_outlier(10)[None, :, None] * 5.0
    assert fedmia_rounds(sig, "cos", ddof=1, outlier_filter=True).n_removed == 0


@pytest.mark.parametrize("ddof", [0, 1])
def test_three_sigma_filter_fires_with_many_shadows_and_matches_naive(ddof):
    K = 16  # 15 shadows: an outlier can reach z = √14 ≈ 3.7
    sig = make_signals(R=3, K=K, N=80, seed=4)
    sig.cos[:, 1:, :40] = _one_outlier(K - 1)[None, :, None] * 3.0 + 0.01 * np.random.default_rng(0).normal(size=(3, K - 1, 40))
    sig.cos[:, 1:, 40:50] = 0.3  # all shadows equal: nothing passes the strict rule, "[min]" fallback
    fr = fedmia_rounds(sig, "cos", ddof=ddof, outlier_filter=True)
    assert fr.n_removed >= 3 * 40
    got = aggregate(fr.z, "mean")
    np.testing.assert_allclose(got, naive_fedmia(sig, "cos", 0, ddof=ddof, three_sigma=True), rtol=1e-10, atol=1e-12)


def test_robust_null_matches_naive_median_mad():
    part = np.ones((4, 6), bool)
    part[1, 4] = False
    sig = make_signals(K=6, participated=part, shift=0.2)
    got = fedmia(sig, "loss", robust=True)
    np.testing.assert_allclose(got, naive_fedmia(sig, "loss", 0, robust=True), rtol=1e-10, atol=1e-12)
    # one wild shadow swamps the Gaussian null (every z collapses together) but not the median/MAD one
    sig.loss[:, 5, :] = 1e3
    z_rob = fedmia_rounds(sig, "loss", robust=True).z
    z_gau = fedmia_rounds(sig, "loss").z
    assert z_gau.std() < 0.05 and z_rob.std() > 0.5


def test_fedmia_option_errors():
    sig = make_signals()
    with pytest.raises(FedleakError, match="either"):
        fedmia(sig, "cos", outlier_filter=True, robust=True)
    with pytest.raises(FedleakError, match="ddof"):
        fedmia(sig, "cos", ddof=-1)
    with pytest.raises(FedleakError, match="aggregation"):
        fedmia(sig, "cos", aggregation="median")
    with pytest.raises(FedleakError, match="unknown attack options"):
        run_attacks(sig, "fedmia-ii", agregation="mean")
    with pytest.raises(StoreError, match="at least 5 other clients"):
        fedmia(sig, "cos", ddof=4)


def test_fedmia_separates_members_in_a_planted_signal():
    owner = np.repeat(np.arange(-1, 5), 50)
    sig = make_signals(R=6, K=5, N=owner.size, owner=owner, shift=0.4, seed=3)
    lab = sig.members()
    assert roc_auc(lab, run_attacks(sig, "fedmia-i")["fedmia-i"]) > 0.9


# ----------------------------------------------------------------- registry, evaluation, rotation


def test_resolve_names():
    assert resolve_names(None) == list(ATTACKS)
    assert resolve_names("FedMIA-II, loss-series,fedmia2") == ["fedmia-ii", "loss-series"]
    assert resolve_names(["Blackbox-Loss", "all"])[0] == "blackbox-loss"
    with pytest.raises(FedleakError, match="unknown attack 'nope'"):
        resolve_names("nope")


def test_evaluate_fixed_round_oracle_and_per_round():
    owner = np.repeat(np.arange(-1, 4), 40)
    sig = make_signals(R=5, K=4, N=owner.size, owner=owner, shift=0.3, seed=5)
    ev = evaluate(sig, ["blackbox-loss", "fedmia-i", "loss-series"], round=19, rotate=False)
    m = ev.metrics["attacks"]
    lab = owner == 0
    assert m["blackbox-loss"]["round"] == 19
    assert m["blackbox-loss"]["auc"] == pytest.approx(roc_auc(lab, -sig.loss[1, 0]))
    per = [roc_metrics(lab, -sig.loss[r, 0]).tpr[0.001] for r in range(5)]
    assert m["blackbox-loss"]["per_round"]["tpr@0.1%"] == pytest.approx(per)
    j = int(np.argmax(per))
    assert m["blackbox-loss"]["oracle"]["round"] == int(sig.rounds[j])
    assert "oracle" not in m["fedmia-i"] and "per_round" not in m["loss-series"]
    # FedMIA's per-round curve ranks by the per-round z (the order of Λ̂_r = Φ(z), without Φ's saturation at 1)
    fr = fedmia_rounds(sig, "loss")
    np.testing.assert_allclose(ev.fedmia_per_round["fedmia-i"], norm.cdf(fr.z))
    assert m["fedmia-i"]["per_round"]["auc"][2] == pytest.approx(roc_auc(lab, fr.z[2]))
    assert ev.metrics["rotation"]["done"] is False


def test_rotating_target_mean_and_std_over_clients():
    owner = np.repeat(np.arange(-1, 4), 30)
    sig = make_signals(R=3, K=4, N=owner.size, owner=owner, shift=0.3, seed=6)
    ev = evaluate(sig, ["fedmia-ii", "blackbox-loss"], per_round=False)
    rot = ev.metrics["attacks"]["fedmia-ii"]["rotating"]["auc"]
    want = [roc_auc(owner == t, fedmia(sig, "cos", target=t)) for t in range(4)]
    assert rot["values"] == pytest.approx(want)
    assert rot["mean"] == pytest.approx(np.mean(want))
    assert rot["std"] == pytest.approx(np.std(want, ddof=1))
    assert ev.metrics["rotation"]["targets"] == [0, 1, 2, 3]
    # misaligned rows (official-compat) rule rotation out
    sig.ids[1, 2, 5] = 999
    assert evaluate(sig, "blackbox-loss", per_round=False).metrics["rotation"]["done"] is False
    with pytest.raises(FedleakError, match="not aligned"):
        evaluate(sig, "blackbox-loss", rotate=True)


def test_evaluate_needs_members_and_nan_scores_rank_last():
    owner = np.repeat(np.arange(-1, 3), 20)
    sig = make_signals(R=2, K=4, N=owner.size, owner=owner)
    with pytest.raises(FedleakError, match="member candidates"):
        evaluate(sig, "blackbox-loss", target=3)
    sig.loss[-1, 0, :3] = np.nan
    ev = evaluate(sig, "blackbox-loss", rotate=False)
    assert ev.metrics["attacks"]["blackbox-loss"]["n_nan_scores"] == 3
    assert np.isneginf(ev.scores["blackbox-loss"][:3]).all()
