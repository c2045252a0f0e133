"""The margin variants (blackbox-margin, loss-series-margin, fedmia-i-margin) against naive loops, and their
behaviour on a run recorded before margins existed (one-line error when named; left out of "all")."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from conftest import SRC, assert_one_error_line
from fedleak.attacks.mia import ATTACKS, evaluate, run_attacks, runnable_names
from fedleak.signals.loading import Signals, load_signals
from fedleak.signals.store import StoreError

pytestmark = pytest.mark.numerics

MARGIN = ("blackbox-margin", "loss-series-margin", "fedmia-i-margin")


def margin_signals(R=4, K=5, N=40, seed=0, with_margin=True) -> Signals:
    rng = np.random.default_rng(seed)
    owner = rng.integers(-1, K, N)
    owner[:5] = 0  # the target owns some candidates
    mem = owner[None, :] == np.arange(K)[:, None]
    part = rng.random((R, K)) < 0.8
    part[:, 0] = [True, False, True, True][:R]
    margin = rng.normal(0, 2, (R, K, N)) + 1.5 * mem
    loss = np.log1p(np.exp(-margin))  # CE = softplus(−φ)
    gn = np.exp(rng.normal(0, 0.5, (R, 1, N))).repeat(K, 1)
    cos = rng.normal(0, 0.05, (R, K, N))
    dn = np.exp(rng.normal(0, 0.3, (R, K)))
    dot = cos * np.sqrt(gn * dn[:, :, None])
    arrs = {"loss": loss, "cos": cos, "gnorm2": gn, "dot": dot, "diff": 2 * dot - gn, "margin": margin}
    for a in arrs.values():
        a[~part] = np.nan
    if not with_margin:
        arrs["margin"] = None
    return Signals(rounds=np.arange(R) * 2 + 1, ids=np.broadcast_to(np.arange(N), (R, K, N)).copy(),
                   dnorm2=np.where(part, dn, np.nan), participated=part, client_test_acc=np.full((R, K), 0.5),
                   lr=np.full(R, 0.1), owner=owner, cand_ids=np.arange(N), target=0, **arrs)


def _phi(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def test_margin_attacks_match_naive_loops():
    s = margin_signals()
    R, K, N = s.margin.shape
    got = run_attacks(s, list(MARGIN), target=0)
    rounds_t = [r for r in range(R) if s.participated[r, 0]]
    assert np.array_equal(got["blackbox-margin"], s.margin[rounds_t[-1], 0])
    series = [sum(s.margin[r, 0, n] for r in rounds_t) / len(rounds_t) for n in range(N)]
    np.testing.assert_allclose(got["loss-series-margin"], series, rtol=1e-14)
    naive = []
    for n in range(N):
        vals = []
        for r in rounds_t:
            sh = [s.margin[r, k, n] for k in range(1, K) if s.participated[r, k]]
            if not sh:
                continue
            mu = sum(sh) / len(sh)
            var = sum((v - mu) ** 2 for v in sh) / len(sh) + 1e-8
            vals.append(_phi((s.margin[r, 0, n] - mu) / math.sqrt(var)))
        naive.append(sum(vals) / len(vals))
    np.testing.assert_allclose(got["fedmia-i-margin"], naive, rtol=1e-12)
    # higher = member: the planted member shift makes every margin attack beat chance
    ev = evaluate(s, list(MARGIN), target=0, rotate=False)
    assert all(ev.metrics["attacks"][a]["auc"] > 0.6 for a in MARGIN)
    assert {ATTACKS[a].measure for a in MARGIN} == {"margin"}


def test_blackbox_margin_ranks_as_blackbox_loss():
    s = margin_signals(seed=3)
    sc = run_attacks(s, ["blackbox-margin", "blackbox-loss"], target=0)
    assert np.array_equal(np.argsort(sc["blackbox-margin"], kind="stable"), np.argsort(sc["blackbox-loss"], kind="stable"))


def test_old_run_without_margin():
    s = margin_signals(with_margin=False)
    for name in MARGIN:
        with pytest.raises(StoreError, match="no 'margin' array.*re-record"):
            run_attacks(s, [name], target=0)
    keep = runnable_names(s, None)
    assert keep == [n for n in ATTACKS if n not in MARGIN]
    assert runnable_names(s, "all") == keep and runnable_names(s, ["loss,ALL"]) == keep
    assert runnable_names(s, ["blackbox-margin"]) == ["blackbox-margin"]
    assert runnable_names(margin_signals(), None) == list(ATTACKS)
    assert set(run_attacks(s)) == set(keep)  # the default selection runs on an old run


def _old_toy_run(tmp_path):
    from fedleak.fl.toy import generate_toy_run

    run = generate_toy_run(tmp_path / "toy", num_clients=4, per_client=40, n_test=80, n_test_cand=30, n_other=10,
                           rounds=3, every=1)
    assert load_signals(run).margin is None  # the toy writes the arrays of a run recorded before margins
    return run


@pytest.mark.slow
def test_cli_on_old_run(tmp_path):
    run = _old_toy_run(tmp_path)
    cmd = [sys.executable, "-m", "fedleak.cli", "attack", str(run), "--no-figures", "-q"]
    env = {"PYTHONPATH": str(SRC), "FEDLEAK_QUIET": "1", "PATH": "/usr/bin:/bin"}
    p = subprocess.run([*cmd, "--attacks", "fedmia-i-margin"], capture_output=True, text=True, env=env)
    assert_one_error_line(p.returncode, p.stderr, "margin", "re-record")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    m = json.loads((run / "attack" / "metrics.json").read_text())
    assert m["attacks_not_recorded"] == list(MARGIN) and set(m["attacks"]) == set(ATTACKS) - set(MARGIN)
    from fedleak.attacks.mia.evaluation import Evaluation
    from fedleak.report.outputs import is_full

    assert is_full(Evaluation.from_json(m))
