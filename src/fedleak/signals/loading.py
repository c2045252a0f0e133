"""The recorded signals of a run, loaded and checked: :class:`Signals` (``[R, K, N]`` arrays) and
:func:`load_signals`, the one reader the attacks use. The file formats are in :mod:`fedleak.signals.store`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedleak.errors import StoreError
from fedleak.signals.roundfiles import read_rounds
from fedleak.signals.runconfig import verify_run_config
from fedleak.signals.store import OPTIONAL_KEYS_KN, SIGNAL_KEYS_KN, read_candidates, recorded_rounds


@dataclass
class Signals:
    """All recorded signals of a run, stacked as [R, K, N] arrays (R recorded rounds)."""

    rounds: np.ndarray  # [R] 0-based round numbers
    loss: np.ndarray  # [R, K, N]
    dot: np.ndarray
    cos: np.ndarray
    diff: np.ndarray
    gnorm2: np.ndarray
    ids: np.ndarray  # [R, K, N]
    dnorm2: np.ndarray  # [R, K]
    participated: np.ndarray  # [R, K] bool
    client_test_acc: np.ndarray  # [R, K]
    lr: np.ndarray  # [R]
    owner: np.ndarray  # [N] owning client of each candidate (-1: held-out test)
    cand_ids: np.ndarray  # [N]
    target: int  # default target client
    margin: np.ndarray | None = None  # [R, K, N] logit margins; None for runs recorded before margins existed

    @property
    def num_clients(self) -> int:
        return int(self.loss.shape[1])

    def members(self, target: int | None = None) -> np.ndarray:
        """Boolean [N]: candidate is in the target client's training data."""
        return self.owner == (self.target if target is None else target)

    def measure(self, name: str) -> np.ndarray:
        """[R, K, N] array of a per-candidate measure: loss, dot, cos, diff, gnorm2 or margin."""
        if name not in (*SIGNAL_KEYS_KN, *OPTIONAL_KEYS_KN):
            raise StoreError(f"unknown measure '{name}'; choose from {', '.join((*SIGNAL_KEYS_KN, *OPTIONAL_KEYS_KN))}")
        value = getattr(self, name)
        if value is None:
            raise StoreError(
                f"the recorded rounds have no '{name}' array (recorded before fedleak stored it); re-record the run "
                f"with this fedleak (`fedleak train <config> --out <new dir>`) to use attacks on the {name}"
            )
        return value

    def has(self, name: str) -> bool:
        """Whether the measure was recorded (every measure but the optional ``margin`` always is)."""
        return name in SIGNAL_KEYS_KN or getattr(self, name, None) is not None


def load_signals(run_dir: str | Path, rounds: list[int] | None = None) -> Signals:
    """Read and check the recorded rounds; a damaged file raises StoreError naming it (see roundfiles)."""
    run_dir = Path(run_dir)
    if not (run_dir / "candidates.npz").is_file():
        raise StoreError(f"{run_dir} is not a fedleak run directory (no candidates.npz); run `fedleak train` first")
    have = recorded_rounds(run_dir)
    if rounds is not None:
        miss = sorted(set(rounds) - set(have))
        if miss:
            raise StoreError(f"rounds {miss} were not recorded in {run_dir}; recorded: {have}")
        have = sorted(set(rounds))
    if not have:
        raise StoreError(f"{run_dir} has no recorded rounds yet; train longer or check signals.rounds")
    verify_run_config(run_dir)
    cand = read_candidates(run_dir)
    per, lr = read_rounds(run_dir, have, len(cand.ids))
    st = {k: np.stack(v) for k, v in per.items()}
    return Signals(rounds=np.asarray(have), lr=np.asarray(lr), owner=cand.owner, cand_ids=cand.ids,
                   target=cand.target, **st)


__all__ = ["Signals", "load_signals"]
