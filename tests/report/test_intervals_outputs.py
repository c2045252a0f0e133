"""Confidence intervals in `fedleak attack`'s outputs (issue #12 item 1), against scipy and naive loops."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from scipy.stats import binomtest, norm
from typer.testing import CliRunner

from fedleak.attacks.mia.evaluate import interval_entries
from fedleak.attacks.mia.evaluation import Evaluation
from conftest import naive_k
from fedleak.cli import app
from fedleak.fl.toy import generate_toy_run
from fedleak.metrics.roc import DEFAULT_FPRS, HEADLINE_KEY, fpr_key

runner = CliRunner()
SMALL = dict(per_client=60, n_other=40, n_test=200, n_test_cand=80, rounds=4, shift=0.4, num_clients=3)


def naive_delong(member: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """DeLong's 95% interval with the O(m n) double loop of placements."""
    pos, neg = scores[member], scores[~member]
    psi = np.array([[1.0 if x > y else 0.5 if x == y else 0.0 for y in neg] for x in pos])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    auc = psi.mean()
    se = math.sqrt(np.var(v10, ddof=1) / pos.size + np.var(v01, ddof=1) / neg.size)
    z = norm.ppf(0.975)
    return max(0.0, auc - z * se), min(1.0, auc + z * se)


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    d = generate_toy_run(tmp_path_factory.mktemp("ci") / "run", **SMALL)
    res = runner.invoke(app, ["attack", str(d), "--no-figures", "-q"])
    assert res.exit_code == 0, res.output
    return d


def test_attack_metrics_carry_exact_tpr_and_delong_auc_intervals(attacked):
    out = attacked / "attack"
    m = json.loads((out / "metrics.json").read_text())
    z = np.load(out / "scores.npz")
    member = z["member"].astype(bool)
    n = int(member.sum())
    rows = {r["attack"]: r for r in csv.DictReader((out / "metrics.csv").open())}
    for name, a in m["attacks"].items():
        s = z[name.replace("-", "_")].astype(np.float64)
        for f in DEFAULT_FPRS:
            key = fpr_key(f)
            k = naive_k(member, s, f)
            assert a["counts"][key] == [k, n]
            assert a[key] == pytest.approx(k / n)  # the existing TPR is k of n
            ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
            np.testing.assert_allclose(a["ci95"][key], [ci.low, ci.high], rtol=1e-9, atol=1e-12)
            assert float(rows[name][f"{key}_members_flagged"]) == k
            assert float(rows[name][f"{key}_ci95_low"]) == pytest.approx(ci.low, abs=1e-12)
            assert float(rows[name][f"{key}_ci95_high"]) == pytest.approx(ci.high, rel=1e-9)
        lo, hi = naive_delong(member, s)
        np.testing.assert_allclose(a["ci95"]["auc"], [lo, hi], rtol=1e-9, atol=1e-12)
        assert lo <= a["auc"] <= hi
        assert float(rows[name]["auc_ci95_low"]) == pytest.approx(lo, abs=1e-12)


def test_hand_made_case():
    # members 3, 2, 0.5 vs non-members 2, 1, 0: psi rows (1, 1, 1), (0.5, 1, 1), (0, 0, 1) -> AUC = 6.5 / 9
    member = np.array([1, 1, 1, 0, 0, 0], bool)
    s = np.array([3.0, 2.0, 0.5, 2.0, 1.0, 0.0])
    e = interval_entries(member, s, (0.34,), strict=False)
    # FPR <= 0.34 allows one non-member above the threshold: 'score >= 2' flags 2 members and 1 non-member
    assert e["counts"][fpr_key(0.34)] == [2, 3]
    ci = binomtest(2, 3).proportion_ci(method="exact")
    np.testing.assert_allclose(e["ci95"][fpr_key(0.34)], [ci.low, ci.high], rtol=1e-9)
    # v10 = (1, 5/6, 1/3), v01 = (1/2, 2/3, 1)
    se = math.sqrt(np.var([1, 5 / 6, 1 / 3], ddof=1) / 3 + np.var([0.5, 2 / 3, 1], ddof=1) / 3)
    auc = 6.5 / 9
    np.testing.assert_allclose(e["ci95"]["auc"], [auc - 1.959963984540054 * se, min(1.0, auc + 1.959963984540054 * se)])


def test_too_few_members_gives_no_auc_interval():
    e = interval_entries(np.array([1, 0, 0, 0], bool), np.array([1.0, 0.5, 0.2, 0.1]), (0.1,), strict=False)
    assert e["ci95"]["auc"] is None
    assert e["counts"][fpr_key(0.1)] == [1, 1] and e["ci95"][fpr_key(0.1)][1] == 1.0
    assert HEADLINE_KEY == fpr_key(0.001)


