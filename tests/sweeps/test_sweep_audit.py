"""The sweep's ε̂ columns and ε̂-vs-ε plot (issue #12 item 6), checked against the estimators applied by hand to
each run's own canary scores."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml

from fedleak.attacks.mia.audit import k_choices
from fedleak.metrics.one_run_audit import one_run_audit_best
from fedleak.report.outputs import attack_run
from fedleak.sweeps import run_sweep

NAMES = ["fedmia-ii", "blackbox-loss"]
BASE = {
    "name": "tiny-audit",
    "seed": 3,
    "data": {"name": "synthetic", "synthetic": {"n_train": 120, "n_test": 200, "num_classes": 4, "channels": 1,
                                                "size": 8}},
    "partition": {"num_clients": 3},
    "candidates": {"n_test": 20, "n_other": 10},
    "model": {"name": "mlp", "options": {"hidden": [16]}},
    "fl": {"rounds": 2, "batch_size": 8, "lr": 0.1, "local_epochs": 3},
    "signals": {"every": 1},
    "audit": {"canaries": 100, "kind": "mislabeled"},
}


def test_sweep_eps_hat_columns_and_plot(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    sweep = {"base": "base.yaml", "out": str(tmp_path / "out"), "seeds": [0],
             "defenses": [{"name": "dpsgd", "strength": {"noise_multiplier": [0.5, 2.0]}}],
             "attacks": {"names": NAMES}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sweep))
    s = run_sweep(tmp_path / "s.yaml", backend="inline", log=lambda *_: None)
    assert s["status"]["finished"] == 3, s["status"]
    out = tmp_path / "out"
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    level = 1 - 0.05 / len(NAMES)  # the best over the attacks, Bonferroni
    for run_id in {r["run_id"] for r in rows}:
        run_dir = out / "runs" / run_id
        res = json.loads((run_dir / "result.json").read_text())
        a_dir, _ = attack_run(run_dir, NAMES, make_figures=False)
        z = np.load(a_dir / "scores.npz", allow_pickle=False)
        delta = res["utility"].get("delta", 1e-5)
        by_hand = max(one_run_audit_best(z["canary_" + n.replace("-", "_")], z["canary_inserted"],
                                         k_choices(100), delta, level).epsilon for n in NAMES)
        mine = [r for r in rows if r["run_id"] == run_id]
        assert len(mine) == len(NAMES)
        for r in mine:
            assert float(r["eps_hat_one_run"]) == pytest.approx(by_hand, abs=1e-9)
            assert r["eps_hat_one_run_attack"] in NAMES and float(r["eps_hat_roc"]) >= 0
    # the undefended run leaks its mislabelled canaries: a positive bound
    base_row = next(r for r in rows if r["defense"] == "none")
    assert float(base_row["eps_hat_one_run"]) > 0
    with open(out / "summary.csv", newline="") as f:
        summary = list(csv.DictReader(f))
    assert {"eps_hat_one_run", "eps_hat_roc"} <= set(summary[0])
    md = (out / "results.md").read_text()
    assert "ε̂ one-run (95% lower bound)" in md and "ε̂ ROC (not a DP bound)" in md
    assert (out / "plots" / "epsilon.png").is_file()
