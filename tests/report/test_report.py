"""The attack / report / run commands: files written, numbers consistent with the library, HTML self-contained."""

from __future__ import annotations

import base64
import csv
import json
import re
import sys

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from conftest import tiny_config
from fedleak.attacks.mia.names import ATTACKS
from fedleak.attacks.mia import run_attacks
from fedleak.fl.toy import generate_toy_run
from fedleak.attacks.mia.evaluation import Evaluation
from fedleak.cli import app
from fedleak.metrics.roc import roc_metrics
from fedleak.signals.loading import load_signals
from fedleak.signals.store import StoreError

runner = CliRunner()
SMALL = dict(per_client=300, n_other=100, n_test=600, n_test_cand=300, rounds=6, shift=0.4, num_clients=5)


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """A toy run on which `fedleak report` ran straight away (so it had to attack first, with defaults)."""
    d = generate_toy_run(tmp_path_factory.mktemp("toy") / "run", **SMALL)
    assert not (d / "attack").exists()
    res = runner.invoke(app, ["report", str(d), "-q"])
    assert res.exit_code == 0, res.output
    return d, res.output


def test_attack_writes_metrics_scores_and_figures(reported):
    run, _ = reported
    out = run / "attack"
    for f in ("metrics.json", "metrics.csv", "scores.npz", "scores.csv"):
        assert (out / f).is_file(), f
    for stem in ("roc", "tpr_per_round", "fedmia_scores", "utility"):
        assert (out / f"{stem}.pdf").read_bytes()[:4] == b"%PDF"
        assert (out / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    m = json.loads((out / "metrics.json").read_text())
    assert m["round"] == 59 and m["protocol"] == "aligned" and m["fpr_convention"] == "<="
    sig = load_signals(run)
    lab = sig.members()
    scores = run_attacks(sig)
    z = np.load(out / "scores.npz")
    np.testing.assert_array_equal(z["member"], lab)
    for name, s in scores.items():
        np.testing.assert_allclose(z[name.replace("-", "_")], s)
        want = roc_metrics(lab, s)
        got = m["attacks"][name]
        assert got["auc"] == pytest.approx(want.auc)
        assert got["tpr@0.1%"] == pytest.approx(want.tpr[0.001])
        assert got["log_auc"] == pytest.approx(want.log_auc)
    assert m["attacks"]["blackbox-loss"]["round"] == 59 and m["attacks"]["fedmia-ii"]["round"] is None
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["attack"] for r in rows] == list(scores)
    assert float(rows[0]["auc"]) == pytest.approx(m["attacks"][rows[0]["attack"]]["auc"])
    srows = list(csv.reader((out / "scores.csv").open()))
    assert len(srows) == lab.size + 1
    # every client owns candidates and rows are aligned: rotating target is on by default
    assert m["rotation"]["done"] and m["rotation"]["targets"] == [0, 1, 2, 3, 4]
    assert "oracle" in m["attacks"]["grad-cosine"] and "optimistic" in m["attacks"]["grad-cosine"]["oracle"]["note"]


def test_stale_attack_outputs_are_detected(reported, tmp_path):
    import os
    import shutil

    from fedleak.report.outputs import is_stale

    run, _ = reported
    assert not is_stale(run)
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    sig_file = sorted((copy / "signals").glob("round_*.npz"))[-1]
    later = (copy / "attack" / "metrics.json").stat().st_mtime + 10
    os.utime(sig_file, (later, later))
    assert is_stale(copy)


def test_attack_options_reach_the_attacks(tmp_path):
    d = generate_toy_run(tmp_path / "r", **SMALL)
    res = runner.invoke(app, ["attack", str(d), "-a", "fedmia-ii,loss-series,grad-cosine", "--round", "39", "--aggregation", "fisher",
                              "--ddof", "1", "--strict-fpr", "--no-rotate", "--no-figures", "-q"])
    assert res.exit_code == 0, res.output
    sub = d / "attack" / "fedmia-ii+grad-cosine+loss-series"  # a subset has its own folder
    assert f"attack outputs: {sub}" in res.output and not (d / "attack" / "metrics.json").exists()
    m = json.loads((sub / "metrics.json").read_text())
    assert list(m["attacks"]) == ["fedmia-ii", "loss-series", "grad-cosine"]
    assert not (sub / "roc.png").exists()
    assert m["fedmia_options"]["aggregation"] == "fisher" and m["fedmia_options"]["ddof"] == 1
    assert m["fpr_convention"] == "<" and not m["rotation"]["done"]
    sig = load_signals(d)
    s = run_attacks(sig, "fedmia-ii", aggregation="fisher", ddof=1)["fedmia-ii"]
    assert m["attacks"]["fedmia-ii"]["auc"] == pytest.approx(roc_metrics(sig.members(), s).auc)
    gc = roc_metrics(sig.members(), sig.cos[3, 0], strict=True)  # round 39 = 4th recorded round
    assert m["attacks"]["grad-cosine"]["round"] == 39
    assert m["attacks"]["grad-cosine"]["tpr@1%"] == pytest.approx(gc.tpr[0.01])
    # all attacks with the same options and no figures: a report redraws them with the same settings
    res = runner.invoke(app, ["attack", str(d), "--round", "39", "--aggregation", "fisher", "--ddof", "1", "--strict-fpr",
                              "--no-rotate", "--no-figures", "-q"])
    assert res.exit_code == 0 and res.output.strip() == f"attack outputs: {d / 'attack'}", res.output
    res = runner.invoke(app, ["report", str(d), "-q"])
    assert res.exit_code == 0, res.output
    m2 = json.loads((d / "attack" / "metrics.json").read_text())
    assert (d / "attack" / "roc.png").is_file() and m2["figures"]["roc"] == "roc.png"
    assert m2["round"] == 39 and m2["fedmia_options"] == m["fedmia_options"] and m2["fpr_convention"] == "<"
    assert m2["attacks"]["fedmia-ii"]["auc"] == m["attacks"]["fedmia-ii"]["auc"] and len(m2["attacks"]) == 10
    assert not m2["rotation"]["done"]