def _four_of_89() -> dict:
    """A hand-made metrics document: the strongest attack finds 4 of 89 members at 0.1% FPR."""
    ci = binomtest(4, 89).proportion_ci(method="exact")
    atk = {"label": "FedMIA-II", "kind": "fedmia", "round": None, "auc": 0.654, "log_auc": 0.3, "tpr@10%": 0.2,
           "tpr@1%": 0.05, "tpr@0.1%": 4 / 89, "tpr@0.01%": 4 / 89, "balanced_accuracy": 0.6,
           "counts": {"tpr@0.1%": [4, 89]}, "ci95": {"auc": [0.6012, 0.7068], "tpr@0.1%": [ci.low, ci.high]}}
    return {"attacks": {"fedmia-ii": atk}, "n_members": 89, "n_nonmembers": 1040, "target": 0, "round": 19,
            "fpr_convention": "<=", "fpr_targets": [0.1, 0.01, 0.001, 0.0001], "protocol": "aligned",
            "recorded_rounds": [19], "num_clients": 10}


def test_headline_cell_verdict_and_terminal_read_k_of_n_with_the_interval(capsys):
    from fedleak.attacks.mia.commands import print_table
    from fedleak.report.document import attack_table, verdict

    m = _four_of_89()
    head, rows, _ = attack_table(Evaluation.from_json(m))
    text = "4 of 89 (4.49%, 95% CI 1.2–11.1%)"  # scipy: 0.01237..0.11107
    assert rows[0][head.index("TPR@0.1%")] == text
    assert rows[0][head.index("AUC")] == "0.654 (95% CI 0.601–0.707)"
    assert rows[0][head.index("TPR@1%")] == "5.00%"  # the other FPRs stay plain
    v = verdict(Evaluation.from_json(m))
    assert any("confidence interval of the 4.49% found at 0.1% FPR is 1.2–11.1% (exact Clopper–Pearson for 4 of 89"
               " members); that of its AUC is 0.601–0.707 (DeLong)" in s for s in v.sentences)
    print_table(Evaluation.from_json(m))
    out = capsys.readouterr().out
    assert text in out and "0.654 (95% CI 0.601–0.707)" in out


def test_metrics_without_intervals_read_as_before():
    from fedleak.report.document import attack_table, verdict

    m = _four_of_89()
    del m["attacks"]["fedmia-ii"]["counts"], m["attacks"]["fedmia-ii"]["ci95"]
    head, rows, _ = attack_table(Evaluation.from_json(m))
    assert rows[0][head.index("TPR@0.1%")] == "4.49%" and rows[0][head.index("AUC")] == "0.654"
    assert not any("confidence interval" in s for s in verdict(Evaluation.from_json(m)).sentences)


def test_report_shows_the_intervals_of_a_real_run(attacked):
    from fedleak.report.render import unbreakable_ci

    res = runner.invoke(app, ["report", str(attacked), "-q"])
    assert res.exit_code == 0, res.output
    m = json.loads((attacked / "attack" / "metrics.json").read_text())
    a = m["attacks"]["fedmia-ii"]
    k, n = a["counts"][HEADLINE_KEY]
    ci = binomtest(k, n).proportion_ci(method="exact")
    lo, hi = naive_delong(np.load(attacked / "attack" / "scores.npz")["member"].astype(bool),
                          np.load(attacked / "attack" / "scores.npz")["fedmia_ii"].astype(np.float64))
    want = f"{k} of {n} ({100 * k / n:.2f}%, 95% CI "
    md = (attacked / "report.md").read_text()
    html = (attacked / "report.html").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| FedMIA-II |"))
    assert want in row and f"{a['auc']:.3f} (95% CI {lo:.3f}–{hi:.3f})" in row
    lo_t, hi_t = row.split(want)[1].split("%)")[0].split("–")
    assert float(lo_t) == pytest.approx(100 * ci.low, rel=0.06, abs=0.01)  # printed to 2 digits
    assert float(hi_t) == pytest.approx(100 * ci.high, rel=0.06)
    assert unbreakable_ci(f"95% CI {lo_t}–{hi_t}%)") in html  # kept on one line in the HTML table


def test_summarize_shows_one_runs_intervals_and_never_averages_them(attacked, tmp_path):
    z = np.load(attacked / "attack" / "scores.npz")
    member = z["member"].astype(bool)
    res = runner.invoke(app, ["summarize", str(attacked)])
    assert res.exit_code == 0, res.output
    assert "| AUC 95% CI (DeLong) | TPR@0.1%: members found, 95% CI |" in res.output
    row = next(line for line in res.output.splitlines() if line.startswith("| FedMIA-I |")).split("|")
    lo, hi = naive_delong(member, z["fedmia_i"].astype(np.float64))
    assert row[5].strip() == f"{lo:.3f}–{hi:.3f}"
    k = naive_k(member, z["fedmia_i"].astype(np.float64), 0.001)
    assert row[6].strip().startswith(f"{k} of {int(member.sum())} ({100 * k / member.sum():.2f}%, 95% CI ")
    other = generate_toy_run(tmp_path / "second", **{**SMALL, "seed": 1})
    res = runner.invoke(app, ["summarize", str(attacked), str(other)])
    assert res.exit_code == 0, res.output
    assert "95% CI (DeLong)" not in res.output and " of " not in res.output.split("\n2 run(s)")[0]
    assert "intervals are not averaged over runs" in res.output
