"""What a new user reads on a first run: subset attack runs kept apart from the report's basis, one
round-numbering convention, ties said as ties, readable figures, unwrapped `datasets`, no pruning line
without pruning, and the log-AUC difference to the original code (issue #10, items 5 and 6)."""

from __future__ import annotations

import json
import math
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedleak.attacks.mia import run_attacks
from fedleak.fl.toy import generate_toy_run
from fedleak.attacks.mia.evaluation import Evaluation
from fedleak.cli import app
from fedleak.metrics.roc import log_auc_from_curve, roc_curve, roc_metrics
from fedleak.signals.loading import load_signals

runner = CliRunner()
SMALL = dict(per_client=300, n_other=100, n_test=600, n_test_cand=300, rounds=6, shift=0.4, num_clients=5)
README = Path(__file__).resolve().parents[1] / "README.md"


def _report_body(run: Path) -> str:
    """report.md without the line carrying the time it was written."""
    return "\n".join(line for line in (run / "report.md").read_text().splitlines() if " · run `" not in line)


# --------------------------------------------------------------------------- 1. subsets


def test_a_subset_run_does_not_change_the_full_report(tmp_path):
    run = generate_toy_run(tmp_path / "run", **SMALL)
    assert runner.invoke(app, ["report", str(run), "-q"]).exit_code == 0
    full = (run / "attack" / "metrics.json").read_bytes()
    before = _report_body(run)
    assert "Based on all 10 attacks fedleak implements" in before and "best of these 10 attacks" in before

    res = runner.invoke(app, ["attack", str(run), "--attacks", "loss-series,FedMIA-II", "--no-figures"])
    assert res.exit_code == 0, res.output
    sub = run / "attack" / "fedmia-ii+loss-series"
    assert f"attack outputs: {sub}" in res.output and "`fedleak report` uses all attacks" in res.output
    m = json.loads((sub / "metrics.json").read_text())
    sig = load_signals(run)
    for name in ("loss-series", "fedmia-ii"):  # the subset's own numbers, recomputed independently
        want = roc_metrics(sig.members(), run_attacks(sig, name)[name])
        assert m["attacks"][name]["tpr@0.1%"] == pytest.approx(want.tpr[0.001])
        assert m["attacks"][name]["auc"] == pytest.approx(want.auc)
    assert set(m["attacks"]) == {"loss-series", "fedmia-ii"}

    assert (run / "attack" / "metrics.json").read_bytes() == full  # untouched
    assert runner.invoke(app, ["report", str(run), "-q"]).exit_code == 0
    assert _report_body(run) == before


def test_a_report_on_a_subset_left_by_an_older_version_scores_all_attacks(tmp_path):
    run = generate_toy_run(tmp_path / "run", **SMALL)
    assert runner.invoke(app, ["attack", str(run), "--no-rotate", "-q"]).exit_code == 0
    p = run / "attack" / "metrics.json"
    m = json.loads(p.read_text())
    m["attacks"] = {k: v for k, v in m["attacks"].items() if k in ("grad-cosine", "avg-norm")}
    p.write_text(json.dumps(m))
    assert runner.invoke(app, ["report", str(run), "-q"]).exit_code == 0
    again = json.loads(p.read_text())
    assert len(again["attacks"]) == 10 and not again["rotation"]["done"]  # all attacks, same settings
    assert "Based on all 10 attacks" in (run / "report.md").read_text()


# --------------------------------------------------------------------------- 2. rounds from 0


@pytest.mark.slow
def test_terminal_report_and_files_number_rounds_alike(tmp_path, capsys):
    from conftest import tiny_config

    from fedleak.fl import simulation
    from fedleak.report.commands import make_report
    from fedleak.signals.store import read_metrics

    cfg = tiny_config(fl__rounds=4, signals={"every": 2})  # rounds 0-3, signals of rounds 1 and 3
    run = tmp_path / "run"
    simulation.train(cfg, run, quiet=False)
    err = capsys.readouterr().err
    printed = [int(x) for x in re.findall(r"round (\d+) of 0-3 ", err)]
    logged = [int(r["round"]) for r in read_metrics(run)]
    assert printed == logged == [0, 1, 2, 3]
    files = sorted(int(f.stem.split("_")[1]) for f in (run / "signals").glob("round_*.npz"))
    assert files == [1, 3] == cfg.signals.recorded_rounds(cfg.fl.rounds)
    make_report(run)
    md = (run / "report.md").read_text()
    assert "recorded rounds | 2: 1, 3 (0-based)" in md and "single-round attacks at round 3 (0-based)" in md
    assert "round 3 is the 4th round and its signals are in signals/round_0003.npz" in md
    util = [line.split("|")[1].strip() for line in md.splitlines() if re.match(r"\| \d+ \| ", line)]
    assert util == ["1", "3"]


