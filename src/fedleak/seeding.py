"""Random streams of a federated run: every draw of round ``r`` and client ``k`` is keyed by
``(seed, purpose, r, k)``.

Any process holding the experiment config (the in-process engine, a Flower ClientApp, a resumed run, a defense's
accountant) derives the same stream for the same key, so nothing random has to be checkpointed or shipped.
The numeric values of :class:`Purpose` are part of the reproducibility contract: never renumber them.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
import torch

from fedleak.config import ExperimentConfig


class Purpose(IntEnum):
    """What a derived stream is used for (its value is the first key after the seed)."""

    PARTITION = 0
    CANDIDATES = 1
    SAMPLE_CLIENTS = 2
    LOCAL = 3
    DEFENSE = 4
    COMPAT = 5
    DATA_SELECT = 6
    INIT = 7
    CANARIES = 8  # which samples are canaries, their coin flips and (mislabelled) labels
    CANARY_CLIENTS = 9  # canary clients' directions and which of them participate
    TRAIN_EVAL = 99


def seed_seq(seed: int, *key: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(seed), *(int(k) for k in key)])


def np_rng(seed: int, *key: int) -> np.random.Generator:
    """A numpy generator for ``(seed, *key)``, e.g. ``np_rng(cfg.seed, Purpose.DATA_SELECT, rnd, k)``."""
    return np.random.default_rng(seed_seq(seed, *key))


def torch_gen(seed: int, *key: int) -> torch.Generator:
    """A torch CPU generator for ``(seed, *key)``."""
    g = torch.Generator()
    g.manual_seed(int(seed_seq(seed, *key).generate_state(1, np.uint64)[0] & 0x7FFF_FFFF_FFFF_FFFF))
    return g


def init_seed(seed: int) -> int:
    """The ``torch.manual_seed`` value used before building the initial model."""
    return int(seed_seq(seed, Purpose.INIT).generate_state(1)[0])


def participants(cfg: ExperimentConfig, rnd: int) -> list[int]:
    """The clients sampled in round ``rnd`` (sorted): ``round(participation · K)`` of them, at least one."""
    K = cfg.partition.num_clients
    m = max(int(round(cfg.fl.participation * K)), 1)
    if m >= K:
        return list(range(K))
    return sorted(np_rng(cfg.seed, Purpose.SAMPLE_CLIENTS, rnd).choice(K, size=m, replace=False).tolist())


def participation_counts(cfg: ExperimentConfig, rounds: int) -> np.ndarray:
    """``[K]`` how many of rounds ``0..rounds-1`` each client took part in."""
    counts = np.zeros(cfg.partition.num_clients, dtype=np.int64)
    for r in range(rounds):
        counts[participants(cfg, r)] += 1
    return counts


__all__ = ["Purpose", "init_seed", "np_rng", "participants", "participation_counts", "seed_seq", "torch_gen"]
