"""audit.json end to end: one-run ε̂ recomputed by hand from scores.npz's canary rows, ROC ε̂ from its candidate
rows, the accountant's ε beside them, and ε̂ > 0 for mislabelled canaries without DP."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import tiny_config
from fedleak.attacks.mia.attacks import ATTACKS
from fedleak.attacks.mia.audit import k_choices
from fedleak.fl.simulation import train
from fedleak.metrics.epsilon import empirical_epsilon
from fedleak.metrics.one_run_audit import one_run_audit_best
from fedleak.report.outputs import attack_run
from fedleak.signals.canaries import read_canaries
from fedleak.signals.store import read_metrics


def _audited(m=200, **over):
    return tiny_config(
        data={"name": "synthetic", "synthetic": {"n_train": 120, "n_test": 300, "num_classes": 4, "channels": 1,
                                                 "size": 8}},
        fl={"rounds": 3, "batch_size": 8, "lr": 0.1, "local_epochs": 5},
        audit={"canaries": m, "kind": "mislabeled"}, **over)


def test_k_choices_hand_made():
    # r = ceil(f·m) for f = 10%, 20%, 50%, 100%, split ceil(r/2) "in" / the rest "out"
    assert k_choices(10) == [(1, 0), (1, 1), (3, 2), (5, 5)]
    assert k_choices(1) == [(1, 0)]
    assert k_choices(200) == [(10, 10), (20, 20), (50, 50), (100, 100)]


@pytest.fixture(scope="module")
def audited_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("audited")
    train(_audited(), d, quiet=True)
    out, ev = attack_run(d, make_figures=False)
    return d, out, ev


def test_one_run_epsilon_end_to_end_equals_the_estimator_on_scores_npz(audited_run):
    d, out, _ = audited_run
    audit = json.loads((out / "audit.json").read_text())
    z = np.load(out / "scores.npz", allow_pickle=False)
    c = read_canaries(d)
    assert (z["canary_ids"] == c.ids).all() and (z["canary_inserted"] == c.inserted).all()
    choices = [(10, 10), (20, 20), (50, 50), (100, 100)]  # written out: the grid is fixed before any score
    one_run = {e["attack"]: e for e in audit["entries"] if e["method"] == "one-run"}
    assert set(one_run) == set(ATTACKS)
    strict_level = 1 - 0.05 / len(ATTACKS)
    strict = {}
    for name in ATTACKS:
        s = z["canary_" + name.replace("-", "_")]
        by_hand = one_run_audit_best(s, z["canary_inserted"], choices, delta=1e-5, confidence=0.95)
        assert one_run[name]["epsilon"] == pytest.approx(by_hand.epsilon, abs=1e-12)
        assert one_run[name]["details"]["correct"] == by_hand.correct
        assert one_run[name]["valid_dp_bound"] is True
        strict[name] = one_run_audit_best(s, z["canary_inserted"], choices, 1e-5, strict_level).epsilon
    best = next(e for e in audit["entries"] if e["method"] == "one-run, best attack")
    assert best["epsilon"] == pytest.approx(max(strict.values()), abs=1e-12)
    assert best["epsilon"] <= max(e["epsilon"] for e in one_run.values())  # Bonferroni only lowers it
    # mislabelled canaries without DP: the canaries the target trained on are found, a positive bound
    assert best["epsilon"] > 0.5
    assert audit["accountant"] is None and audit["delta_source"].startswith("default")
    assert audit["canaries"]["inserted"] == int(c.inserted.sum())


def test_roc_epsilon_entries_equal_empirical_epsilon_on_the_candidates(audited_run):
    d, out, ev = audited_run
    audit = json.loads((out / "audit.json").read_text())
    z = np.load(out / "scores.npz", allow_pickle=False)
    for name in ("fedmia-ii", "blackbox-loss"):
        ref = empirical_epsilon(z["member"], z[name.replace("-", "_")], 1e-5, 0.95, seed=3)  # tiny_config seed
        split = next(e for e in audit["entries"] if e["method"] == "roc-split-half" and e["attack"] == name)
        opt = next(e for e in audit["entries"] if e["method"] == "roc-optimistic" and e["attack"] == name)
        assert split["epsilon"] == pytest.approx(ref.epsilon) and opt["epsilon"] == pytest.approx(ref.optimistic)
        assert split["valid_dp_bound"] is False and "not a DP bound: membership not randomised" in split["note"]
        assert opt["valid_dp_bound"] is False and opt["note"].startswith("optimistic")
    # the candidates' scores and metrics are those of the plain attack: no canary row among them
    assert len(z["ids"]) == len(ev.labels) and not set(z["ids"].tolist()) & set(z["canary_ids"].tolist())


def test_audit_json_sets_the_accountant_beside_the_bounds(tmp_path):
    cfg = _audited(m=40, defense={"name": "dpsgd", "params": {"noise_multiplier": 1.5, "max_grad_norm": 1.0,
                                                                 "delta": 1e-4}})
    train(cfg, tmp_path, quiet=True)
    out, _ = attack_run(tmp_path, ["fedmia-ii", "blackbox-loss"], make_figures=False)
    assert out.name == "blackbox-loss+fedmia-ii"
    audit = json.loads((out / "audit.json").read_text())
    last = [r for r in read_metrics(tmp_path) if "privacy" in r][-1]
    assert audit["accountant"]["epsilon"] == pytest.approx(last["privacy"]["epsilon"])
    assert audit["accountant"]["round"] == last["round"] == 2 and audit["accountant"]["defense"] == "dpsgd"
    assert audit["delta"] == 1e-4 and audit["delta_source"] == "the accountant's δ"
    assert {e["attack"] for e in audit["entries"] if e["method"] == "one-run"} == {"fedmia-ii", "blackbox-loss"}
    for e in audit["entries"]:
        assert e["level"] == "sample" and set(e) == {"level", "method", "attack", "epsilon", "confidence", "delta",
                                                     "valid_dp_bound", "note", "details"}
        assert math.isfinite(e["epsilon"]) and e["delta"] == 1e-4


def test_another_target_gets_no_one_run_entries_but_a_note(audited_run):
    d, _, _ = audited_run
    from fedleak.report.outputs import attack_dir

    out, _ = attack_run(d, ["fedmia-ii"], target=1, make_figures=False)
    audit = json.loads((out / "audit.json").read_text())
    assert audit["target"] == 1 and not [e for e in audit["entries"] if e["method"].startswith("one-run")]
    assert "client 0's data, not in the attacked target 1's" in audit["notes"][0]
    assert "canary_ids" not in np.load(out / "scores.npz").files
    assert attack_dir(d) != out  # the full result (target 0) is untouched


def test_damaged_canary_files_are_named(audited_run, tmp_path):
    import shutil

    from fedleak.signals.store import StoreError, read_npz, round_path

    d, _, _ = audited_run
    run = tmp_path / "copy"
    shutil.copytree(d, run)
    out, _ = attack_run(run, ["fedmia-ii"], make_figures=False)
    before = {f: (out / f).read_bytes() for f in ("metrics.json", "scores.npz", "audit.json")}
    z = read_npz(round_path(run, 1), "")
    np.savez(round_path(run, 1), **{k: v for k, v in z.items() if not k.startswith("canary_")})
    with pytest.raises(StoreError, match=r"round_0001.npz lacks the canary arrays .*canaries.npz"):
        attack_run(run, ["fedmia-ii"], make_figures=False)
    (run / "canaries.npz").write_bytes(b"garbage")
    with pytest.raises(StoreError, match=r"canaries.npz is not a .npz archive.*candidates' signals are intact"):
        attack_run(run, ["fedmia-ii"], make_figures=False)
    assert {f: (out / f).read_bytes() for f in before} == before  # nothing half-rewritten
