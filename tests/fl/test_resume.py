"""A run killed with SIGKILL at an arbitrary point and resumed equals an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import tiny_config
from fedleak.signals.loading import load_signals
from fedleak.signals.store import read_metrics, recorded_rounds


def _cli(cfg_path, out, **kw):
    env = dict(os.environ, FEDLEAK_QUIET="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "fedleak.cli", "train", str(cfg_path), "--out", str(out), "-q"],
                            env=env, **kw)


@pytest.mark.slow
def test_sigkill_and_resume_equals_uninterrupted(tmp_path):
    cfg = tiny_config(fl__rounds=8, data__synthetic={"n_train": 600, "n_test": 100, "num_classes": 4,
                                                     "channels": 1, "size": 8})
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    ref = tmp_path / "ref"
    assert _cli(cfg_path, ref).wait(timeout=300) == 0

    run = tmp_path / "killed"
    killed_mid = False
    for delay_rounds in (2, 5):
        p = _cli(cfg_path, run)
        t0 = time.time()
        while time.time() - t0 < 300 and p.poll() is None:
            if len(recorded_rounds(run)) >= delay_rounds:
                time.sleep(0.05 * delay_rounds)  # somewhere inside the next round
                break
            time.sleep(0.01)
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
            killed_mid = True
    assert killed_mid, "the run finished before it could be killed; make it longer"
    assert _cli(cfg_path, run).wait(timeout=300) == 0

    a, b = load_signals(ref), load_signals(run)
    assert list(a.rounds) == list(b.rounds) == list(range(8))
    for k in ("loss", "dot", "cos", "diff", "gnorm2", "ids", "dnorm2"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    ma, mb = read_metrics(ref), read_metrics(run)
    assert [m["round"] for m in mb] == list(range(8))
    assert [m["test_acc"] for m in ma] == [m["test_acc"] for m in mb]


def test_resume_refuses_a_different_config(tmp_path):
    import pytest

    from fedleak.config import ConfigError
    from fedleak.fl.simulation import train

    train(tiny_config(fl__rounds=1), tmp_path / "r", quiet=True)
    with pytest.raises(ConfigError, match="fl.lr"):
        train(tiny_config(fl__rounds=1, fl__lr=0.5), tmp_path / "r", quiet=True)


def test_a_checkpoint_that_is_not_a_file_is_refused_and_keeps_the_finished_metrics(tmp_path):
    """Only a missing checkpoint.pt means "start at round 0": a directory (or FIFO) in its place is refused
    before anything is truncated, so the finished run keeps every metrics record."""
    import pytest

    from fedleak.fl.simulation import train
    from fedleak.signals.store import StoreError

    run = tmp_path / "r"
    train(tiny_config(fl__rounds=2), run, quiet=True)
    metrics = (run / "metrics.jsonl").read_bytes()
    assert len(read_metrics(run)) == 2
    for make in (lambda p: p.mkdir(), os.mkfifo):
        ck = run / "checkpoint.pt"
        ck.unlink()
        make(ck)
        with pytest.raises(StoreError, match="checkpoint.pt is not a regular file"):
            train(tiny_config(fl__rounds=2), run, quiet=True)
        assert (run / "metrics.jsonl").read_bytes() == metrics
        ck.rmdir() if ck.is_dir() else ck.unlink()
        ck.write_bytes(b"")  # any file again, so the next unlink works
