"""One sweep run, as executed by every backend: train (or resume), attack, write ``result.json``.

A run directory holds the engine's files plus:

* ``sweep_run.json``   the run's spec (written by the driver before the run starts)
* ``result.json``      written atomically when the run finished: utility, privacy, attack metrics
* ``error.json``       the last failure (one-line message and traceback); removed by a later success
* ``log.txt``          stdout/stderr of the worker process (local backend)
* ``.lock``            the run's lock (``fedleak.runlock``): pid and host of the process working on it

A run counts as finished only when ``result.json`` exists with the same config hash; anything else is
(re)started, and the engine resumes it from its last checkpoint.

``python -m fedleak.sweeps.runner RUN_DIR/sweep_run.json`` runs one run in its own process (local backend).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from fedleak.runlock import LOCK, RunLockError, acquire_lock, release_lock  # noqa: F401 - LOCK re-exported

RESULT, ERROR, SPEC = "result.json", "error.json", "sweep_run.json"
HELD_EXIT = 3  # exit status of a worker that found its run held by another process


def _atomic_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def finished_result(spec: dict[str, Any]) -> dict[str, Any] | None:
    """The stored result of a finished run with the same config, else None."""
    p = Path(spec["run_dir"]) / RESULT
    if not p.is_file():
        return None
    try:
        res = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if res.get("status") != "finished" or res.get("config_hash") != spec["config_hash"]:
        return None
    return res


def _meta(spec: dict[str, Any]) -> dict[str, Any]:
    keys = ("run_id", "run_dir", "config_hash", "variant", "defense", "defense_name", "param", "value", "seed")
    return {k: spec.get(k) for k in keys}


def failure(spec: dict[str, Any], message: str, tb: str = "") -> dict[str, Any]:
    return {**_meta(spec), "status": "failed", "error": message.strip().splitlines()[0] if message.strip() else
            "unknown error", "traceback": tb}


def execute_run(spec: dict[str, Any]) -> dict[str, Any]:
    """Train/resume the run, evaluate the attacks, write and return its result. Never raises.

    Two processes never work on one run directory: a run held by another live process is reported as failed
    (re-running the sweep later picks it up)."""
    run_dir = Path(spec["run_dir"])
    done = finished_result(spec)
    if done is not None:
        return {**done, "status": "finished", "skipped": True}
    try:
        held = acquire_lock(run_dir, "fedleak sweep")
    except RunLockError as e:  # read-only or full file system
        return failure(spec, str(e))
    if held is not None:
        return {**failure(spec, held), "held": True}
    try:
        return _execute_locked(spec, run_dir)
    finally:
        release_lock(run_dir)


def _execute_locked(spec: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    done = finished_result(spec)  # finished by another process while we waited for the lock
    if done is not None:
        return {**done, "status": "finished", "skipped": True}
    t0 = time.time()
    try:
        import torch

        from fedleak.attacks.client_audit import train_audited
        from fedleak.config import parse_config
        from fedleak.sweeps.audit import audit_epsilons
        from fedleak.sweeps.evaluate import Headline, attack_metrics, evaluate_run, utility

        cfg = parse_config(spec["config"], f"(sweep run {spec['run_id']})")
        if cfg.fl.threads:
            torch.set_num_threads(cfg.fl.threads)
        run_dir.mkdir(parents=True, exist_ok=True)
        train_audited(cfg, run_dir, quiet=True)  # audit.canary_clients: audit/clients.json
        evaluated = evaluate_run(run_dir, spec.get("attacks"))  # signals loaded and attacks scored once
        result = {
            **_meta(spec),
            "status": "finished",
            "utility": utility(run_dir),
            "headline_fpr": Headline.of(spec.get("attacks")).fpr,
            "attacks": attack_metrics(run_dir, spec.get("attacks"), evaluated),
            "audit": audit_epsilons(run_dir, spec.get("attacks"), evaluated),  # ε̂ columns (sweeps/audit.py)
            "time_s": time.time() - t0,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        _atomic_json(run_dir / RESULT, result)
        (run_dir / ERROR).unlink(missing_ok=True)
        return result
    except BaseException as e:  # noqa: BLE001 - a failed run is reported, never stops the sweep
        if isinstance(e, KeyboardInterrupt):
            raise
        res = failure(spec, f"{type(e).__name__}: {e}", traceback.format_exc())
        res["time_s"] = time.time() - t0
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            _atomic_json(run_dir / ERROR, res)
        except OSError:
            pass
        return res


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m fedleak.sweeps.runner RUN_DIR/sweep_run.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    res = execute_run(spec)
    if res["status"] != "finished":
        print(f"run {spec['run_id']} failed: {res['error']}", file=sys.stderr)
        print(res.get("traceback", ""), file=sys.stderr)
        return HELD_EXIT if res.get("held") else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
