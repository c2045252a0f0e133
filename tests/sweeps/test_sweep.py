"""Sweeps: hypervolume, grid expansion, failures, skip/resume, outputs, local and Ray backends, CLI."""

import csv
import json
import math

import numpy as np
import pytest
import yaml

from fedleak.config import ConfigError
from fedleak.sweeps import collect, plan, run_sweep
from fedleak.sweeps.hypervolume import hypervolume, pareto_front

TINY = {
    "name": "tiny",
    "seed": 3,
    "data": {"name": "synthetic", "synthetic": {"n_train": 120, "n_test": 40, "num_classes": 4, "channels": 1,
                                                "size": 8}},
    "partition": {"num_clients": 3},
    "candidates": {"n_test": 20, "n_other": 10},
    "model": {"name": "mlp", "options": {"hidden": [16]}},
    "fl": {"rounds": 3, "batch_size": 8, "lr": 0.1},
    "signals": {"every": 1},
}


def _write(tmp_path, sweep, name="sweep.yaml"):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(TINY))
    sweep = {"base": "base.yaml", "out": str(tmp_path / "out"), **sweep}
    p = tmp_path / name
    p.write_text(yaml.safe_dump(sweep))
    return p


# ------------------------------------------------------------------------------------------ hypervolume

def test_hypervolume_hand_examples():
    assert hypervolume([(0.0, 0.0)]) == 1.0
    assert hypervolume([(1.0, 1.0)]) == 0.0
    assert hypervolume([(0.2, 0.6)]) == pytest.approx(0.8 * 0.4)
    # two non-dominated points: union of two rectangles
    assert hypervolume([(0.1, 0.7), (0.4, 0.5)]) == pytest.approx(0.9 * 0.3 + 0.6 * 0.5 - 0.6 * 0.3)
    # a dominated point adds nothing; points outside the unit square are clipped
    assert hypervolume([(0.1, 0.7), (0.4, 0.5), (0.5, 0.9)]) == pytest.approx(hypervolume([(0.1, 0.7), (0.4, 0.5)]))
    assert hypervolume([(-0.2, 0.5)]) == pytest.approx(0.5)
    assert hypervolume([]) == 0.0
    np.testing.assert_allclose(pareto_front([(0.4, 0.5), (0.1, 0.7), (0.5, 0.9)]), [(0.1, 0.7), (0.4, 0.5)])


def test_hypervolume_matches_a_dense_grid_count():
    rng = np.random.default_rng(0)
    n = 600
    g = (np.arange(n) + 0.5) / n
    A, E = np.meshgrid(g, g, indexing="ij")
    for _ in range(5):
        pts = rng.uniform(0, 1, size=(rng.integers(1, 8), 2))
        dominated = np.zeros_like(A, dtype=bool)
        for a, e in pts:
            dominated |= (A >= a) & (E >= e)
        assert hypervolume(pts) == pytest.approx(dominated.mean(), abs=3.0 / n)


# -------------------------------------------------------------------------------------------------- spec

def test_grid_expansion_and_run_ids(tmp_path):
    p = _write(tmp_path, {
        "seeds": [0, 1],
        "variants": [{"label": "a"}, {"label": "b", "set": {"model.options": {"hidden": [8]}}}],
        "set": {"fl.rounds": 2},
        "defenses": [{"name": "sparse", "params": {"scope": "global"}, "strength": {"p": [0.5, 0.9]}},
                     {"name": "perturb", "label": "perturb-dp", "params": {"clip": 1.0},
                      "strength": {"sigma": [1.0]}}],
    })
    spec, out, runs = plan(p)
    assert len(runs) == 2 * (1 + 2 + 1) * 2
    ids = [r.run_id for r in runs]
    assert "a__none__seed0" in ids and "b__sparse__p=0.9__seed1" in ids and "a__perturb-dp__sigma=1__seed0" in ids
    r = next(r for r in runs if r.run_id == "b__sparse__p=0.9__seed1")
    assert r.config["defense"] == {"name": "sparse", "params": {"scope": "global", "p": 0.9}, "clients": None}
    assert r.config["seed"] == 1 and r.config["fl"]["rounds"] == 2 and r.config["model"]["options"]["hidden"] == [8]
    assert r.run_dir == str(out / "runs" / r.run_id)
    assert len({x.config_hash for x in runs}) == len(runs)


