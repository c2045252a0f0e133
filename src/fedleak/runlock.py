"""One writer per run directory: an exclusive lock on ``RUN/.lock``.

The lock is an ``flock`` on the file ``RUN/.lock``, which also names its holder (pid, host, command, start
time) as JSON. The kernel drops an ``flock`` when its process dies, however it dies, so a lock left behind by
a killed process is simply taken over. A lock file written on *another* host (a run directory on a shared
file system, where ``flock`` may not reach across machines) is respected until it is deleted by hand.

* :func:`run_lock` -- context manager for a command that writes a run directory (``fedleak train``,
  ``flower-sim``); re-entrant within one thread (the sweep worker holds the lock and then calls ``train``);
  raises :class:`RunLockError` with a one-line message when another process holds it.
* :func:`acquire_lock` / :func:`release_lock` -- the same lock, not re-entrant, reporting "held" as a string
  (the sweep runner's API: a held run is a failed run of the sweep, not an exception).

This module imports nothing from fedleak: every layer may use it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fedleak.errors import RunLockError  # noqa: F401  (re-exported: its historical home)

LOCK = ".lock"

__all__ = ["LOCK", "RunLockError", "acquire_lock", "release_lock", "run_lock", "lock_holder", "pid_alive"]


@dataclass
class _Held:
    fd: int
    path: Path
    created_dir: Path | None  # the run directory, when taking the lock created it
    thread: int = 0  # the thread that took it (re-entrant for that thread only)


_HELD: dict[str, _Held] = {}
_GUARD = threading.Lock()


def _key(run_dir: Path) -> str:
    return os.path.realpath(run_dir / LOCK)


def pid_alive(pid: int) -> bool:
    """True when process ``pid`` of this host exists and is not a zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def lock_holder(run_dir: str | Path) -> dict | None:
    """What ``RUN/.lock`` says about its holder (pid, host, command, started), or None when there is none."""
    try:
        held = json.loads((Path(run_dir) / LOCK).read_text() or "{}")
    except (OSError, ValueError):
        return None
    return held if isinstance(held, dict) else None


def _describe(lock: Path, held: dict | None) -> str:
    held = held or {}
    who = f"process {held.get('pid', '?')} on {held.get('host', '?')}"
    if held.get("command"):
        who += f" (`{held['command']}`"
        who += f", started {held['started']})" if held.get("started") else ")"
    return f"run {lock.parent} is already being executed by {who}; wait for it to finish, or use another --out"


def _os_failure(lock: Path, e: OSError) -> RunLockError:
    why = e.strerror or str(e)
    hint = "choose a writable --out" if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else "free some space"
    if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT):
        hint = "check that directory"
    return RunLockError(f"cannot create the lock file {lock}: {why}; {hint}")


def _me(command: str | None) -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command or "fedleak",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _try_lock(lock: Path) -> int | str:
    """An fd holding the flock of ``lock`` (the file now at that path), or why it is held by someone else."""
    for _ in range(20):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return _describe(lock, lock_holder(lock.parent))
        try:  # the holder we waited for may have unlinked the file: only the file at the path counts
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)
    return f"could not take the lock {lock} (it keeps being replaced); try again"


def _take(run_dir: Path, command: str | None, tidy: bool) -> _Held | str:
    created = None if run_dir.is_dir() or not tidy else run_dir
    lock = run_dir / LOCK
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        got = _try_lock(lock)
    except OSError as e:
        raise _os_failure(lock, e) from None
    if isinstance(got, str):
        return got
    held, me = lock_holder(run_dir), _me(command)
    if held and held.get("host") not in (None, me["host"]):
        os.close(got)  # written on another host, where our flock may not reach: respect it
        return _describe(lock, held) + f" (if no process on {held['host']} runs it, delete {lock})"
    h = _Held(got, lock, created, threading.get_ident())
    try:
        os.ftruncate(got, 0)
        os.pwrite(got, json.dumps(me).encode(), 0)
    except OSError as e:
        _drop(h)
        raise _os_failure(lock, e) from None
    return h


def _drop(h: _Held) -> None:
    try:
        h.path.unlink(missing_ok=True)  # unlink before unlocking: a waiter then sees a replaced file and retries
    except OSError:
        pass
    os.close(h.fd)
    if h.created_dir is not None:
        try:
            h.created_dir.rmdir()  # we created it and nothing was written: leave no empty run directory
        except OSError:
            pass


def _acquire(run_dir: Path, command: str | None, tidy: bool) -> str | None:
    got = _take(run_dir, command, tidy)
    if isinstance(got, str):
        return got
    with _GUARD:
        _HELD[_key(run_dir)] = got
    return None


def acquire_lock(run_dir: str | Path, command: str | None = None) -> str | None:
    """Take the lock of ``run_dir`` (creating the directory); None, or why another process holds it.

    Not re-entrant: a second call in the same process reports the run as held. Raises RunLockError when the
    lock file cannot be created (read-only or full file system)."""
    return _acquire(Path(run_dir), command, tidy=False)


def release_lock(run_dir: str | Path) -> None:
    """Release a lock taken by :func:`acquire_lock` in this process (no-op when not held)."""
    with _GUARD:
        h = _HELD.pop(_key(Path(run_dir)), None)
    if h is not None:
        _drop(h)


@contextmanager
def run_lock(run_dir: str | Path, command: str | None = None) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the duration of the block; re-entrant in the thread that holds it.

    Raises RunLockError (one line: who holds it, what to do) when another process holds it."""
    run_dir = Path(run_dir)
    with _GUARD:
        h = _HELD.get(_key(run_dir))
    if h is not None and h.thread == threading.get_ident():  # held by this thread (a sweep worker running `train`)
        yield
        return
    if h is not None:
        raise RunLockError(_describe(run_dir / LOCK, lock_holder(run_dir)) + " (another thread of this process)")
    why = _acquire(run_dir, command, tidy=True)  # a directory it creates and leaves empty is removed again
    if why is not None:
        raise RunLockError(why)
    try:
        yield
    finally:
        release_lock(run_dir)
