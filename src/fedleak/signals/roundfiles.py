"""Reading the recorded round files ``RUN/signals/round_RRRR.npz`` and checking every one of them.

A damaged file (truncated, garbage, a foreign ``.npz``, missing arrays, arrays of the wrong shape) raises one
``StoreError`` that names it, says whether the other rounds are intact and how to get the file back. All
files are checked before anything is stacked, so the message lists every damaged file at once.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from fedleak.signals.store import (
    OPTIONAL_KEYS_KN,
    REQUIRED_ROUND_KEYS,
    SIGNAL_KEYS_KN,
    StoreError,
    _Damaged,
    _read_npz,
    retrain_hint,
    round_path,
)

_PER_CLIENT = ("dnorm2", "participated", "client_test_acc")


def _shape_problem(z: dict[str, np.ndarray], rnd: int, K: int, N: int) -> str | None:
    """Why the arrays of round ``rnd`` do not fit K clients x N candidates (None when they do)."""
    missing = [k for k in REQUIRED_ROUND_KEYS if k not in z]
    if missing:
        return f"lacks arrays {missing} (not written by fedleak?)"
    if "round" in z and (z["round"].shape != () or int(z["round"]) != rnd):
        return f"holds round {z['round'].tolist()}, not {rnd} (copied from another round or run?)"
    for k in (*SIGNAL_KEYS_KN, *(o for o in OPTIONAL_KEYS_KN if o in z), "ids"):
        a = z[k]
        if a.shape != (K, N):
            return f"has '{k}' of shape {a.shape}, the run has {K} clients x {N} candidates"
        if a.dtype.kind not in ("iu" if k == "ids" else "f"):
            return f"has '{k}' of dtype {a.dtype}"
    for k in _PER_CLIENT:
        if k in z and (z[k].shape != (K,) or z[k].dtype.kind not in "biuf"):
            return f"has '{k}' of shape {z[k].shape} and dtype {z[k].dtype}, expected {K} numbers"
    if "lr" in z and (z["lr"].shape != () or z["lr"].dtype.kind not in "iuf"):
        return f"has 'lr' of shape {z['lr'].shape}, expected a scalar"
    return None


def _majority(values: list[int]) -> int | None:
    return Counter(values).most_common(1)[0][0] if values else None


def _raise_damaged(run_dir: Path, rounds: list[int], bad: dict[int, str]) -> None:
    r0 = min(bad)
    first = f"{round_path(run_dir, r0)} {bad[r0]}"
    if len(bad) > 1:
        others = ", ".join(round_path(run_dir, r).name for r in sorted(bad)[1:])
        first += f" (damaged too: {others})"
    n_ok = len(rounds) - len(bad)
    rest = f"the other {n_ok} recorded round{'s are' if n_ok != 1 else ' is'} intact" if n_ok else \
        "no recorded round is intact"
    it = "it" if len(bad) == 1 else "them"
    fix = f"delete {it} and {retrain_hint(run_dir)} to recompute {it}"
    if n_ok:
        fix += f" (or only delete {it} to attack the other {n_ok} round{'s' if n_ok != 1 else ''})"
    raise StoreError(f"{first}; {rest} — {fix}")


def _check_candidates(run_dir: Path, files: dict[int, dict[str, np.ndarray]], N: int) -> None:
    """All round files agree on a candidate count that candidates.npz does not have: candidates.npz is wrong."""
    ns = {z["loss"].shape[1] for z in files.values() if "loss" in z and z["loss"].ndim == 2}
    if len(files) >= 1 and len(ns) == 1 and N not in ns:
        raise StoreError(
            f"{run_dir / 'candidates.npz'} has {N} candidates but the recorded rounds have {ns.pop()}: it belongs to "
            f"another run; the recorded rounds are intact — delete it and {retrain_hint(run_dir)} to recompute it"
        )


def read_rounds(run_dir: Path, rounds: list[int], N: int) -> tuple[dict[str, list[np.ndarray]], list[float]]:
    """Per-array lists over ``rounds`` (K x N signals, per-client vectors) and the learning rates.

    An optional array (``OPTIONAL_KEYS_KN``: margin) is listed only when every one of ``rounds`` has it.
    ``N``: the number of candidates in candidates.npz. Raises StoreError naming every damaged file."""
    files: dict[int, dict[str, np.ndarray]] = {}
    bad: dict[int, str] = {}
    for r in rounds:
        try:
            files[r] = _read_npz(round_path(run_dir, r))
        except _Damaged as e:
            bad[r] = str(e)
    _check_candidates(run_dir, files, N)
    K = _majority([z["loss"].shape[0] for z in files.values() if "loss" in z and z["loss"].ndim == 2])
    for r, z in files.items():
        why = _shape_problem(z, r, K if K is not None else -1, N)
        if why is not None:
            bad[r] = why
    if bad:
        _raise_damaged(run_dir, rounds, bad)
    assert K is not None
    optional = [k for k in OPTIONAL_KEYS_KN if all(k in z for z in files.values())]
    per: dict[str, list[np.ndarray]] = {}
    lr: list[float] = []
    for r in rounds:
        z = files.pop(r)  # drop each file's arrays once they are in the lists
        z.setdefault("participated", np.ones(K, bool))
        z.setdefault("client_test_acc", np.full(K, np.nan))
        for k in (*REQUIRED_ROUND_KEYS, *optional, "participated", "client_test_acc"):
            per.setdefault(k, []).append(z[k])
        lr.append(float(z["lr"]) if "lr" in z else np.nan)
    return per, lr


__all__ = ["read_rounds"]