@pytest.mark.parametrize("sweep,msg", [
    ({"defenses": [{"name": "sparse", "strength": {"q": [0.5]}}]}, r"sparse__q=0.5__seed0: defense 'sparse': unknown parameter"),
    ({"defenses": [{"name": "sparse", "strength": {"p": [0.5], "scope": ["layer"]}}]}, "exactly one parameter"),
    ({"defenses": [{"name": "sparse"}, {"name": "sparse"}]}, "labels must be unique"),
    ({"defenses": [{"name": "sprase"}]}, "unknown defense 'sprase'"),
    ({"defenses": [], "seeds": [0], "typo": 1}, "unknown key 'typo'"),
    ({"attacks": {"names": ["fedmia-3"]}}, "unknown attack 'fedmia-3'"),
])
def test_bad_sweeps_fail_up_front_with_one_line(tmp_path, sweep, msg):
    from fedleak.errors import USER_ERRORS

    with pytest.raises(USER_ERRORS, match=msg) as e:
        plan(_write(tmp_path, sweep))
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------- end to end

def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_sweep_inline_failures_outputs_skip_and_resume(tmp_path):
    sweep = {
        "seeds": [0],
        "variants": [{"label": "ok"}, {"label": "broken", "set": {"model.name": "nosuchmodel"}}],
        "defenses": [{"name": "sparse", "strength": {"p": [0.5, 0.95]}}],
        "attacks": {"names": ["fedmia-ii", "blackbox-loss"]},
    }
    p = _write(tmp_path, sweep)
    _, out, runs = plan(p)
    # one run was interrupted after its first round: the sweep must resume it, not restart it
    from fedleak.config import parse_config
    from fedleak.fl.simulation import train
    from fedleak.signals.store import read_metrics

    partial = next(r for r in runs if r.run_id == "ok__sparse__p=0.5__seed0")
    train(parse_config(partial.config), partial.run_dir, quiet=True, stop_after=1)
    first_line = read_metrics(partial.run_dir)[0]

    logs = []
    s = run_sweep(p, backend="inline", log=logs.append)
    assert s["ran"] == 6
    assert s["status"]["finished"] == 3 and len(s["status"]["failed"]) == 3
    assert all("unknown model 'nosuchmodel'" in f["error"] for f in s["status"]["failed"])
    assert read_metrics(partial.run_dir)[0] == first_line  # resumed: round 0 not redone
    assert [m["round"] for m in read_metrics(partial.run_dir)] == [0, 1, 2]

    rows = _rows(out / "results.csv")
    ok = [r for r in rows if r["status"] == "finished"]
    assert {r["attack"] for r in ok} == {"fedmia-ii", "blackbox-loss"} and len(ok) == 3 * 2
    assert sum(r["status"] == "failed" for r in rows) == 3
    # every value in the table is the run's own result
    res = json.loads((out / "runs" / "ok__sparse__p=0.95__seed0" / "result.json").read_text())
    row = next(r for r in ok if r["run_id"] == "ok__sparse__p=0.95__seed0" and r["attack"] == "fedmia-ii")
    assert float(row["tpr@0.1%"]) == pytest.approx(res["attacks"]["fedmia-ii"]["tpr@0.1%"])
    assert float(row["test_acc"]) == pytest.approx(read_metrics(res["run_dir"])[-1]["test_acc"])
    # hypervolume recomputed independently from the table's points (baseline + both strengths)
    pts = [(float(r["tpr@0.1%"]), 1 - float(r["test_acc"])) for r in ok if r["attack"] == "fedmia-ii"]
    hv = next(h for h in _rows(out / "hypervolume.csv") if h["attack"] == "fedmia-ii" and h["defense"] == "sparse")
    dom = lambda a, e: any(a >= pa and e >= pe for pa, pe in pts)  # noqa: E731
    grid = (np.arange(400) + 0.5) / 400
    assert float(hv["hv"]) == pytest.approx(np.mean([[dom(a, e) for e in grid] for a in grid]), abs=0.01)
    md = (out / "results.md").read_text()
    assert "### Hypervolume" in md and "## Failed runs" in md and "FedMIA-II" in md
    k, n = res["attacks"]["fedmia-ii"]["tpr@0.1%_members"]
    assert int(row["tpr@0.1%_members"]) == n and int(row["tpr@0.1%_members_found"]) == k
    assert "### TPR@0.1%: members found and 95% CI" in md and f" of {n} (" in md
    assert (out / "plots" / "ok__sparse.png").is_file()

    # re-running: finished runs are skipped, failed ones retried
    mtime = (out / "runs" / "ok__none__seed0" / "result.json").stat().st_mtime_ns
    s2 = run_sweep(p, backend="inline", log=logs.append)
    assert s2["ran"] == 3 and s2["status"]["finished"] == 3
    assert (out / "runs" / "ok__none__seed0" / "result.json").stat().st_mtime_ns == mtime
    # a changed grid point is not mistaken for the finished one
    sweep["set"] = {"fl.lr": 0.05}
    p3 = _write(tmp_path, sweep)
    statuses = {r["run_id"]: r["status"] for r in collect(plan(p3)[2])}
    assert statuses["ok__none__seed0"] != "finished"


