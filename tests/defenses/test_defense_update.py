"""perturb / sparse / quant: the mechanism on Δ, checked against independent NumPy computations."""

import math

import numpy as np
import pytest
import torch

from conftest import assert_within, rounding_tol, tiny_config
from fedleak.config import ConfigError, DefenseConfig
from rdp_reference import epsilon
from fedleak.defenses.dp_accounting import fixed_size_epsilon
from fedleak.defenses.update import Perturb, Quant, Sparse
from fedleak.defenses import build_defense


def _delta(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return {
        "big.weight": torch.randn(40, 60, generator=g, dtype=dtype),  # 2400 entries
        "mid.weight": torch.randn(1001, generator=g, dtype=dtype),  # just above 1000
        "edge.weight": torch.randn(1000, generator=g, dtype=dtype),  # exactly 1000: stays dense
        "big.bias": torch.randn(40, generator=g, dtype=dtype),
    }


def _gen(s=1):
    return torch.Generator().manual_seed(s)


# ----------------------------------------------------------------------------------------------- params

def test_unknown_and_bad_params_are_one_line_errors():
    cfg = tiny_config()
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) sigmaa; allowed: accountant, clip, delta, sigma"):
        build_defense(DefenseConfig(name="perturb", params={"sigmaa": 1}), cfg)
    with pytest.raises(ConfigError, match="'p' must lie in"):
        Sparse({"p": 1.5})
    with pytest.raises(ConfigError, match="'rounding' must be one of floor, stochastic"):
        Quant({"rounding": "nearest"})
    with pytest.raises(ConfigError, match="unknown defense 'sparsify'; choose from: .*sparse"):
        build_defense(DefenseConfig(name="sparsify"), cfg)
    for msg in (str(e) for e in [ConfigError("x")]):
        assert "\n" not in msg


# ---------------------------------------------------------------------------------------------- perturb

@pytest.mark.numerics  # float32 randn takes another (vectorised) kernel per CPU capability
def test_perturb_raw_adds_gaussian_noise_to_every_parameter():
    d = {"w": torch.zeros(300, 400), "b": torch.zeros(3)}
    out = Perturb({"sigma": 0.2}).transform_update(d, _gen())
    noise = out["w"].numpy().ravel()
    assert abs(noise.std() - 0.2) < 0.2 * 0.01 and abs(noise.mean()) < 0.2 * 0.01
    assert (out["b"] != 0).all()  # small tensors too
    # the update itself passes through unchanged apart from the noise (no clipping, no scaling)
    d2 = {"w": torch.full((300, 400), 5.0), "b": torch.ones(3)}
    out2 = Perturb({"sigma": 0.2}).transform_update(d2, _gen())
    assert_within(out2["w"] - 5.0, out["w"], rounding_tol(1, 5.0), "noise on 5.0")  # one float32 add at scale 5
    assert Perturb({"sigma": 0.2}).privacy_spent(3) is None  # no guarantee without clipping


@pytest.mark.numerics
def test_perturb_dp_clips_the_whole_update_then_adds_sigma_c_noise():
    d = _delta()
    norm = math.sqrt(sum(float((v.double() ** 2).sum()) for v in d.values()))
    C = norm / 4
    out = Perturb({"sigma": 0.0, "clip": C}).transform_update(d, _gen())
    out_norm = math.sqrt(sum(float((v.double() ** 2).sum()) for v in out.values()))
    # the update's norm may be taken in float32 (P terms), then every entry is scaled once
    P = sum(v.numel() for v in d.values())
    rel = rounding_tol(P, 1.0)
    assert out_norm == pytest.approx(C, rel=rel)
    for n in d:  # same direction: a common scale factor
        ref = d[n].double().numpy() * (C / norm)
        assert_within(out[n], ref, rel * np.abs(ref), n)
    # an update inside the ball is not rescaled
    small = Perturb({"sigma": 0.0, "clip": 10 * norm}).transform_update(d, _gen())
    for n in d:
        np.testing.assert_allclose(small[n].numpy(), d[n].numpy(), rtol=1e-6)
    # noise std is sigma * C
    noisy = Perturb({"sigma": 0.5, "clip": C}).transform_update(d, _gen())
    resid = np.concatenate([(noisy[n] - out[n]).numpy().ravel() for n in d])
    assert resid.std() == pytest.approx(0.5 * C, rel=0.03)