def test_resuming_names_the_next_0_based_round(capsys):
    from fedleak.fl.progress import RoundProgress

    with RoundProgress(total=20, start=7, name="x") as p:
        p.update(7, {"test_acc": 0.5, "time": 0.1})
    err = capsys.readouterr().err.splitlines()
    assert err == ["[fedleak] x: resuming at round 7 of 0-19", "[fedleak] x: round 7 of 0-19 test_acc=0.500 (0.1s)"]


def test_readme_names_a_signal_file_the_demo_writes():
    from fedleak.config import load_config

    files = re.findall(r"signals/round_(\d{4})\.npz", README.read_text())
    assert files
    cfg = load_config("digits-quick")
    recorded = cfg.signals.recorded_rounds(cfg.fl.rounds)
    assert all(int(f) in recorded for f in files), (files, recorded)


# --------------------------------------------------------------------------- 3. ties


def _atk(label, kind, tpr, auc):
    return {"label": label, "kind": kind, "round": 19 if kind == "single" else None, "auc": auc, "log_auc": 0.3,
            "tpr@10%": 0.2, "tpr@1%": 0.05, "tpr@0.1%": tpr, "tpr@0.01%": tpr, "balanced_accuracy": 0.6}


def _metrics(attacks):
    return {"attacks": attacks, "n_members": 89, "n_nonmembers": 1040, "target": 0, "round": 19, "fpr_convention": "<=",
            "fpr_targets": [0.1, 0.01, 0.001, 0.0001], "protocol": "aligned", "recorded_rounds": [19], "num_clients": 10}


def test_equal_tpr_is_a_tie_in_table_and_verdict(capsys):
    from fedleak.attacks.mia.commands import print_table
    from fedleak.report.document import attack_table, verdict

    four = 4 / 89
    m = _metrics({
        "grad-cosine": _atk("Grad-Cosine", "single", 3 / 89, 0.624),
        "avg-cosine": _atk("Avg-Cosine", "temporal", four, 0.644),
        "fedmia-ii": _atk("FedMIA-II", "fedmia", four, 0.654),
        "avg-norm": _atk("Avg-Norm", "temporal", 0.0, 0.47),
    })
    _, rows, _ = attack_table(Evaluation.from_json(m))
    assert [r[0] for r in rows] == ["FedMIA-II", "Avg-Cosine", "Grad-Cosine", "Avg-Norm"]  # TPR, then AUC
    print_table(Evaluation.from_json(m))
    printed = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()[:1].isalpha()]
    assert [p for p in printed if p in ("FedMIA-II", "Avg-Cosine", "Grad-Cosine", "Avg-Norm")] == [r[0] for r in rows]
    v = verdict(Evaluation.from_json(m))
    assert "<b>FedMIA-II</b> (tied at 0.1% FPR with Avg-Cosine; listed first for its higher AUC)" in v.sentences[0]
    cmp = next(s for s in v.sentences if s.startswith("Comparing"))
    assert "reveals as much as looking at the target alone" in cmp and "4.49% vs Avg-Cosine 4.49%" in cmp
    assert "less" not in cmp and "more" not in cmp


def test_equal_tpr_and_auc_fall_back_to_the_name_and_strict_orders_hold():
    from fedleak.report.document import attack_table, verdict

    m = _metrics({"b-attack": _atk("B", "single", 0.1, 0.7), "a-attack": _atk("A", "single", 0.1, 0.7),
                  "fedmia-i": _atk("FedMIA-I", "fedmia", 0.05, 0.9)})
    _, rows, _ = attack_table(Evaluation.from_json(m))
    assert [r[0] for r in rows] == ["A", "B", "FedMIA-I"]
    v = verdict(Evaluation.from_json(m))
    assert "<b>A</b> (tied at 0.1% FPR with B; listed first by name, the AUC being equal too)" in v.sentences[0]
    assert "(FedMIA) reveals less than looking at the target alone: FedMIA-I 5.00% vs A 10.00%" in " ".join(v.sentences)
    m["attacks"]["fedmia-i"]["tpr@0.1%"] = 0.2
    v = verdict(Evaluation.from_json(m))
    assert v.sentences[0].startswith("The strongest attack, <b>FedMIA-I</b>, lets")  # no tie, no note
    assert "reveals more than looking" in " ".join(v.sentences)


