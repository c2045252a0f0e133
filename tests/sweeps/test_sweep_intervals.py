"""The sweep tables' interval of the headline TPR (issue #12 item 1): counts against per-target evaluations,
the pooled interval against scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from fedleak.attacks.mia import evaluate
from fedleak.fl.toy import generate_toy_run
from fedleak.metrics.roc import HEADLINE_KEY
from fedleak.signals.loading import load_signals
from fedleak.sweeps.evaluate import Headline, attack_metrics

HEADLINE_COUNT = Headline().count_key
from fedleak.sweeps.report import markdown, results_rows, summarize

SMALL = dict(per_client=60, n_other=40, n_test=200, n_test_cand=80, rounds=4, shift=0.4, num_clients=3)
NAMES = ["fedmia-ii", "blackbox-loss"]


def test_counts_are_the_default_target_or_summed_over_rotating_targets(tmp_path):
    d = generate_toy_run(tmp_path / "r", **SMALL)
    sig = load_signals(d)
    one = attack_metrics(d, {"names": NAMES, "rotate": False})
    rot = attack_metrics(d, {"names": NAMES, "rotate": True})
    for name in NAMES:
        per_target = [evaluate(sig, NAMES, target=t, rotate=False, per_round=False).metrics["attacks"][name]
                      for t in range(SMALL["num_clients"])]
        k0, n0 = one[name][HEADLINE_COUNT]
        assert n0 == int(sig.members().sum()) and k0 / n0 == pytest.approx(one[name][HEADLINE_KEY])
        t0 = int(evaluate(sig, NAMES, rotate=False, per_round=False).metrics["target"])
        assert [k0, n0] == per_target[t0]["counts"][HEADLINE_KEY]
        want = np.sum([a["counts"][HEADLINE_KEY] for a in per_target], axis=0).tolist()
        assert rot[name][HEADLINE_COUNT] == want and rot[name]["rotated"]


def _result(seed, k, n=89, defense="none", count=True):
    a = {"label": "FedMIA-II", HEADLINE_KEY: k / n, "tpr@1%": 0.2, "auc": 0.7, "rotated": False}
    if count:
        a[HEADLINE_COUNT] = [k, n]
    return {"run_id": f"{defense}__seed{seed}", "variant": "", "defense": defense, "param": None, "value": None,
            "seed": seed, "status": "finished", "utility": {"test_acc": 0.8}, "attacks": {"fedmia-ii": a}}


def test_pooled_interval_over_seeds_in_csv_and_markdown():
    results = [_result(0, 4), _result(1, 6), _result(0, 2, defense="sparse", count=False)]
    ci = binomtest(10, 178).proportion_ci(method="exact")
    row = next(r for r in summarize(results) if r["defense"] == "none")
    assert (row["tpr@0.1%_members_found"], row["tpr@0.1%_members"]) == (10, 178)
    assert row["tpr@0.1%_ci95_low"] == pytest.approx(ci.low, rel=1e-9)
    assert row["tpr@0.1%_ci95_high"] == pytest.approx(ci.high, rel=1e-9)
    per_run = [r for r in results_rows(results) if r["defense"] == "none"]
    one = binomtest(4, 89).proportion_ci(method="exact")
    assert per_run[0]["tpr@0.1%_members_found"] == 4
    assert per_run[0]["tpr@0.1%_ci95_high"] == pytest.approx(one.high, rel=1e-9)
    md = markdown(results, [])
    table = md.split("### TPR@0.1%: members found and 95% CI")[1].split("###")[0]
    lo, hi = f"{100 * ci.low:.1f}", f"{100 * ci.high:.1f}"
    assert f"| none | - | 10 of 178 (5.62%, 95% CI {lo}–{hi}%) |" in table
    assert "| sparse | - | – |" in table  # a result without counts: no interval invented
