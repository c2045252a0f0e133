"""The run directory: the one on-disk contract between training and everything downstream.

Layout (all open formats: numpy ``.npz``/``.npy``, JSON, YAML; readable without fedleak)::

    RUN/config.yaml             resolved experiment config
    RUN/meta.json               seed, package versions, git revision, dataset/model facts, recorded rounds
    RUN/split.npz               client_ptr [K+1], client_idx [sum n_k]: client k owns train rows
                                client_idx[client_ptr[k]:client_ptr[k+1]]
    RUN/candidates.npz          ids [N] (train row i -> i, test row j -> n_train + j), owner [N] (client, -1 =
                                held-out test), target (int), label [N] (class)
    RUN/signals/round_RRRR.npz  one file per recorded (0-based) round, written atomically:
                                loss [K,N] CE of candidate n under client k's uploaded model
                                dot [K,N] <g(x), Δ_k>;  cos [K,N];  diff [K,N] = 2<g,Δ_k> - ||g||²
                                gnorm2 [K,N] ||g(x)||² (g at the round's global model; identical rows
                                in the aligned protocol);  ids [K,N] candidate ids actually scored
                                (rows differ only under protocol official-compat)
                                dnorm2 [K] ||Δ_k||²;  participated [K] bool;  client_test_acc [K];
                                lr (scalar);  round (scalar)
    RUN/metrics.jsonl           one JSON line per finished round (utility, lr, time)
    RUN/checkpoint.pt           resumable state (tensors only; loaded with weights_only=True)

Δ_k = θ_global - θ_k (old minus new), flattened over trainable parameters in named_parameters() order.
Clients that did not take part in a round have NaN rows.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SIGNAL_KEYS_KN = ("loss", "dot", "cos", "diff", "gnorm2")


class StoreError(RuntimeError):
    pass


def _atomic_savez(path: Path, **arrays: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_candidates(run_dir: Path, ids: np.ndarray, owner: np.ndarray, target: int, label: np.ndarray) -> None:
    _atomic_savez(
        Path(run_dir) / "candidates.npz",
        ids=np.asarray(ids, np.int64),
        owner=np.asarray(owner, np.int64),
        target=np.int64(target),
        label=np.asarray(label, np.int64),
    )


def write_split(run_dir: Path, client_indices: list[np.ndarray]) -> None:
    ptr = np.cumsum([0] + [len(c) for c in client_indices]).astype(np.int64)
    idx = np.concatenate([np.asarray(c, np.int64) for c in client_indices]) if client_indices else np.zeros(0, np.int64)
    _atomic_savez(Path(run_dir) / "split.npz", client_ptr=ptr, client_idx=idx)


def read_split(run_dir: Path) -> list[np.ndarray]:
    with np.load(Path(run_dir) / "split.npz") as z:
        ptr, idx = z["client_ptr"], z["client_idx"]
    return [idx[ptr[k] : ptr[k + 1]] for k in range(len(ptr) - 1)]


def round_path(run_dir: Path, rnd: int) -> Path:
    return Path(run_dir) / "signals" / f"round_{rnd:04d}.npz"


def write_round(run_dir: Path, rnd: int, arrays: dict[str, Any]) -> Path:
    """Write one recorded round atomically (a killed process never leaves a half-written file)."""
    missing = [k for k in (*SIGNAL_KEYS_KN, "ids", "dnorm2") if k not in arrays]
    if missing:
        raise StoreError(f"round {rnd}: missing signal arrays {missing}")
    p = round_path(run_dir, rnd)
    p.parent.mkdir(parents=True, exist_ok=True)
    out = {k: np.asarray(v) for k, v in arrays.items()}
    out["round"] = np.int64(rnd)
    _atomic_savez(p, **out)
    return p


def recorded_rounds(run_dir: Path) -> list[int]:
    d = Path(run_dir) / "signals"
    if not d.is_dir():
        return []
    return sorted(int(p.stem.split("_")[1]) for p in d.glob("round_*.npz"))


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

    @property
    def num_clients(self) -> int:
        return int(self.loss.shape[1])

    def members(self, target: int | None = None) -> np.ndarray:
        """Boolean [N]: candidate is in the target client's training data."""
        return self.owner == (self.target if target is None else target)

    def measure(self, name: str) -> np.ndarray:
        """[R, K, N] array of a per-candidate measure: loss, dot, cos, diff or gnorm2."""
        if name not in SIGNAL_KEYS_KN:
            raise StoreError(f"unknown measure '{name}'; choose from {', '.join(SIGNAL_KEYS_KN)}")
        return getattr(self, name)


def load_signals(run_dir: str | Path, rounds: list[int] | None = None) -> Signals:
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
    with np.load(run_dir / "candidates.npz") as z:
        owner, cand_ids, target = z["owner"], z["ids"], int(z["target"])
    per: dict[str, list[np.ndarray]] = {}
    lr = []
    for r in have:
        with np.load(round_path(run_dir, r)) as z:
            for k in (*SIGNAL_KEYS_KN, "ids", "dnorm2", "participated", "client_test_acc"):
                if k in z:
                    per.setdefault(k, []).append(z[k])
            lr.append(float(z["lr"]) if "lr" in z else np.nan)
    K = per["loss"][0].shape[0]
    if "participated" not in per:
        per["participated"] = [np.ones(K, bool)] * len(have)
    if "client_test_acc" not in per:
        per["client_test_acc"] = [np.full(K, np.nan)] * len(have)
    st = {k: np.stack(v) for k, v in per.items()}
    return Signals(
        rounds=np.asarray(have),
        lr=np.asarray(lr),
        owner=owner,
        cand_ids=cand_ids,
        target=target,
        **st,
    )


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    p = Path(run_dir) / "metrics.jsonl"
    if not p.is_file():
        return []
    out = []
    for line in p.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash mid-write
                continue
    return out


def append_metrics(run_dir: str | Path, record: dict[str, Any]) -> None:
    with open(Path(run_dir) / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_meta(run_dir: str | Path) -> dict[str, Any]:
    p = Path(run_dir) / "meta.json"
    return json.loads(p.read_text()) if p.is_file() else {}
