"""Synthetic run directories from the toy model of the FedMIA spec (section 10).

No network is trained. For every recorded round r, client k and sample x the generator draws a
"membership disclosure measure"::

    m[r, k, x] = d_x + a · [x ∈ D_k] + ε[r, k, x],   d_x ~ N(0, 1) once per sample,  ε ~ N(0, noise²)

and writes it through the real run-store API (:mod:`fedleak.signals.store`) as

* ``loss = loss_offset − m``  (so −loss is the toy MDM, shifted to keep losses mostly positive),
* ``cos = cos_scale · (e_x + a_cos · [x ∈ D_k] + ε')`` with its own persistent ``e_x`` (clipped to [−1, 1]),
* ``gnorm2 = exp(h_x + 0.3 ε'' − gnorm_shift · [x is anyone's training sample])`` (the gradient at the
  round's global model is client-agnostic, as in the real store),
* ``dnorm2`` positive per (round, client), ``dot = cos·√(gnorm2·dnorm2)``, ``diff = 2·dot − gnorm2``.

Candidates follow the official protocol: the target's samples are members; non-members are
``n_test_cand`` test samples and ``n_other`` samples of every other client. With
``protocol="official-compat"`` the non-member rows are **redrawn for every (client, round)**
(non-member positions keep their owner, the sample changes — exactly what the engine records),
which is the original code's bias (spec W1). ``rotating=True`` records every client's samples
(aligned only) so each client can be evaluated as the target.

The run directory also gets ``config.yaml``, ``meta.json`` (``synthetic: true`` and the toy's
parameters), ``split.npz`` and a made-up ``metrics.jsonl`` so that ``fedleak attack`` and
``fedleak report`` work on it unchanged.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from fedleak.errors import FedleakError
from fedleak.signals.store import append_metrics, atomic_write_text, write_candidates, write_round, write_split


@dataclass
class ToyConfig:
    num_clients: int = 10
    per_client: int = 5000  # training samples per client (all of them are the target's members)
    n_test: int = 10000  # size of the held-out test pool
    n_test_cand: int = 1000  # test samples among the non-member candidates
    n_other: int = 1000  # candidates taken from each other client
    rounds: int = 30  # recorded rounds
    every: int = 10  # recorded round numbers are every-1, 2*every-1, ...
    shift: float = 0.2  # member shift a of the loss measure
    noise: float = 0.5  # per-(round, client) noise std
    cos_shift: float | None = None  # member shift of the cosine measure (default: shift)
    cos_scale: float = 0.02
    gnorm_shift: float = 0.1
    loss_offset: float = 4.0
    protocol: Literal["aligned", "official-compat"] = "aligned"
    rotating: bool = False
    max_per_client: int | None = None  # rotating: candidates per client (default: all)
    target: int = 0
    participation: float = 1.0
    num_classes: int = 10
    seed: int = 0

    def check(self) -> None:
        if self.num_clients < 2:
            raise FedleakError("the toy needs at least 2 clients")
        if not 0 <= self.target < self.num_clients:
            raise FedleakError(f"target {self.target} outside 0..{self.num_clients - 1}")
        if self.protocol not in ("aligned", "official-compat"):
            raise FedleakError(f"protocol must be 'aligned' or 'official-compat' (got '{self.protocol}')")
        if self.rotating and self.protocol != "aligned":
            raise FedleakError("rotating=True needs protocol 'aligned'")
        if self.n_other > self.per_client or self.n_test_cand > self.n_test:
            raise FedleakError("n_other must be <= per_client and n_test_cand <= n_test")
        if not 0 < self.participation <= 1:
            raise FedleakError("participation must be in (0, 1]")


def _candidate_blocks(cfg: ToyConfig, clients: list[np.ndarray], n_train: int, rng: np.random.Generator):
    """Blocks of candidate ids, in the engine's order (client 0..K-1, then test rows).

    Each block is (ids, owner, pool): ``pool`` is where official-compat redraws the block's samples
    from (None = never redrawn: the target's members, and everything in the aligned protocol).
    """
    blocks: list[tuple[np.ndarray, int, np.ndarray | None]] = []
    for c, idx in enumerate(clients):
        if cfg.rotating:
            n = len(idx) if cfg.max_per_client is None else min(cfg.max_per_client, len(idx))
            blocks.append((np.sort(rng.choice(idx, n, replace=False)), c, None))
        elif c == cfg.target:
            blocks.append((idx.copy(), c, None))
        else:
            blocks.append((np.sort(rng.choice(idx, cfg.n_other, replace=False)), c, idx))
    test_pool = n_train + np.arange(cfg.n_test)
    blocks.append((np.sort(rng.choice(test_pool, cfg.n_test_cand, replace=False)), -1, test_pool))
    return blocks


def generate_toy_run(run_dir: str | Path, cfg: ToyConfig | None = None, **overrides) -> Path:
    """Write a complete synthetic run directory; returns its path."""
    cfg = cfg or ToyConfig()
    for k, v in overrides.items():
        if not hasattr(cfg, k):
            raise FedleakError(f"unknown toy option '{k}'")
        setattr(cfg, k, v)
    cfg.check()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    K = cfg.num_clients
    n_train = K * cfg.per_client
    n_all = n_train + cfg.n_test
    perm = rng.permutation(n_train)
    clients = [np.sort(perm[c * cfg.per_client : (c + 1) * cfg.per_client]) for c in range(K)]
    sample_owner = np.full(n_all, -1, np.int64)
    for c, idx in enumerate(clients):
        sample_owner[idx] = c
    labels_all = rng.integers(0, cfg.num_classes, n_all)
    d = rng.standard_normal(n_all)  # persistent difficulty of the loss measure
    e = rng.standard_normal(n_all)  # persistent part of the cosine measure
    h = 0.5 * rng.standard_normal(n_all)  # persistent log gradient norm
    a_cos = cfg.shift if cfg.cos_shift is None else cfg.cos_shift

    blocks = _candidate_blocks(cfg, clients, n_train, rng)
    cand_ids = np.concatenate([b[0] for b in blocks])
    owner = np.concatenate([np.full(len(b[0]), b[1], np.int64) for b in blocks])
    write_split(run_dir, clients)
    write_candidates(run_dir, cand_ids, owner, cfg.target, labels_all[cand_ids])

    rounds = [cfg.every * (i + 1) - 1 for i in range(cfg.rounds)]
    total_rounds = rounds[-1] + 1
    kk = np.arange(K)[:, None]
    n_part = max(1, int(round(cfg.participation * K)))
    lr0 = 0.1
    for ri, r in enumerate(rounds):
        ids = _round_ids(cfg, cand_ids, blocks, rng)
        mem = sample_owner[ids] == kk  # [K, N]: candidate in client k's training data
        m = d[ids] + cfg.shift * mem + cfg.noise * rng.standard_normal(ids.shape)
        loss = cfg.loss_offset - m
        cos = np.clip(cfg.cos_scale * (e[ids] + a_cos * mem + cfg.noise * rng.standard_normal(ids.shape)), -1, 1)
        g_round = np.exp(h + 0.3 * rng.standard_normal(n_all) - cfg.gnorm_shift * (sample_owner >= 0))
        gnorm2 = g_round[ids]
        lr = lr0 * 0.5 * (1 + math.cos(math.pi * r / total_rounds))
        dnorm2 = (lr**2) * np.exp(0.2 * rng.standard_normal(K)) * 50.0
        dot = cos * np.sqrt(gnorm2 * dnorm2[:, None])
        diff = 2 * dot - gnorm2
        participated = np.zeros(K, bool)
        participated[rng.choice(K, n_part, replace=False)] = True
        arrays = {
            "loss": loss,
            "dot": dot,
            "cos": cos,
            "diff": diff,
            "gnorm2": gnorm2,
            "ids": ids,
            "dnorm2": dnorm2,
            "participated": participated,
            "client_test_acc": np.clip(0.3 + 0.5 * (ri + 1) / cfg.rounds + 0.02 * rng.standard_normal(K), 0, 1),
            "lr": np.float64(lr),
        }
        for key in ("loss", "dot", "cos", "diff", "gnorm2", "dnorm2"):
            arr = arrays[key].astype(np.float32)
            arr[~participated] = np.nan  # clients that sat the round out have NaN rows
            arrays[key] = arr
        arrays["client_test_acc"] = np.where(participated, arrays["client_test_acc"], np.nan)
        write_round(run_dir, r, arrays)

    _write_side_files(run_dir, cfg, rounds, total_rounds, rng)
    return run_dir


def _round_ids(cfg: ToyConfig, cand_ids: np.ndarray, blocks: list, rng: np.random.Generator) -> np.ndarray:
    """[K, N] candidate ids scored in one round: the fixed set (aligned), or non-members redrawn per client."""
    K = cfg.num_clients
    if cfg.protocol == "aligned":
        return np.broadcast_to(cand_ids, (K, cand_ids.size)).copy()
    rows = []
    for _k in range(K):
        rows.append(np.concatenate([
            b[0] if b[2] is None or b[1] == cfg.target else rng.choice(b[2], len(b[0]), replace=False) for b in blocks
        ]))
    return np.stack(rows)


def _write_side_files(run_dir: Path, cfg: ToyConfig, rounds: list[int], total: int, rng: np.random.Generator) -> None:
    from fedleak.config import ExperimentConfig, dump_config

    ec = ExperimentConfig.model_validate(
        {
            "name": "toy-signals",
            "seed": cfg.seed,
            "data": {"name": "toy-signals"},
            "partition": {"num_clients": cfg.num_clients, "samples_per_client": cfg.per_client},
            "candidates": {
                "target_client": cfg.target,
                "n_test": cfg.n_test_cand,
                "n_other": cfg.n_other,
                "protocol": cfg.protocol,
                "rotating_target": cfg.rotating,
            },
            "model": {"name": "none (synthetic signals)"},
            "fl": {"rounds": total, "participation": cfg.participation, "schedule": {"kind": "cosine"}},
            "signals": {"rounds": rounds},
        }
    )
    atomic_write_text(run_dir / "config.yaml", dump_config(ec))
    meta = {
        "synthetic": True,
        "generator": "fedleak.fl.toy.generate_toy_run (FedMIA spec section 10 toy model)",
        "toy": asdict(cfg),
        "seed": cfg.seed,
        "recorded_rounds": rounds,
        "num_clients": cfg.num_clients,
        "n_train": cfg.num_clients * cfg.per_client,
        "n_test": cfg.n_test,
    }
    atomic_write_text(run_dir / "meta.json", json.dumps(meta, indent=2))
    p = run_dir / "metrics.jsonl"
    if p.exists():
        p.unlink()
    for r in range(total):
        frac = (r + 1) / total
        lr = 0.1 * 0.5 * (1 + math.cos(math.pi * r / total))
        train_acc = min(1.0, 0.2 + 0.8 * frac**0.5)
        test_acc = 0.2 + 0.45 * frac**0.5
        append_metrics(
            run_dir,
            {
                "round": r,
                "lr": lr,
                "train_acc": train_acc,
                "test_acc": test_acc,
                "train_loss": 2.3 * (1 - 0.95 * frac**0.5),
                "test_loss": 2.3 * (1 - 0.6 * frac**0.5),
                "time": 0.0,
                "client_test_acc": [float(test_acc + 0.01 * x) for x in rng.standard_normal(cfg.num_clients)],
            },
        )