def test_report_is_self_contained_html_and_markdown(reported):
    attacked, output = reported
    assert output.strip() == f"report: {attacked / 'report.html'}"
    html = (attacked / "report.html").read_text()
    md = (attacked / "report.md").read_text()
    # no external resources: every image is an embedded PNG that decodes
    srcs = re.findall(r"src='([^']*)'", html)
    assert len(srcs) == 4 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert base64.b64decode(srcs[0].split(",", 1)[1])[:4] == b"\x89PNG"
    assert "http://" not in html and "https://" not in html and "<link" not in html
    m = json.loads((attacked / "attack" / "metrics.json").read_text())
    best = max(m["attacks"].values(), key=lambda a: a["tpr@0.1%"])
    for text in ("Verdict", "Setup", "Utility", "Attack results", "Every client as the target", "Oracle best round",
                 best["label"], f"{100 * best['tpr@0.1%']:.2f}%"):
        assert text in html, text
    assert "![roc](attack/roc.png)" in md and "| attack |" in md and "## Verdict" in md


def test_verdict_levels(tmp_path):
    from fedleak.attacks.mia import evaluate
    from fedleak.report.document import verdict

    def level(**kw):
        ev = evaluate(load_signals(generate_toy_run(tmp_path / str(len(list(tmp_path.iterdir()))), **{**SMALL, **kw})))
        return ev.metrics, verdict(ev)

    assert level(shift=0.0)[1].level in ("none", "low")
    assert level(shift=1.0)[1].level == "high"
    mc, vc = level(protocol="official-compat")
    assert "official-compat" in " ".join(vc.sentences)
    # the inflated target-only temporal attacks never carry the verdict
    assert not any(a["label"] + "</b>" in vc.sentences[0] for n, a in mc["attacks"].items() if a["kind"] == "temporal")


def test_bad_input_is_one_clear_line(tmp_path, monkeypatch, capsys):
    from fedleak.cli import main

    res = runner.invoke(app, ["attack", str(tmp_path)])
    assert isinstance(res.exception, StoreError) and "not a fedleak run directory" in str(res.exception)
    d = generate_toy_run(tmp_path / "r", **SMALL)
    for argv, msg in (
        (["attack", str(d), "--round", "3"], "round 3 was not recorded"),
        (["attack", str(d), "-a", "fedmia-9"], "unknown attack 'fedmia-9'"),
        (["attack", str(d), "--aggregation", "median"], "unknown FedMIA aggregation"),
        (["report", str(tmp_path / "missing")], "not a fedleak run directory"),
    ):
        monkeypatch.setattr(sys, "argv", ["fedleak", *argv])
        with pytest.raises(SystemExit) as e:
            main()
        err = capsys.readouterr().err
        assert e.value.code == 2
        assert err.strip().count("\n") == 0 and msg in err, err


def test_run_trains_attacks_and_reports(tmp_path, monkeypatch):
    """`fedleak run` wiring, with the engine replaced by the toy generator."""
    from fedleak.fl import simulation

    seen = {}

    def fake_train(cfg, run_dir, quiet=False):
        seen["cfg"], seen["quiet"] = cfg, quiet
        return generate_toy_run(run_dir, **SMALL)

    monkeypatch.setattr(simulation, "train", fake_train)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"name": "x", "fl": {"rounds": 3}}))
    res = runner.invoke(app, ["run", str(cfg), "--out", str(tmp_path / "out"), "--set", "fl.rounds=7",
                              "--data-dir", str(tmp_path), "-q"])
    assert res.exit_code == 0, res.output
    assert seen["cfg"].fl.rounds == 7 and seen["quiet"] is True and seen["cfg"].data.data_dir == str(tmp_path)
    assert res.output.strip().endswith(str(tmp_path / "out" / "report.html"))
    assert (tmp_path / "out" / "report.html").is_file()


