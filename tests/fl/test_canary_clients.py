"""Canary clients (audit.canary_clients): the plan, the uploads against a hand computation, the aggregation of the
engine (loop and stacked), the signals untouched, resume, the audit file, and the one-shot ε of a real small run
against the Gaussian mechanism's known ε and against the accountant's."""

import json
import math

import numpy as np
import pytest
import torch

from conftest import tiny_config
from fedleak.attacks.client_audit import CLIENTS_JSON, METHOD, write_client_audit
from fedleak.config import ConfigError
from fedleak.defenses import build_defense
from fedleak.fl.canary_clients import EVIDENCE, canary_direction, canary_uploads, plan_canary_clients
from fedleak.fl.simulation import train
from fedleak.metrics.epsilon import gdp_epsilon
from fedleak.seeding import Purpose, seed_seq
from fedleak.signals import store

PERTURB = {"name": "perturb", "params": {"sigma": 0.0, "clip": 0.5}}


def _cfg(canaries=8, defense=PERTURB, **over):
    return tiny_config(audit__canary_clients=canaries, defense=defense, **over)


def _final(run):
    return torch.load(run / "final_model.pt", weights_only=True)


def _flat(params):
    return torch.cat([v.reshape(-1).double() for v in params.values()])


def test_plan_inserts_a_seeded_half():
    cfg = _cfg(10)
    plan = plan_canary_clients(cfg, build_defense(cfg.defense, cfg))
    assert len(plan.inserted) == 5 and len(set(plan.inserted)) == 5 and set(plan.inserted) <= set(range(10))
    assert plan == plan_canary_clients(cfg, build_defense(cfg.defense, cfg))  # reproducible from the config
    other = _cfg(10, seed=4)
    assert plan_canary_clients(other, build_defense(other.defense, other)).inserted != plan.inserted
    assert plan.seed == int(seed_seq(cfg.seed, Purpose.CANARY_CLIENTS).generate_state(1)[0])
    assert plan.taking_part(0) == list(plan.inserted)  # full participation: every inserted canary, every round
    half = _cfg(10, fl__participation=0.5)
    p = plan_canary_clients(half, build_defense(half.defense, half))
    rounds = [p.taking_part(r) for r in range(6)]
    assert all(len(r) == 2 and set(r) <= set(p.inserted) for r in rounds)  # round(0.5 · 5) = 2 of the inserted
    assert len({tuple(r) for r in rounds}) > 1  # redrawn every round


@pytest.mark.parametrize("defense,what", [
    ({"name": "none"}, "needs client-level DP with a clipping norm"),
    ({"name": "perturb", "params": {"sigma": 0.1}}, "without clip"),
])
def test_canaries_need_perturb_with_clip(tmp_path, defense, what):
    with pytest.raises(ConfigError, match=what):
        train(_cfg(8, defense), tmp_path / "r", quiet=True)
    assert not (tmp_path / "r" / "config.yaml").exists()  # refused before the run directory was touched


def test_too_few_canaries_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="need at least 4"):
        train(_cfg(3), tmp_path / "r", quiet=True)


@pytest.mark.numerics  # float32 engine output against float64 references
def test_canary_upload_is_the_direction_at_the_clip_norm_plus_the_defense_noise():
    cfg = _cfg(6)
    plan = plan_canary_clients(cfg, build_defense(cfg.defense, cfg))
    g = torch.Generator().manual_seed(0)
    global_params = {"a.weight": torch.randn(40, 30, generator=g), "a.bias": torch.randn(30, generator=g)}
    sent = canary_uploads(plan, 0, global_params, build_defense(cfg.defense, cfg))
    assert sorted(sent) == list(plan.inserted)
    for i, up in sent.items():
        step = (_flat(up) - _flat(global_params)).numpy()  # θ_up − θ_global = +C·u_i (σ = 0)
        expect = canary_direction(plan.seed, i, 1230, 0.5)
        # float32: C·u_i rounded, added to θ_global and subtracted again: a few ulps at the parameters' scale
        scale = float(_flat(global_params).abs().max()) + 0.5
        np.testing.assert_allclose(step, expect, rtol=0, atol=4 * np.finfo(np.float32).eps * scale)
    noisy_cfg = _cfg(6, {"name": "perturb", "params": {"sigma": 2.0, "clip": 0.5}})
    noisy = canary_uploads(plan, 0, global_params, build_defense(noisy_cfg.defense, noisy_cfg))
    i = plan.inserted[0]
    resid = (_flat(noisy[i]) - _flat(sent[i])).numpy()
    assert resid.std() == pytest.approx(2.0 * 0.5, rel=0.06)  # the perturb noise σC, from the canary's stream


