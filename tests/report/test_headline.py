"""``--headline-fpr`` (issue #11 item 5): the FPR the verdict, tables, ranking, oracle round and summaries headline,
checked against TPRs computed independently from ``scores.npz`` with a naive threshold loop."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from conftest import assert_one_error_line, naive_k
from fedleak.attacks.mia import run_attacks
from fedleak.cli import main
from fedleak.fl.toy import generate_toy_run
from fedleak.signals.loading import load_signals

TOY = dict(per_client=100, n_other=60, n_test=300, n_test_cand=150, rounds=4, shift=0.3, num_clients=4)


def cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["fedleak", *args])
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def _naive(run) -> dict[str, dict]:
    """Per attack, from scores.npz alone: members found at 1% and 0.1% FPR and the AUC."""
    z = np.load(run / "attack" / "scores.npz")
    member = z["member"].astype(bool)
    out = {}
    for key in z.files:
        if key in ("ids", "owner", "member", "target"):
            continue
        s = z[key].astype(np.float64)
        out[key.replace("_", "-")] = {"k1": naive_k(member, s, 0.01), "k01": naive_k(member, s, 0.001),
                                      "n": int(member.sum()), "auc": roc_auc_score(member, s)}
    return out


@pytest.fixture(scope="module")
def headlined(tmp_path_factory):
    """A toy run attacked with --headline-fpr 0.01 (terminal table captured), then reported."""
    from typer.testing import CliRunner

    from fedleak.cli import app

    run = generate_toy_run(tmp_path_factory.mktemp("head") / "run", **TOY)
    r = CliRunner().invoke(app, ["attack", str(run), "--headline-fpr", "0.01", "--no-rotate"],
                           env={"FEDLEAK_QUIET": ""})
    assert r.exit_code == 0, r.output
    rep = CliRunner().invoke(app, ["report", str(run), "-q"])
    assert rep.exit_code == 0, rep.output
    return run, r.output


def test_attack_writes_the_headline_and_the_terminal_table_reads_it(headlined):
    run, terminal = headlined
    m = json.loads((run / "attack" / "metrics.json").read_text())
    assert m["headline_fpr"] == 0.01 and m["fpr_targets"] == [0.1, 0.01, 0.001, 0.0001]
    naive = _naive(run)
    for name, a in m["attacks"].items():
        v = naive[name]
        assert a["tpr@1%"] == pytest.approx(v["k1"] / v["n"]) and a["counts"]["tpr@1%"] == [v["k1"], v["n"]]
        line = next(ln for ln in terminal.splitlines() if ln.strip().startswith(a["label"] + " "))
        assert f"{v['k1']} of {v['n']} ({100 * v['k1'] / v['n']:.2f}%" in line  # the headline cell has k of n


def test_verdict_table_and_oracle_headline_tpr_at_1_percent(headlined):
    run, _ = headlined
    naive = _naive(run)
    m = json.loads((run / "attack" / "metrics.json").read_text())
    labels = {n: a["label"] for n, a in m["attacks"].items()}
    order = sorted(naive, key=lambda n: (-naive[n]["k1"], -naive[n]["auc"], n))
    best = naive[order[0]]
    md = (run / "report.md").read_text()
    verdict = md.split("## Setup")[0]
    assert f"**{labels[order[0]]}**" in verdict
    assert f"pick out **{100 * best['k1'] / best['n']:.2f}%** of client" in verdict
    assert "wrongly flagging at most 1% of non-members" in verdict and "at most 0.1%" not in verdict
    table = md.split("## Attack results")[1].split("\n| ")[1:]
    head = [c.strip() for c in table[0].split("|")]
    rows = [[c.strip() for c in r.split("|")] for r in table[1:1 + len(order)]]  # (the |---| line is not split)
    assert "Sorted by TPR@1%" in md and [r[0] for r in rows] == [labels[n] for n in order]
    for r, n in zip(rows, order):
        v = naive[n]
        assert r[head.index("TPR@1%")].startswith(f"{v['k1']} of {v['n']} ({100 * v['k1'] / v['n']:.2f}%, 95% CI")
        assert r[head.index("TPR@0.1%")] == f"{100 * v['k01'] / v['n']:.2f}%"  # not the headline: the plain rate
    # the oracle round of a single-round attack is the best round at 1% FPR, recomputed round by round
    sig = load_signals(run)
    t = m["target"]
    member = sig.members(t)
    part = [int(r) for i, r in enumerate(sig.rounds) if sig.participated[i, t]]
    per = [naive_k(member, run_attacks(sig, "grad-cosine", round=r, target=t)["grad-cosine"], 0.01) for r in part]
    o = m["attacks"]["grad-cosine"]["oracle"]
    assert o["round"] == part[int(np.argmax(per))] and o["tpr@1%"] == pytest.approx(max(per) / member.sum())
    assert "TPR@1% (oracle)" in md and "### TPR@1% per round" in md


def test_summarize_headlines_the_runs_setting_and_a_flag_rereads_it(headlined, monkeypatch, capsys):
    run, _ = headlined
    naive = _naive(run)
    labels = {n: a["label"] for n, a in json.loads((run / "attack" / "metrics.json").read_text())["attacks"].items()}
    code, out, err = cli(monkeypatch, capsys, "summarize", str(run))
    assert code == 0, err
    lines = [ln for ln in out.splitlines() if ln.startswith("| ")]
    head = [c.strip() for c in lines[0].split("|")]
    assert head[1:5] == ["attack", "AUC", "TPR@10% (%)", "TPR@1% (%)"]
    assert head[6] == "TPR@1%: members found, 95% CI"
    rows = {r.split("|")[1].strip(): [c.strip() for c in r.split("|")] for r in lines[1:]}
    for n, v in naive.items():
        assert rows[labels[n]][4] == f"{100 * v['k1'] / v['n']:.2f} ± 0.00"
        assert rows[labels[n]][6].startswith(f"{v['k1']} of {v['n']} (")
    col = [float(r.split("|")[4].split("±")[0]) for r in lines[1:]]
    assert col == sorted(col, reverse=True)
    # --headline-fpr 0.001 re-reads the same metrics at 0.1% (no new attack files)
    before = (run / "attack" / "metrics.json").read_bytes()
    code, out, err = cli(monkeypatch, capsys, "summarize", str(run), "--headline-fpr", "0.001")
    assert code == 0, err
    assert "| attack | AUC | TPR@1% (%) | TPR@0.1% (%) |" in out
    row = next(ln for ln in out.splitlines() if ln.startswith(f"| {labels['fedmia-ii']} |")).split("|")
    v = naive["fedmia-ii"]
    assert row[4].strip() == f"{100 * v['k01'] / v['n']:.2f} ± 0.00"
    assert (run / "attack" / "metrics.json").read_bytes() == before


def test_a_headline_outside_the_computed_fprs_is_added(tmp_path, monkeypatch, capsys):
    run = generate_toy_run(tmp_path / "run", **TOY)
    code, _, err = cli(monkeypatch, capsys, "attack", str(run), "--headline-fpr", "0.05", "--no-figures", "-q",
                       "--attacks", "fedmia-ii,blackbox-loss")
    assert code == 0, err
    sub = run / "attack" / "blackbox-loss+fedmia-ii"
    m = json.loads((sub / "metrics.json").read_text())
    assert m["fpr_targets"] == [0.1, 0.05, 0.01, 0.001, 0.0001] and m["headline_fpr"] == 0.05
    z = np.load(sub / "scores.npz")
    member = z["member"].astype(bool)
    for name, a in m["attacks"].items():
        k = naive_k(member, z[name.replace("-", "_")].astype(np.float64), 0.05)
        assert a["tpr@5%"] == pytest.approx(k / member.sum()) and a["counts"]["tpr@5%"] == [k, int(member.sum())]
    assert m["attacks"]["blackbox-loss"]["oracle"].keys() == {"note", "round", "tpr@5%", "auc"}


@pytest.mark.parametrize("value", ["0", "1", "-0.01", "1.5", "nan", "inf", "abc"])
@pytest.mark.parametrize("command", ["attack", "report", "summarize", "run", "sweep"])
def test_bad_headline_fpr_is_one_error_line(tmp_path, monkeypatch, capsys, command, value):
    target = tmp_path / "does-not-matter"
    code, out, err = cli(monkeypatch, capsys, command, str(target), "--headline-fpr", value)
    needle = "not a valid float" if value == "abc" else "strictly between 0 and 1"
    assert_one_error_line(code, err, "--headline-fpr", needle)
    assert not target.exists()


@pytest.mark.parametrize("damage,needle", [
    (lambda m: m.update(headline_fpr=2), "'headline_fpr' is not a number between 0 and 1"),
    (lambda m: m["attacks"]["fedmia-ii"].pop("kind"), "unreadable entry 'kind'"),
    (lambda m: m["attacks"]["fedmia-ii"].update(counts={"tpr@0.1%": "many"}), "unreadable entry"),
])
def test_a_damaged_metrics_file_is_one_error_line(tmp_path, monkeypatch, capsys, damage, needle):
    run = generate_toy_run(tmp_path / "run", **{**TOY, "rounds": 2})
    code, _, err = cli(monkeypatch, capsys, "attack", str(run), "--no-figures", "-q")
    assert code == 0, err
    p = run / "attack" / "metrics.json"
    m = json.loads(p.read_text())
    damage(m)
    p.write_text(json.dumps(m))
    code, _, err = cli(monkeypatch, capsys, "summarize", str(run))
    assert_one_error_line(code, err, str(p), "is damaged", needle)


def test_report_with_another_headline_reattacks_with_the_same_settings(tmp_path, monkeypatch, capsys):
    run = generate_toy_run(tmp_path / "run", **{**TOY, "rounds": 2})
    code, _, err = cli(monkeypatch, capsys, "attack", str(run), "--no-figures", "-q", "--aggregation", "stouffer",
                       "--no-rotate")
    assert code == 0, err
    code, _, err = cli(monkeypatch, capsys, "report", str(run), "-q", "--headline-fpr", "0.01")
    assert code == 0, err
    m = json.loads((run / "attack" / "metrics.json").read_text())
    assert m["headline_fpr"] == 0.01 and m["fedmia_options"]["aggregation"] == "stouffer" and m["figures"]
    naive = _naive(run)
    best = max(naive.values(), key=lambda v: (v["k1"], v["auc"]))
    md = (run / "report.md").read_text()
    assert f"pick out **{100 * best['k1'] / best['n']:.2f}%**" in md and "at most 1% of non-members" in md
    assert "--headline-fpr 0.01" in md  # the reproduce lines say how to get the same numbers
    # without the flag, the report keeps the run's headline (no re-attack: metrics.json is left as it is)
    before = (run / "attack" / "metrics.json").read_bytes()
    code, _, err = cli(monkeypatch, capsys, "report", str(run), "-q")
    assert code == 0, err
    md = (run / "report.md").read_text()
    assert (run / "attack" / "metrics.json").read_bytes() == before and "at most 1% of non-members" in md