# --------------------------------------------------------------------------- 4. figures


def test_figure_styles_are_distinct_for_every_attack():
    from fedleak.attacks.mia.attacks import ATTACKS
    from fedleak.report.figures import styles

    names = [*ATTACKS, "new-attack-1", "new-attack-2"]
    st = styles(names)
    assert len({s["color"] for s in st.values()}) == len(names)
    assert len({s["marker"] for s in st.values()}) == len(names)
    assert {ATTACKS[n].kind: st[n]["ls"] for n in ATTACKS} == {"single": "-", "temporal": "--", "fedmia": "-"}


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    from fedleak.attacks.mia import evaluate

    run = generate_toy_run(tmp_path_factory.mktemp("fig") / "run", **SMALL)
    return evaluate(load_signals(run), rotate=False)


def _legend_outside(fig) -> bool:
    fig.canvas.draw()
    ax = fig.axes[0]
    leg = ax.get_legend().get_window_extent()
    return leg.x0 >= ax.get_window_extent().x1


def test_roc_figure_legend_outside_and_equal_curves_visible(evaluation):
    from fedleak.report.figures import roc_figure

    ev = evaluation
    curves = dict(ev.curves)
    curves["avg-cosine"] = curves["fedmia-ii"]  # two attacks with identical curves
    fig = roc_figure(curves, ev)
    assert _legend_outside(fig)
    lines = {ln.get_label().split("  (")[0]: ln for ln in fig.axes[0].get_lines()}
    thick, thin = lines["FedMIA-II"], lines["Avg-Cosine"]
    assert thick.get_linewidth() > thin.get_linewidth() and thin.get_zorder() > thick.get_zorder()
    assert thin.get_marker() != thick.get_marker() and thin.get_markevery() != thick.get_markevery()
    props = {(ln.get_color(), ln.get_marker()) for k, ln in lines.items() if not k.startswith("chance")}
    assert len(props) == len(ev.metrics["attacks"])


def test_round_axes_have_integer_ticks_and_utility_is_not_clipped(evaluation):
    from fedleak.report.figures import tpr_per_round_figure, utility_figure

    fig = tpr_per_round_figure(evaluation)
    assert _legend_outside(fig)
    ticks = fig.axes[0].get_xticks()
    assert len(ticks) and all(float(t).is_integer() for t in ticks)
    rows = [{"round": r, "train_acc": 1.0, "test_acc": 0.9} for r in range(30)]
    fig = utility_figure(rows)
    ax = fig.axes[0]
    ticks = [t for t in ax.get_xticks() if 0 <= t <= 29]
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert ax.get_ylim()[1] > 100 and _legend_outside(fig)


def test_captions_explain_instead_of_citing():
    from fedleak.report.document import FIG_CAPTIONS

    assert all("paper" not in c for c in FIG_CAPTIONS.values())
    assert "Rounds are numbered from 0" in FIG_CAPTIONS["tpr_per_round"]


# --------------------------------------------------------------------------- 5. datasets


def test_datasets_listing_is_not_wrapped_when_piped(tmp_path):
    from fedleak.data import describe_datasets

    res = runner.invoke(app, ["datasets", "--data-dir", str(tmp_path)], env={"COLUMNS": "40"})
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert "\x1b[" not in res.output  # no colour codes in a pipe
    for r in describe_datasets(str(tmp_path)):
        head = next(line for line in lines if line.startswith(r["name"] + "  found: "))
        assert head.endswith("download: " + ("yes" if r["downloadable"] else "no"))
        assert "    " + r["description"] in lines and "    files: " + r["files"] in lines
        assert f"    source: {r['source']} (licence: {r['license']})" in lines
        if r["aliases"]:
            assert "    also called: " + ", ".join(r["aliases"]) in lines


# --------------------------------------------------------------------------- 6./7. invert


def _invert(argv, tmp_path, monkeypatch):
    monkeypatch.delenv("FEDLEAK_QUIET", raising=False)
    res = runner.invoke(app, ["invert", *argv, "--iterations", "2", "--threads", "1"])
    assert res.exit_code == 0, res.output
    return res.output


def test_invert_mentions_pruning_only_with_a_pruning_defense(tmp_path, monkeypatch):
    base = ["--preset", "dlg", "--dataset", "synthetic", "--images", "1"]
    out = _invert([*base, "--out", str(tmp_path / "none")], tmp_path, monkeypatch)
    assert "label accuracy" in out and "pruned" not in out and "nan" not in out
    assert json.loads((tmp_path / "none" / "metrics.json").read_text())["summary"]["pruned_fraction"] is None
    out = _invert([*base, "--defense", "prune", "--pruning-rate", "50", "--out", str(tmp_path / "p")], tmp_path, monkeypatch)
    frac = json.loads((tmp_path / "p" / "metrics.json").read_text())["summary"]["pruned_fraction"]
    assert 0.45 < frac < 0.55 and f"pruned fraction {frac:.3f};" in out