def test_perturb_dp_reports_epsilon_per_round_from_the_accountant():
    cfg = tiny_config()
    d = Perturb({"sigma": 1.3, "clip": 1.0, "delta": 1e-5}, cfg)
    for r in range(3):
        rec = d.privacy_spent(r)
        assert rec["steps"] == r + 1
        assert rec["epsilon"] == pytest.approx(epsilon(1.0, 1.3, r + 1, 1e-5))
        assert rec["delta"] == 1e-5
    # partial participation: the most exposed defended client's number of rounds
    from fedleak.seeding import participants

    cfg = tiny_config(partition__num_clients=4, fl__participation=0.5, fl__rounds=6,
                      defense={"name": "perturb", "params": {"sigma": 1.0, "clip": 1.0}, "clients": [2]})
    d = build_defense(cfg.defense, cfg)
    for r in range(6):
        n = sum(2 in participants(cfg, t) for t in range(r + 1))
        rec = d.privacy_spent(r)
        assert rec["steps"] == n
        assert rec["epsilon"] == pytest.approx(epsilon(1.0, 1.0, n, 1e-5), rel=1e-12) if n else rec["epsilon"] == 0
        assert rec["accountant"] == "dp-accounting RDP" and rec["sampling"] == "none"
        # against an observer of the global models: 2 of 4 clients per round without replacement, replace-one
        # (noise multiplier σ/2), every round counts; amplified below the unsampled replace-one figure
        assert rec["aggregate_sampling"].startswith("2 of 4 clients per round without replacement")
        assert rec["epsilon_aggregate"] == fixed_size_epsilon(4, 2, 0.5, r + 1, 1e-5)
        assert rec["epsilon_aggregate"] < epsilon(1.0, 0.5, r + 1, 1e-5)
    assert rec["aggregate_noise_multiplier"] == 0.5  # no federation weights: the client's own noise only
    # full participation: nothing to amplify, no aggregate figure
    assert "epsilon_aggregate" not in Perturb({"sigma": 1.0, "clip": 1.0}, tiny_config()).privacy_spent(2)


@pytest.mark.parametrize("seed", range(6))
def test_aggregate_noise_multiplier_is_the_worst_case_over_subsets(seed):
    """Brute force over every client k that is defended and every m-subset S holding k: the global model's noise
    multiplier for k is σ·sqrt(Σ_{j∈S defended} w_j²) / (2 w_k). The reported one is never above the smallest
    (a valid bound), and equals it when the defended clients' weights are equal."""
    from itertools import combinations

    from fedleak.defenses.update import aggregate_epsilon

    rng = np.random.default_rng(seed)
    K = int(rng.integers(4, 8))
    m = int(rng.integers(2, K))
    defended = sorted(rng.choice(K, size=int(rng.integers(1, K + 1)), replace=False).tolist())
    equal = seed % 2 == 0
    w = np.full(K, 30.0) if equal else rng.integers(5, 60, size=K).astype(float)
    cfg = tiny_config(partition__num_clients=K, fl__participation=m / K,
                      defense={"name": "perturb", "params": {"sigma": 1.3, "clip": 1.0}, "clients": defended})
    got = aggregate_epsilon(cfg, 1.3, 5, 1e-5, w)
    exact = min(1.3 * math.sqrt(sum(w[j] ** 2 for j in S if j in defended)) / (2 * w[k])
                for k in defended for S in combinations(range(K), m) if k in S)
    z = got["aggregate_noise_multiplier"]
    assert z <= exact + 1e-12
    if equal:
        assert z == pytest.approx(exact, rel=1e-12)
    assert got["epsilon_aggregate"] == fixed_size_epsilon(K, m, z, 5, 1e-5)


def test_engine_gives_perturb_the_federation_weights(tmp_path):
    from fedleak.fl.simulation import train
    from fedleak.signals.store import read_metrics, read_split

    cfg = tiny_config(partition__num_clients=4, fl__participation=0.5, fl__rounds=2, signals__rounds=[0],
                      defense={"name": "perturb", "params": {"sigma": 1.0, "clip": 1.0}})
    run = train(cfg, tmp_path / "r", quiet=True)
    w = np.array([len(c) for c in read_split(run)], dtype=float)
    z = 0.5 * math.sqrt(1 + (w.min() / w.max()) ** 2)  # 2 of 4, every client defended
    for rec in read_metrics(run):
        assert rec["privacy"]["aggregate_noise_multiplier"] == pytest.approx(z, rel=1e-12)
        assert rec["privacy"]["epsilon_aggregate"] == fixed_size_epsilon(4, 2, z, rec["round"] + 1, 1e-5)


