"""Sample-level canaries in the run store: ``RUN/canaries.npz`` and the ``canary_*`` arrays of the round files.

A run with ``audit.canaries: m`` (see :mod:`fedleak.fl.canaries`) writes, besides the ordinary files::

    RUN/canaries.npz            ids [m] (train row i -> i, test row j -> n_train + j: the candidate convention),
                                label [m] (the label the canary was trained and scored with), true_label [m],
                                inserted [m] bool (its coin: put into the target client's data), target (int)
    RUN/signals/round_RRRR.npz  + canary_loss, canary_margin, canary_dot, canary_cos, canary_diff, canary_gnorm2 [K, m]:
                                the candidates' signals (same definitions) computed for the canaries

The arrays are additive: the candidate arrays, ``candidates.npz`` and every reader of them are unchanged, so the
ordinary membership metrics never see a canary. :func:`load_canary_signals` stacks the canary columns into a
:class:`~fedleak.signals.loading.Signals` whose "members" are the inserted canaries, so any attack scores them
exactly as it scores candidates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedleak.errors import StoreError
from fedleak.signals.loading import Signals
from fedleak.signals.store import OPTIONAL_KEYS_KN, SIGNAL_KEYS_KN, _atomic_savez, read_npz, retrain_hint, round_path

CANARY_FILE = "canaries.npz"
CANARY_KEYS = tuple(f"canary_{k}" for k in SIGNAL_KEYS_KN)


@dataclass(frozen=True)
class CanarySet:
    """The canaries of a run (``RUN/canaries.npz``)."""

    ids: np.ndarray  # [m] int64, candidate id convention
    label: np.ndarray  # [m] int64, label used for training and scoring
    true_label: np.ndarray  # [m] int64
    inserted: np.ndarray  # [m] bool: the coin put it into the target client's data
    target: int

    @property
    def m(self) -> int:
        return int(self.ids.size)


def write_canaries(run_dir: Path, c: CanarySet) -> None:
    _atomic_savez(
        Path(run_dir) / CANARY_FILE,
        ids=np.asarray(c.ids, np.int64), label=np.asarray(c.label, np.int64),
        true_label=np.asarray(c.true_label, np.int64), inserted=np.asarray(c.inserted, bool),
        target=np.int64(c.target),
    )


def read_canaries(run_dir: Path) -> CanarySet | None:
    """The run's canaries, or None when it has none (no ``canaries.npz``); a damaged file is a StoreError."""
    p = Path(run_dir) / CANARY_FILE
    if not p.exists():
        return None
    fix = f"the candidates' signals are intact — delete it and {retrain_hint(Path(run_dir))} to recompute it"
    z = read_npz(p, fix)
    keys = ("ids", "label", "true_label", "inserted", "target")
    missing = [k for k in keys if k not in z]
    m = z["ids"].shape[0] if "ids" in z and z["ids"].ndim == 1 else -1
    ok = not missing and m >= 0 and all(z[k].shape == (m,) for k in keys[:4]) and z["target"].shape == ()
    ok = ok and all(z[k].dtype.kind in "iu" for k in ("ids", "label", "true_label", "target"))
    if not ok or z["inserted"].dtype.kind not in "biu":
        why = f"lacks arrays {missing}" if missing else "holds arrays of the wrong shape or type"
        raise StoreError(f"{p} {why} (not written by fedleak?); {fix}")
    return CanarySet(z["ids"].astype(np.int64), z["label"].astype(np.int64), z["true_label"].astype(np.int64),
                     z["inserted"].astype(bool), int(z["target"]))


def load_canary_signals(run_dir: Path, sig: Signals) -> tuple[CanarySet, Signals] | None:
    """The canaries' signals over the rounds of ``sig`` as a :class:`Signals` (members = inserted canaries),
    or None when the run has no canaries. A round file without the canary arrays is a StoreError naming it."""
    c = read_canaries(run_dir)
    if c is None:
        return None
    K, m = sig.num_clients, c.m
    per: dict[str, list[np.ndarray]] = {k: [] for k in SIGNAL_KEYS_KN}
    for r in sig.rounds:
        p = round_path(run_dir, int(r))
        z = read_npz(p, f"delete it and {retrain_hint(Path(run_dir))} to recompute it")
        bad = [k for k in CANARY_KEYS if k not in z or z[k].shape != (K, m)]
        if bad:
            raise StoreError(f"{p} lacks the canary arrays {bad} of shape ({K}, {m}) that {run_dir / CANARY_FILE} "
                             f"promises; delete it and {retrain_hint(Path(run_dir))} to recompute it")
        for k in SIGNAL_KEYS_KN:
            per[k].append(z[f"canary_{k}"])
        for k in OPTIONAL_KEYS_KN:  # canary_margin: absent in runs recorded before margins existed
            if f"canary_{k}" in z and z[f"canary_{k}"].shape == (K, m):
                per.setdefault(k, []).append(z[f"canary_{k}"])
    st = {k: np.stack(v) for k, v in per.items() if k in SIGNAL_KEYS_KN or len(v) == len(sig.rounds)}
    ids = np.broadcast_to(c.ids, (len(sig.rounds), K, m)).copy()
    owner = np.where(c.inserted, c.target, -1).astype(np.int64)
    out = Signals(rounds=sig.rounds, dnorm2=sig.dnorm2, participated=sig.participated,
                  client_test_acc=sig.client_test_acc, lr=sig.lr, ids=ids, owner=owner, cand_ids=c.ids,
                  target=c.target, **st)
    return c, out


__all__ = ["CANARY_FILE", "CANARY_KEYS", "CanarySet", "load_canary_signals", "read_canaries", "write_canaries"]