def test_readme_quick_invert_example_runs(tmp_path, monkeypatch):
    cmd = next(line for line in README.read_text().splitlines() if line.startswith("fedleak invert") and "synthetic" in line)
    argv = shlex.split(cmd.split("#")[0])[2:]
    i = argv.index("--out")
    argv[i + 1] = str(tmp_path / "inv")
    _invert(argv, tmp_path, monkeypatch)
    assert (tmp_path / "inv" / "grid.png").is_file()


# --------------------------------------------------------------------------- 8. log-AUC vs the original


def _log_auc_by_hand(points: list[tuple[float, float]]) -> float:
    """Trapezoids over (u, v) = ((max(log10 x, -5) + 5) / 5, ...), written out point by point."""
    def m(x: float) -> float:
        return 0.0 if x <= 0 else (max(math.log10(x), -5.0) + 5.0) / 5.0

    area = 0.0
    for (f0, t0), (f1, t1) in zip(points, points[1:]):
        area += (m(f1) - m(f0)) * (m(t0) + m(t1)) / 2
    return area


def test_log_auc_on_sklearns_dropped_curve_differs_only_when_scores_tie():
    from sklearn.metrics import roc_curve as sk_roc

    # 4 members, 4 non-members; three tie groups of one member and one non-member each put three
    # collinear points of equal step on the curve: (0, .25) (.25, .5) (.5, .75) (.75, 1)
    y = np.array([1, 1, 0, 1, 0, 1, 0, 0])
    s = np.array([5, 4, 4, 3, 3, 2, 2, 1], float)
    fpr, tpr, _ = roc_curve(y, s)
    full = [(0, 0), (0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1), (1, 1)]
    assert list(zip(fpr, tpr)) == full
    f_sk, t_sk, _ = sk_roc(y, s, drop_intermediate=True)
    dropped = [(0, 0), (0, 0.25), (0.75, 1), (1, 1)]
    assert list(zip(f_sk, t_sk)) == dropped  # the two inner tie points are gone
    ours, original = log_auc_from_curve(fpr, tpr), log_auc_from_curve(f_sk, t_sk)
    assert ours == pytest.approx(_log_auc_by_hand(full), abs=1e-12)
    assert original == pytest.approx(_log_auc_by_hand(dropped), abs=1e-12)
    # the straight chord in log space lies above the curve through the tie points here
    assert original - ours == pytest.approx(_log_auc_by_hand(dropped) - _log_auc_by_hand(full), abs=1e-12)
    assert original > ours + 0.01
    f_all, t_all, _ = sk_roc(y, s, drop_intermediate=False)  # without the dropping, the same value
    assert log_auc_from_curve(f_all, t_all) == pytest.approx(ours, abs=1e-12)
    # distinct scores: every segment is horizontal or vertical, dropping changes nothing
    rng = np.random.default_rng(0)
    y2, s2 = rng.integers(0, 2, 300), rng.normal(size=300)
    f2, t2, _ = sk_roc(y2, s2, drop_intermediate=True)
    assert log_auc_from_curve(f2, t2) == pytest.approx(roc_metrics(y2, s2).log_auc, abs=1e-12)
    assert roc_metrics(y, s).log_auc == ours  # what fedleak reports


def test_the_originals_avg_norm_is_the_negative_and_its_auc_the_complement(tmp_path):
    from fedleak.metrics.roc import roc_auc

    sig = load_signals(generate_toy_run(tmp_path / "run", **SMALL))
    t, lab = 0, sig.members()
    rows = np.flatnonzero(np.asarray(sig.participated, bool)[:, t])
    g = np.asarray(sig.gnorm2, np.float64)[rows, t]  # [R', N] ‖g_r(n)‖² in the target's rounds
    per_round = [-g[i] for i in range(len(rows))]  # cos_attack: the norm stored negated
    original = -np.mean(per_round, axis=0)  # attack_comparison: the mean negated again = +mean ‖g‖²
    ours = run_attacks(sig, "avg-norm")["avg-norm"]
    np.testing.assert_allclose(ours, -original, rtol=1e-12)
    assert roc_auc(lab, original) == pytest.approx(1 - roc_auc(lab, ours), abs=1e-12)