@pytest.mark.slow
def test_run_end_to_end_with_the_real_engine(tmp_path):
    from fedleak.config import dump_config

    p = tmp_path / "tiny.yaml"
    p.write_text(dump_config(tiny_config(name="tiny-e2e", seed=1)))
    res = runner.invoke(app, ["run", str(p), "--out", str(tmp_path / "run"), "-q"])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "run" / "attack" / "metrics.json").read_text())
    assert m["recorded_rounds"] == [0, 1, 2] and len(m["attacks"]) == len(ATTACKS)  # every attack, margins included
    assert (tmp_path / "run" / "report.html").stat().st_size > 10_000


def test_summarize_is_mean_and_sample_std_over_runs(tmp_path):
    dirs = [generate_toy_run(tmp_path / f"s{i}", **{**SMALL, "seed": i}) for i in range(3)]
    for d in dirs:
        assert runner.invoke(app, ["attack", str(d), "--no-figures", "-q"]).exit_code == 0
    res = runner.invoke(app, ["summarize", *map(str, dirs)])
    assert res.exit_code == 0, res.output
    aucs = [roc_metrics(load_signals(d).members(), run_attacks(load_signals(d), "fedmia-i")["fedmia-i"]).auc for d in dirs]
    row = next(line for line in res.output.splitlines() if line.startswith("| FedMIA-I |"))
    assert row.split("|")[2].strip() == f"{np.mean(aucs):.3f} ± {np.std(aucs, ddof=1):.3f}"
    assert "3 run(s)" in res.output
    rot = runner.invoke(app, ["summarize", "--rotating", *map(str, dirs)])
    assert rot.exit_code == 0 and "| Blackbox-Loss |" in rot.output


def test_summarize_by_origin_splits_nonmembers_against_sklearn(tmp_path):
    from sklearn.metrics import roc_auc_score

    dirs = [generate_toy_run(tmp_path / f"s{i}", **{**SMALL, "seed": i}) for i in range(2)]
    for d in dirs:
        assert runner.invoke(app, ["attack", str(d), "--no-figures", "--no-rotate", "-q"]).exit_code == 0
    res = runner.invoke(app, ["summarize", "--by-origin", *map(str, dirs)])
    assert res.exit_code == 0, res.output
    expect = {"test": [], "other": []}
    for d in dirs:
        rows = list(csv.DictReader(open(d / "attack" / "scores.csv")))
        mem = [float(r["fedmia-i"]) for r in rows if r["member"] == "1"]
        test = [float(r["fedmia-i"]) for r in rows if r["member"] == "0" and r["owner"] == "-1"]
        other = [float(r["fedmia-i"]) for r in rows if r["member"] == "0" and r["owner"] != "-1"]
        assert test and other
        for kind, neg in (("test", test), ("other", other)):
            expect[kind].append(roc_auc_score([1] * len(mem) + [0] * len(neg), mem + neg))
    row = next(line for line in res.output.splitlines()[::-1] if line.startswith("| FedMIA-I |")).split("|")
    assert row[2].strip() == f"{np.mean(expect['test']):.3f} ± {np.std(expect['test'], ddof=1):.3f}"
    assert row[3].strip() == f"{np.mean(expect['other']):.3f} ± {np.std(expect['other'], ddof=1):.3f}"


def test_verdict_thresholds_on_crafted_metrics():
    from scipy.stats import binom

    from fedleak.report.document import verdict

    def metrics(tpr, n_pos=1000, n_neg=10000, n_attacks=2):
        atk = {f"a{i}": {"label": f"A{i}", "kind": "single", "auc": 0.6, "tpr@0.1%": tpr if i == 0 else 0.0,
                         "tpr@1%": 0.1} for i in range(n_attacks)}
        return Evaluation.from_json({"attacks": atk, "n_members": n_pos, "n_nonmembers": n_neg, "target": 0,
                                     "fpr_convention": "<=", "fpr_targets": [0.01, 0.001], "round": 0,
                                     "recorded_rounds": [0], "num_clients": 2})

    assert verdict(metrics(0.004)).level == "none"  # 4 of 1000 at 0.1%: p·2 = 0.038
    assert 2 * binom.sf(3, 1000, 0.001) > 0.01
    assert verdict(metrics(0.006)).level == "low"
    assert verdict(metrics(0.05)).level == "moderate"
    assert verdict(metrics(0.25)).level == "high"
    # 959 non-members: the effective FPR is one false positive (0.104%), said in the verdict
    v = verdict(metrics(0.02, n_neg=959))
    assert any("0.104%" in s for s in v.sentences)