def test_perturb_pld_accountant_matches_the_exact_gaussian_composition():
    from fedleak.metrics.epsilon import gdp_epsilon

    d = Perturb({"sigma": 2.0, "clip": 1.0, "accountant": "pld"}, tiny_config())
    rec = d.privacy_spent(15)  # 16 rounds of a Gaussian mechanism with σ = 2: exactly μ-GDP, μ = √16/2 = 2
    assert rec["accountant"] == "dp-accounting PLD"
    exact = gdp_epsilon(2.0, 1e-5)
    assert exact - 1e-6 <= rec["epsilon"] <= exact + 5e-3


# ----------------------------------------------------------------------------------------------- sparse

@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 0.99])
def test_sparse_layer_keeps_exactly_the_top_k_of_big_tensors(p):
    d = _delta()
    out = Sparse({"p": p}).transform_update(d, _gen())
    for n, v in d.items():
        a, o = v.numpy().ravel(), out[n].numpy().ravel()
        if a.size > 1000:
            k = int(a.size * (1 - p))
            top = set(np.argsort(-np.abs(a), kind="stable")[:k].tolist())
            nz = set(np.flatnonzero(o).tolist())
            assert nz == top, n
            np.testing.assert_array_equal(o[list(top)], a[list(top)])  # kept values untouched
        else:
            np.testing.assert_array_equal(o, a)  # <= 1000 entries (incl. exactly 1000): dense


def test_sparse_global_keeps_the_top_k_over_all_entries():
    d = _delta()
    out = Sparse({"p": 0.8, "scope": "global"}).transform_update(d, _gen())
    a = np.concatenate([v.numpy().ravel() for v in d.values()])
    o = np.concatenate([out[n].numpy().ravel() for n in d])
    k = int(a.size * 0.2)
    assert set(np.flatnonzero(o)) == set(np.argsort(-np.abs(a))[:k])
    assert (np.abs(o[o != 0]).min() >= np.sort(np.abs(a))[-k])
    assert all(out[n].shape == d[n].shape for n in d)


# ------------------------------------------------------------------------------------------------ quant

@pytest.mark.numerics  # float64 floor() decisions: exact only if every kernel rounds (a − lo) / step the same way
@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_quant_floor_matches_the_original_formula(bits):
    d = _delta(dtype=torch.float64)
    out = Quant({"bits": bits}).transform_update(d, _gen())
    for n, v in d.items():
        a = v.numpy()
        lo, hi = a.min(), a.max()
        step = (hi - lo) / 2**bits
        expect = np.floor((a - lo) / step) * step + lo  # the original's experiments/utils.py formula
        np.testing.assert_allclose(out[n].numpy(), expect, rtol=0, atol=1e-12)
        j = (out[n].numpy() - lo) / step
        assert np.allclose(j, np.round(j)) and j.min() >= 0 and j.max() <= 2**bits
        assert len(np.unique(np.round(j))) <= 2**bits + 1


def test_quant_stochastic_is_on_the_grid_and_unbiased():
    g = torch.Generator().manual_seed(5)
    v = torch.randn(50, generator=g, dtype=torch.float64)
    bits = 2
    lo, hi = float(v.min()), float(v.max())
    step = (hi - lo) / 2**bits
    q = Quant({"bits": bits, "rounding": "stochastic"})
    gen = _gen(11)
    draws = np.stack([q.transform_update({"v": v}, gen)["v"].numpy() for _ in range(4000)])
    j = (draws - lo) / step
    assert np.allclose(j, np.round(j))
    u = (v.numpy() - lo) / step
    # only the two neighbouring grid points occur
    assert ((np.round(j) == np.floor(u)) | (np.round(j) == np.ceil(u))).all()
    # unbiased: mean of the draws -> v (std of a draw <= step/2)
    tol = 5 * (step / 2) / math.sqrt(len(draws))
    assert np.abs(draws.mean(0) - v.numpy()).max() < tol
    # while floor rounding is biased downwards by about step/2 on average
    fl = Quant({"bits": bits}).transform_update({"v": v}, gen)["v"].numpy()
    assert (fl <= v.numpy() + 1e-12).all() and (v.numpy() - fl).mean() > step / 4
