"""Execution backends: every run is independent, writes its own run directory, and returns a result dict.

* ``local`` (default): up to ``workers`` runs at once, each in its own Python process
  (``python -m fedleak.sweeps.runner``), so a crash, an out-of-memory kill or a timeout fails that run only.
* ``inline``: one after another in this process (debugging; no isolation).
* ``ray``: one Ray task per run (``num_cpus = cpus_per_run``). ``address=None`` starts a local Ray instance with
  ``workers`` CPUs; ``address="auto"`` or ``"ray://host:10001"`` joins a cluster. On a cluster the sweep's
  ``out`` folder must be on storage every node sees (runs write there, and re-running the sweep finds them), and
  fedleak must be installed on every node.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable

from fedleak.errors import FedleakError
from fedleak.sweeps.runner import ERROR, HELD_EXIT, LOCK, RESULT, SPEC, _atomic_json, execute_run, failure

Callback = Callable[[dict[str, Any]], None]
BACKENDS = ("local", "inline", "ray")


def _worker_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[k] = str(threads)
    env["FEDLEAK_QUIET"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


_LIVE: set[subprocess.Popen] = set()  # worker processes of this driver, stopped if the driver is interrupted
_LIVE_LOCK = threading.Lock()


def _run_subprocess(spec: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    run_dir = Path(spec["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    spec_path = run_dir / SPEC
    _atomic_json(spec_path, spec)
    threads = int(spec["config"].get("fl", {}).get("threads") or 1)
    with open(run_dir / "log.txt", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedleak.sweeps.runner", str(spec_path)],
            stdout=log, stderr=subprocess.STDOUT, env=_worker_env(threads),
        )
        with _LIVE_LOCK:
            _LIVE.add(proc)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            res = failure(spec, f"timed out after {timeout:g} s (partial progress is kept; re-run to resume)")
            _atomic_json(run_dir / ERROR, res)
            return res
        finally:
            with _LIVE_LOCK:
                _LIVE.discard(proc)
    res_path, err_path = run_dir / RESULT, run_dir / ERROR
    if code == HELD_EXIT:
        return failure(spec, f"run is already being executed by another process (lock {run_dir / LOCK})")
    if code == 0 and res_path.is_file():
        return json.loads(res_path.read_text())
    if err_path.is_file():
        return json.loads(err_path.read_text())
    return failure(spec, f"worker process exited with code {code} without a result; see {run_dir / 'log.txt'}")


def _stop_workers() -> None:
    with _LIVE_LOCK:
        procs = list(_LIVE)
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


def run_local(specs: list[dict[str, Any]], workers: int, on_done: Callback, timeout: float | None = None) -> None:
    """Run ``specs`` in worker processes; if the driver is interrupted (Ctrl-C, SIGTERM), its workers are stopped
    too (their runs keep their checkpoints and resume on the next invocation)."""
    import signal

    lock = threading.Lock()
    old = None
    if threading.current_thread() is threading.main_thread():
        def _term(signum, frame):  # noqa: ARG001
            raise KeyboardInterrupt

        old = signal.signal(signal.SIGTERM, _term)
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        futs = {pool.submit(_run_subprocess, s, timeout): s for s in specs}
        for fut in as_completed(futs):
            try:
                res = fut.result()
            except Exception as e:  # noqa: BLE001 - launching itself failed
                res = failure(futs[fut], f"could not run the worker: {type(e).__name__}: {e}")
            with lock:
                on_done(res)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        _stop_workers()
        raise
    finally:
        pool.shutdown(wait=True)
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def run_inline(specs: list[dict[str, Any]], on_done: Callback) -> None:
    for s in specs:
        on_done(execute_run(s))


def run_ray(
    specs: list[dict[str, Any]],
    on_done: Callback,
    workers: int = 1,
    address: str | None = None,
    cpus_per_run: float = 1.0,
) -> None:
    try:
        import ray
    except ImportError:
        raise FedleakError("the ray backend needs Ray: pip install 'fedleak[ray]' (or 'ray[default]')") from None
    started_here = not ray.is_initialized()
    if started_here:
        kw: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": False, "include_dashboard": False}
        if address:
            ray.init(address=address, **kw)
        else:
            ray.init(num_cpus=max(1, workers), **kw)
    try:
        task = ray.remote(num_cpus=cpus_per_run, max_retries=0)(execute_run)
        pending = {task.remote(s): s for s in specs}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                spec = pending.pop(ref)
                try:
                    res = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - a worker died, or the task could not run
                    res = failure(spec, f"ray task failed: {type(e).__name__}: {str(e).strip().splitlines()[0]}")
                # the driver keeps a copy of every result (also when the node's disk is not shared)
                run_dir = Path(spec["run_dir"])
                try:
                    run_dir.mkdir(parents=True, exist_ok=True)
                    name = RESULT if res.get("status") == "finished" else ERROR
                    if not res.get("held") and not (run_dir / name).is_file():
                        _atomic_json(run_dir / name, res)
                except OSError:
                    pass
                on_done(res)
    finally:
        if started_here:
            ray.shutdown()


def run_all(
    specs: list[dict[str, Any]],
    on_done: Callback,
    backend: str = "local",
    workers: int = 1,
    address: str | None = None,
    timeout: float | None = None,
    cpus_per_run: float = 1.0,
) -> None:
    if backend == "local":
        run_local(specs, workers, on_done, timeout)
    elif backend == "inline":
        run_inline(specs, on_done)
    elif backend == "ray":
        run_ray(specs, on_done, workers=workers, address=address, cpus_per_run=cpus_per_run)
    else:
        raise FedleakError(f"unknown backend '{backend}'; choose from {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "run_all", "run_local", "run_inline", "run_ray"]