@pytest.mark.slow
def test_local_process_backend_runs_in_parallel_and_isolates_crashes(tmp_path):
    p = _write(tmp_path, {"seeds": [0], "defenses": [], "attacks": {"names": ["fedmia-i"]},
                          "variants": [{"label": "v"}, {"label": "bad", "set": {"data.name": "nosuchdata"}}]})
    s = run_sweep(p, backend="local", workers=2, log=lambda m: None)
    assert s["status"]["finished"] == 1 and len(s["status"]["failed"]) == 1
    assert "nosuchdata" in s["status"]["failed"][0]["error"]
    out = tmp_path / "out"
    assert (out / "runs" / "v__none__seed0" / "log.txt").is_file()
    assert json.loads((out / "runs" / "v__none__seed0" / "result.json").read_text())["status"] == "finished"
    # a worker that is killed (here: by the per-run timeout) is a failed run, not a failed sweep
    from fedleak.sweeps.backends import _run_subprocess

    spec = plan(p, out=tmp_path / "out_t")[2][0].to_dict()
    res = _run_subprocess(spec, timeout=0.5)
    assert res["status"] == "failed" and "timed out" in res["error"]


@pytest.mark.slow
def test_ray_backend_on_a_local_instance(tmp_path):
    pytest.importorskip("ray")
    p = _write(tmp_path, {"seeds": [0, 1], "baseline": False, "attacks": {"names": ["fedmia-ii"]},
                          "defenses": [{"name": "quant", "params": {"rounding": "stochastic"},
                                        "strength": {"bits": [2]}}]})
    s = run_sweep(p, backend="ray", workers=2, log=lambda m: None)
    assert s["status"]["finished"] == 2 and not s["status"]["failed"]
    for seed in (0, 1):
        res = json.loads((tmp_path / "out" / "runs" / f"quant__bits=2__seed{seed}" / "result.json").read_text())
        assert res["status"] == "finished" and 0 <= res["attacks"]["fedmia-ii"]["auc"] <= 1
    # same results as the in-process backend
    inline = run_sweep(p, out=tmp_path / "out2", backend="inline", log=lambda m: None)
    a = _rows(tmp_path / "out" / "results.csv")
    b = _rows(tmp_path / "out2" / "results.csv")
    assert [r["auc"] for r in a] == [r["auc"] for r in b] and inline["status"]["finished"] == 2


def test_cli_dry_run_and_bad_backend(tmp_path):
    from typer.testing import CliRunner

    from fedleak.cli import app

    p = _write(tmp_path, {"seeds": [0], "defenses": [{"name": "mixup", "strength": {"alpha": [0.1, 1.0]}}]})
    r = CliRunner().invoke(app, ["sweep", str(p), "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "pending   mixup__alpha=0.1__seed0" in r.output and "3 runs" in r.output
    r = CliRunner().invoke(app, ["sweep", str(p), "--backend", "slurm"])
    assert r.exit_code != 0 and "unknown backend 'slurm'" in str(r.exception)


@pytest.mark.slow
def test_stopping_the_driver_stops_its_workers(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    p = _write(tmp_path, {"seeds": [0], "defenses": [], "set": {"fl.rounds": 400}})
    drv = subprocess.Popen([sys.executable, "-m", "fedleak.cli", "sweep", str(p), "-j", "1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "out" / "runs" / "none__seed0" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.is_file() and metrics.read_text().count("\n") >= 1):
        time.sleep(0.5)
    assert metrics.is_file(), "the worker never started"
    worker = [int(x) for x in subprocess.run(["pgrep", "-P", str(drv.pid)], capture_output=True,
                                              text=True).stdout.split()]
    assert worker
    drv.send_signal(signal.SIGTERM)
    drv.wait(timeout=60)
    time.sleep(1)
    for pid in worker:
        try:
            os.kill(pid, 0)
            alive = open(f"/proc/{pid}/stat").read().split()[2] not in ("Z", "X")
        except (ProcessLookupError, FileNotFoundError):
            alive = False
        assert not alive, f"worker {pid} outlived the driver"


def test_a_run_is_never_executed_by_two_processes(tmp_path):
    import socket

    from fedleak.sweeps.runner import LOCK, acquire_lock, execute_run, release_lock

    d = tmp_path / "run"
    assert acquire_lock(d) is None
    assert "already being executed by process" in acquire_lock(d)  # held by this (live) process
    spec = {"run_id": "x", "run_dir": str(d), "config_hash": "h", "config": {}}
    res = execute_run(spec)
    assert res["status"] == "failed" and res["held"] and (d / LOCK).is_file()
    # a lock file left by a dead process on this host is stale and taken over
    release_lock(d)
    (d / LOCK).write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname()}))
    assert acquire_lock(d) is None