@pytest.mark.numerics  # float32 engine output against float64 references
@pytest.mark.parametrize("vectorize", ["off", "on"])
def test_canaries_join_the_aggregation_and_never_the_signals(tmp_path, vectorize):
    """One round, equal client sizes: the global model with canaries is (K·mean(real uploads) + Σ_i (θ0 + C u_i))
    / (K + n_in), computed from the run without canaries; the signals of the round are the same."""
    over = dict(fl__rounds=1, fl__vectorize=vectorize)
    plain = train(tiny_config(defense=PERTURB, **over), tmp_path / "plain", quiet=True)
    cfg = _cfg(8, **over)
    run = train(cfg, tmp_path / "canary", quiet=True)
    sizes = {len(c) for c in store.read_split(run)}
    assert sizes == {40}  # equal weights: the canaries' mean weight is every client's
    plan = plan_canary_clients(cfg, build_defense(cfg.defense, cfg))
    init = _flat(torch.load(run / "final_model.pt", weights_only=True))  # only for the size
    theta0 = _initial(cfg)
    dirs = sum(canary_direction(plan.seed, i, init.numel(), 0.5) for i in plan.inserted)
    expect = (3 * _flat(_final(plain)).numpy() + 4 * theta0 + dirs) / 7
    got = _flat(_final(run)).numpy()
    np.testing.assert_allclose(got, expect, rtol=0, atol=1e-6 * (1 + np.abs(expect).max()))
    a, b = store.read_npz(store.round_path(plain, 0), ""), store.read_npz(store.round_path(run, 0), "")
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)  # canaries are not clients of the signals
    ev = json.loads((run / EVIDENCE).read_text())
    assert ev["inserted"] == [i in plan.inserted for i in range(8)] and ev["rounds_taken_part"] == [
        1 if i in plan.inserted else 0 for i in range(8)]
    d = got - theta0
    c = np.array([canary_direction(plan.seed, i, d.size) @ d / np.linalg.norm(d) for i in range(8)])
    np.testing.assert_allclose(ev["cosine"], c, rtol=1e-9, atol=1e-12)


def _initial(cfg):
    from fedleak.fl.federation import build_federation
    from fedleak.fl.local import get_params

    return _flat(get_params(build_federation(cfg).model)).numpy()


def test_resumed_run_matches_an_uninterrupted_one(tmp_path):
    cfg = _cfg(8, defense={"name": "perturb", "params": {"sigma": 0.5, "clip": 0.5}}, fl__rounds=3)
    whole = train(cfg, tmp_path / "whole", quiet=True)
    part = tmp_path / "part"
    train(cfg, part, quiet=True, stop_after=1)
    assert not (part / EVIDENCE).exists()  # written once the run is finished
    train(cfg, part, quiet=True)
    for n, v in _final(whole).items():
        assert torch.equal(v, _final(part)[n]), n
    assert json.loads((whole / EVIDENCE).read_text()) == json.loads((part / EVIDENCE).read_text())


def test_flower_refuses_canary_clients(tmp_path):
    from fedleak.flower.audit import FlowerAudit

    with pytest.raises(ConfigError, match="in-process engine only"):
        FlowerAudit(_cfg(8), tmp_path / "r")


