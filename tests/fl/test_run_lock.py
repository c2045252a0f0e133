"""One writer per run directory: real concurrent processes, dead holders, the sweep runner, flower-sim."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from conftest import SRC, tiny_config
from fedleak.fl.simulation import train
from fedleak.runlock import LOCK, RunLockError, acquire_lock, lock_holder, release_lock, run_lock
from fedleak.signals.store import read_metrics

SRC = str(SRC)
ENV = dict(os.environ, FEDLEAK_QUIET="1", PYTHONUNBUFFERED="1", PYTHONPATH=SRC)


def _train_cli(cfg_path: Path, out: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fedleak.cli", "train", str(cfg_path), "--out", str(out), "-q"],
                            env=ENV, **kw)


@contextlib.contextmanager
def _held_by_another_process(run: Path, command: str):
    """A real second process that takes the run lock as ``command`` and holds it until the block ends, then exits
    without releasing it (the flock goes with the process; the lock file stays)."""
    code = ("import sys; from fedleak.runlock import acquire_lock; "
            "assert acquire_lock(sys.argv[1], sys.argv[2]) is None; print('held', flush=True); sys.stdin.readline()")
    holder = subprocess.Popen([sys.executable, "-c", code, str(run), command], env=ENV, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.communicate("\n", timeout=60)


def _wait_for(cond, timeout: float = 120.0) -> None:
    t0 = time.time()
    while not cond():
        if time.time() - t0 > timeout:
            raise AssertionError("timed out")
        time.sleep(0.02)


@pytest.mark.slow
def test_a_second_train_on_the_same_out_is_refused_and_the_first_finishes_cleanly(tmp_path):
    # long enough that the second process (seconds to import torch) meets a running first one on any machine:
    # the per-client loop, 5 local epochs (the stacked engine finished 8 one-epoch rounds before the second was up)
    rounds = 20
    cfg = tiny_config(fl__rounds=rounds, fl__vectorize="off", fl__local_epochs=5,
                      data__synthetic={"n_train": 3000, "n_test": 100, "num_classes": 4, "channels": 1, "size": 8})
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    run = tmp_path / "run"
    first = _train_cli(cfg_path, run, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: first.poll() is not None or (lock_holder(run) or {}).get("pid") == first.pid)
    assert first.poll() is None, "the first run finished before the second started; make it longer"
    second = _train_cli(cfg_path, run, stderr=subprocess.PIPE, text=True)
    err = second.communicate(timeout=120)[1]
    assert second.returncode == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"error: run {run} is already being executed by process {first.pid} on "
                               f"{socket.gethostname()} (`fedleak train`, started ")
    assert lines[0].endswith("wait for it to finish, or use another --out")
    assert first.poll() is None, "the first run should still be training (else the test proves nothing)"
    assert first.wait(timeout=300) == 0, first.stderr.read()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == list(range(rounds))
    assert not (run / LOCK).exists() and not list(run.rglob("*.tmp"))


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path):
    run = tmp_path / "run"
    code = ("import os, signal, sys; from fedleak.runlock import acquire_lock; "
            "assert acquire_lock(sys.argv[1], 'fedleak train') is None; os.kill(os.getpid(), signal.SIGKILL)")
    p = subprocess.Popen([sys.executable, "-c", code, str(run)], env=ENV)
    assert p.wait(timeout=120) == -signal.SIGKILL
    assert lock_holder(run) is not None and lock_holder(run)["pid"] == p.pid  # the file is left behind
    train(tiny_config(fl__rounds=1), run, quiet=True)
    assert [m["round"] for m in read_metrics(run)] == [0]
    assert not (run / LOCK).exists()


def test_a_live_holder_in_another_process_is_respected_and_released(tmp_path):
    run = tmp_path / "run"
    with _held_by_another_process(run, "fedleak flower-sim") as holder:
        with pytest.raises(RunLockError, match=rf"by process {holder.pid} on .*`fedleak flower-sim`"):
            train(tiny_config(fl__rounds=1), run, quiet=True)
        assert acquire_lock(run) is not None
        assert not (run / "config.yaml").exists()  # nothing was written
    assert lock_holder(run)["pid"] == holder.pid  # it exited without releasing: the file stays, the flock is gone
    train(tiny_config(fl__rounds=1), run, quiet=True)
    assert [m["round"] for m in read_metrics(run)] == [0] and not (run / LOCK).exists()


def test_a_lock_written_on_another_host_is_respected(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK).write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "command": "fedleak train"}))
    with pytest.raises(RunLockError, match=r"on elsewhere\.example .*\(if no process on elsewhere\.example runs it, "
                                            r"delete .*/run/\.lock\)$"):
        train(tiny_config(fl__rounds=1), run, quiet=True)


def test_the_lock_is_reentrant_in_one_process_but_acquire_lock_is_not(tmp_path):
    """The sweep worker holds the lock (acquire_lock) and then trains in the same process."""
    run = tmp_path / "run"
    assert acquire_lock(run, "fedleak sweep") is None
    try:
        assert "already being executed by process" in acquire_lock(run)
        train(tiny_config(fl__rounds=1), run, quiet=True)  # nested in the holding thread: allowed
        errors: list[BaseException] = []

        def other_thread() -> None:
            try:
                train(tiny_config(fl__rounds=1), run, quiet=True)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
        assert len(errors) == 1 and isinstance(errors[0], RunLockError) and "another thread" in str(errors[0])
        assert lock_holder(run)["command"] == "fedleak sweep"  # still held by the outer owner
    finally:
        release_lock(run)
    assert not (run / LOCK).exists()


def test_a_failed_start_leaves_no_empty_directory(tmp_path):
    from fedleak.config import ConfigError

    run = tmp_path / "new" / "run"
    with pytest.raises(ConfigError):
        train(tiny_config(fl__rounds=1, model={"name": "no-such-model"}), run, quiet=True)
    assert not run.exists()
    with run_lock(tmp_path / "kept"):
        (tmp_path / "kept" / "file").write_text("x")
    assert (tmp_path / "kept" / "file").exists() and not (tmp_path / "kept" / LOCK).exists()


def test_flower_sim_checks_out_before_starting_flower_and_ray(tmp_path):
    pytest.importorskip("flwr")
    ray = pytest.importorskip("ray")
    from fedleak.config import ConfigError
    from fedleak.flower.sim import run_flower_simulation

    trained = tmp_path / "trained"
    train(tiny_config(fl__rounds=1), trained, quiet=True)
    with pytest.raises(ConfigError, match=r"different config \(differs at: fl\.lr\)"):
        run_flower_simulation(tiny_config(fl__rounds=1, fl__lr=0.5), trained, quiet=True)
    with pytest.raises(ConfigError, match="already holds a run; a Flower federation cannot be resumed"):
        run_flower_simulation(tiny_config(fl__rounds=1), trained, quiet=True)

    run = tmp_path / "run"
    with _held_by_another_process(run, "fedleak train") as holder:
        with pytest.raises(RunLockError, match=f"by process {holder.pid} "):
            run_flower_simulation(tiny_config(fl__rounds=1), run, quiet=True)
    assert not ray.is_initialized()  # refused before Ray was started
