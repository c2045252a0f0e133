"""The report's "Privacy audit" section from hand-made audit files, and in a real report."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import SRC, assert_one_error_line, tiny_config
from fedleak.report.audit_section import audit_blocks
from fedleak.report.model import Document, to_html, to_markdown
from fedleak.signals.store import StoreError


def _entry(method, attack, eps, valid, conf=0.95, **details):
    return {"level": "sample", "method": method, "attack": attack, "epsilon": eps, "confidence": conf,
            "delta": 1e-5, "valid_dp_bound": valid, "note": f"note of {method}", "details": details}


AUDIT = {
    "level": "sample", "confidence": 0.95, "delta": 1e-5, "delta_source": "the accountant's δ", "target": 0,
    "accountant": {"epsilon": 8.0, "delta": 1e-5, "level": "sample", "accountant": "rdp", "defense": "dpsgd",
                   "round": 19},
    "canaries": {"m": 400, "kind": "mislabeled", "inserted": 207, "target": 0, "k_choices": [[20, 20], [200, 200]]},
    "notes": [],
    "entries": [
        _entry("one-run", "fedmia-ii", 0.93, True, m=400, guesses=40, correct=38, k_plus=20, k_minus=20),
        _entry("one-run", "blackbox-loss", 0.41, True, m=400, guesses=40, correct=33, k_plus=20, k_minus=20),
        _entry("one-run, best attack", "fedmia-ii", 0.9, True, m=400, guesses=40, correct=38, k_plus=20, k_minus=20),
        _entry("roc-split-half", "fedmia-ii", 1.7, False, tp=30, n_pos=44, fp=2, n_neg=550),
        _entry("roc-optimistic", "fedmia-ii", 2.2, False, conf=None),
    ],
}
CLIENTS = [{"level": "client", "method": "one-shot (Andrew et al. 2024)", "attack": None, "epsilon": 3.1,
            "confidence": None, "delta": 1e-5, "valid_dp_bound": False, "note": "an estimate, not a bound",
            "details": {"canary_clients": 40}}]


def _render(run_dir):
    doc = Document()
    doc.add(*audit_blocks(run_dir))
    return to_html(doc), to_markdown(doc)


def test_section_from_hand_made_sample_and_client_files(tmp_path):
    (tmp_path / "attack").mkdir()
    (tmp_path / "attack" / "audit.json").write_text(json.dumps(AUDIT))
    (tmp_path / "audit").mkdir()
    (tmp_path / "audit" / "clients.json").write_text(json.dumps(CLIENTS))
    html, md = _render(tmp_path)
    for text in (html, md):
        assert "Privacy audit" in text
        # the plain-language reading: the Bonferroni-corrected best bound, not the largest per-attack one
        assert "The strongest attack (FedMIA-II) proves ε ≥ 0.9 at 95% confidence" in text
        assert "the accountant claims ε ≤ 8" in text
        assert "rdp accountant of defense dpsgd" in text
        assert "is not a DP bound" in text and "ε ≥ 0.93" not in text.split("Sample level")[0]
        assert "one-shot (Andrew et al. 2024)" in text and "3.1" in text and "an estimate, not a bound" in text
        assert "38 of 40 guesses right" in text and "30/44 members, 2/550 non-members" in text
    md_rows = [line for line in md.splitlines() if line.startswith("| FedMIA-II |")]
    assert md_rows == ["| FedMIA-II | ≥ 0.93 | 38 of 40 guesses right (k₊ 20, k₋ 20; m 400) | 1.7 | 2.2 | "
                       "held-out half: 30/44 members, 2/550 non-members flagged |"]


def test_section_without_canaries_says_nothing_is_a_bound_and_only_clients(tmp_path):
    (tmp_path / "attack").mkdir()
    plain = {**AUDIT, "canaries": None, "accountant": None,
             "entries": [e for e in AUDIT["entries"] if e["method"].startswith("roc")]}
    (tmp_path / "attack" / "audit.json").write_text(json.dumps(plain))
    _, md = _render(tmp_path)
    assert "This run has no canaries, so nothing here is a DP lower bound" in md
    assert "no accountant claims any ε" in md and "one-run" not in md.split("### Sample level")[1].split("\n")[2]
    (tmp_path / "attack" / "audit.json").unlink()
    assert audit_blocks(tmp_path) == []
    (tmp_path / "audit").mkdir()
    (tmp_path / "audit" / "clients.json").write_text(json.dumps(CLIENTS))
    _, md = _render(tmp_path)
    assert "Client level" in md and "one-shot (Andrew et al. 2024)" in md


def test_a_damaged_clients_file_is_named(tmp_path):
    (tmp_path / "audit").mkdir()
    (tmp_path / "audit" / "clients.json").write_text('{"not": "a list"')
    with pytest.raises(StoreError, match="clients.json is damaged"):
        audit_blocks(tmp_path)


def test_the_report_of_an_audited_run_has_the_section_and_a_bad_file_is_one_line(tmp_path):
    import yaml

    cfg = tiny_config(audit={"canaries": 20, "kind": "mislabeled"})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg"}
    run = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "fedleak.cli", "run", str(tmp_path / "c.yaml"), "--out", str(run),
                        "-q"], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    html, md = (run / "report.html").read_text(), (run / "report.md").read_text()
    assert "<h2>Privacy audit</h2>" in html and "## Privacy audit" in md
    assert "20 mislabeled canaries" in md and "no accountant claims any ε" in md
    (run / "audit").mkdir()
    (run / "audit" / "clients.json").write_text("[1, 2]")
    p = subprocess.run([sys.executable, "-m", "fedleak.cli", "report", str(run)], capture_output=True, text=True,
                       env=env)
    assert_one_error_line(p.returncode, p.stderr, "clients.json is damaged")


def test_terminal_summary_line():
    from fedleak.report.audit_section import audit_summary

    assert audit_summary(AUDIT) == ("privacy audit: ε ≥ 0.9 at 95% confidence (FedMIA-II, one-run canary audit); "
                                    "accountant ε ≤ 8")
    plain = {**AUDIT, "accountant": None, "entries": AUDIT["entries"][3:]}
    assert audit_summary(plain) == ("privacy audit: no canaries, no DP lower bound (ROC ε̂ are not DP bounds); "
                                    "no accountant")