@pytest.mark.numerics  # float32 engine output against float64 references
def test_one_shot_estimate_of_a_real_run_meets_the_known_and_the_accountant_epsilon(tmp_path):
    """perturb with clip C and noise σC on every upload (real clients and canaries alike, equal weights), every
    inserted canary in each of R rounds: the final model change holds R·w·C·u_i of canary i and Gaussian noise of
    std σC·w·sqrt(R·(K + n_in)) per coordinate (w = 1/(K + n_in)); the real updates' and the other canaries'
    projections on u_i are O(C·w·R·sqrt(K + n_in)/sqrt(P)), small beside it (P = 1108). So each canary faces
    μ-GDP with μ = sqrt(R / (K + n_in)) / σ for the final model — the known ε, up to that cross-talk, which only
    adds variance (lowers the estimate by a few percent). The accountant's per-upload ε (the server sees every
    upload: μ = sqrt(R)/σ) is far above."""
    R, K, c, sigma = 4, 3, 240, 0.25
    cfg = _cfg(c, {"name": "perturb", "params": {"sigma": sigma, "clip": 0.5}}, fl__rounds=R, signals__rounds=[0])
    run = train(cfg, tmp_path / "r", quiet=True)
    path = write_client_audit(cfg, run)
    assert path == run / CLIENTS_JSON
    [entry] = json.loads(path.read_text())
    assert {k: entry[k] for k in ("level", "method", "attack", "confidence", "delta", "valid_dp_bound")} == {
        "level": "client", "method": METHOD, "attack": None, "confidence": 0.95, "delta": 1e-5,
        "valid_dp_bound": False}
    det = entry["details"]
    assert det["n_in"] == det["n_out"] == c // 2
    mu_true = math.sqrt(R / (K + c // 2)) / sigma
    se = math.sqrt(2 / (c // 2) + mu_true**2 / (4 * c))
    assert det["gdp_mu"] == pytest.approx(mu_true, abs=4 * se + 0.05 * mu_true)
    assert entry["epsilon"] <= det["epsilon_estimate"] <= det["epsilon_upper"]
    assert entry["epsilon"] <= gdp_epsilon(mu_true, 1e-5) <= det["epsilon_upper"] * 1.1
    # beside the accountant: well below its ε, which is the label and number of the last privacy record
    last = store.read_metrics(run)[-1]["privacy"]
    assert det["accountant_epsilon"] == last["epsilon"] and det["accountant"] == "dp-accounting RDP"
    assert det["epsilon_upper"] < last["epsilon"]
    assert last["epsilon"] >= gdp_epsilon(math.sqrt(R) / sigma, 1e-5)  # RDP: an upper bound on the exact μ-GDP ε


def test_no_canaries_no_audit_file(tmp_path):
    cfg = tiny_config(fl__rounds=1)
    run = train(cfg, tmp_path / "r", quiet=True)
    assert write_client_audit(cfg, run) is None and not (run / "audit").exists()


def _cli(monkeypatch, capsys, *args):
    import sys

    from fedleak.cli import main

    monkeypatch.setattr(sys, "argv", ["fedleak", *args])
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr()
    return e.value.code or 0, out.out, out.err


def test_fedleak_train_writes_the_audit_and_refuses_a_bad_setup_in_one_line(tmp_path, monkeypatch, capsys):
    import yaml

    from conftest import assert_one_error_line
    from fedleak.config import dump_config

    cfg = _cfg(8, defense={"name": "perturb", "params": {"sigma": 0.5, "clip": 0.5}}, fl__rounds=2)
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    code, out, err = _cli(monkeypatch, capsys, "train", str(path), "--out", str(tmp_path / "run"), "--quiet")
    assert code == 0, err
    assert f"client-level canary audit: {tmp_path / 'run' / CLIENTS_JSON}" in out
    [entry] = json.loads((tmp_path / "run" / CLIENTS_JSON).read_text())
    assert entry["level"] == "client" and math.isfinite(entry["epsilon"]) and entry["details"]["n_in"] == 4
    raw = yaml.safe_load(dump_config(cfg))
    raw["defense"] = {"name": "sparse"}
    path.write_text(yaml.safe_dump(raw))
    code, out, err = _cli(monkeypatch, capsys, "train", str(path), "--out", str(tmp_path / "bad"), "--quiet")
    assert_one_error_line(code, err, "audit.canary_clients=8", "defense.params.clip")
    assert not (tmp_path / "bad" / "config.yaml").exists()
