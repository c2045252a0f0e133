"""The sweep's headline FPR (``attacks.headline_fpr`` / ``--headline-fpr``): the recorded keys, tables and the
re-evaluation of finished runs, against TPRs computed here with a naive threshold loop."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml

from conftest import naive_k
from fedleak.attacks.mia import run_attacks
from fedleak.config import ConfigError
from fedleak.signals.loading import load_signals
from fedleak.sweeps import plan, report_only, run_sweep

TINY = {
    "name": "tiny", "seed": 3,
    "data": {"name": "synthetic", "synthetic": {"n_train": 120, "n_test": 40, "num_classes": 4, "channels": 1,
                                                "size": 8}},
    "partition": {"num_clients": 3}, "candidates": {"n_test": 20, "n_other": 10},
    "model": {"name": "mlp", "options": {"hidden": [16]}}, "fl": {"rounds": 3, "batch_size": 8, "lr": 0.1},
    "signals": {"every": 1},
}
NAMES = ["fedmia-ii", "blackbox-loss"]


def _sweep(tmp_path, attacks: dict) -> object:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(TINY))
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump({"base": "base.yaml", "out": str(tmp_path / "out"), "attacks": attacks}))
    return p


def _naive_rates(run_dir, fpr: float) -> dict[str, float]:
    sig = load_signals(run_dir)
    t = sig.target
    member = sig.members(t)
    scores = run_attacks(sig, NAMES, target=t)
    return {n: naive_k(member, np.where(np.isnan(s), -np.inf, s), fpr) / member.sum() for n, s in scores.items()}


def test_sweep_headline_from_the_file_and_reread_at_another(tmp_path):
    p = _sweep(tmp_path, {"names": NAMES, "rotate": False, "headline_fpr": 0.1})
    s = run_sweep(p, backend="inline", log=lambda m: None)
    assert s["status"]["finished"] == 1
    run_dir = tmp_path / "out" / "runs" / s["runs"][0]
    res = json.loads((run_dir / "result.json").read_text())
    assert res["headline_fpr"] == 0.1
    want = _naive_rates(run_dir, 0.1)
    for n in NAMES:
        a = res["attacks"][n]
        assert set(a) == {"label", "tpr@10%", "tpr@1%", "auc", "rotated", "tpr@10%_members"}
        assert a["tpr@10%"] == pytest.approx(want[n])
    md = (tmp_path / "out" / "results.md").read_text()
    assert "### TPR@10% (%)" in md and "### TPR@10%: members found and 95% CI" in md and "TPR@0.1%" not in md
    rows = list(csv.DictReader((tmp_path / "out" / "results.csv").open()))
    assert {r["attack"]: float(r["tpr@10%"]) for r in rows} == pytest.approx(want)

    # --headline-fpr 0.001 on the finished sweep: re-evaluated from the signals, nothing retrained or rewritten
    before = (run_dir / "result.json").read_bytes()
    report_only(p, headline_fpr=0.001, plots=False)
    rows = list(csv.DictReader((tmp_path / "out" / "results.csv").open()))
    assert {r["attack"]: float(r["tpr@0.1%"]) for r in rows} == pytest.approx(_naive_rates(run_dir, 0.001))
    assert "tpr@10%" not in rows[0] and (run_dir / "result.json").read_bytes() == before


@pytest.mark.parametrize("value", [0, 1.0, -0.5, "often"])
def test_bad_headline_in_the_sweep_file(tmp_path, value):
    p = _sweep(tmp_path, {"headline_fpr": value})
    with pytest.raises(ConfigError, match="headline_fpr"):
        plan(p)
