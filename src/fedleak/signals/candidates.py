"""The candidate set: which samples the server scores at every recorded round.

Aligned protocol (default, spec §9.1): one fixed list, saved once per run and scored for every
client and every recorded round:

- members: the target client's training samples (optionally capped at ``max_members``);
- non-members: ``n_test`` held-out test samples + ``n_other`` samples of each other client.

``rotating_target``: every client contributes its (capped) samples, so each client can play target.

``official-compat`` (spec W1): the rows of non-members are redrawn for every (client, round) as the
original code does; a row keeps its owner (so labels are unchanged) but holds a different sample.
"""

from __future__ import annotations

import logging

import numpy as np

from fedleak.config import CandidatesConfig, ConfigError

log = logging.getLogger(__name__)


def _take(pool: np.ndarray, n: int | None, rng: np.random.Generator) -> np.ndarray:
    pool = np.asarray(pool, np.int64)
    if n is None or n >= len(pool):
        return pool.copy()
    return np.sort(rng.choice(pool, size=n, replace=False))


def build_candidates(
    cfg: CandidatesConfig,
    client_indices: list[np.ndarray],
    n_train: int,
    n_test: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (ids [N], owner [N]); id = train row, or n_train + test row; owner -1 = test."""
    ids, owner = [], []
    for c, pool in enumerate(client_indices):
        if c == cfg.target_client or cfg.rotating_target:
            cap = cfg.max_members
        else:
            cap = cfg.n_other
        chosen = _take(pool, cap, rng)
        ids.append(chosen)
        owner.append(np.full(len(chosen), c, np.int64))
    test_rows = _take(np.arange(n_test), cfg.n_test, rng)
    ids.append(test_rows + n_train)
    owner.append(np.full(len(test_rows), -1, np.int64))
    out_ids, out_owner = np.concatenate(ids), np.concatenate(owner)
    _check_counts(cfg, [len(c) for c in client_indices], n_test, out_owner)
    return out_ids, out_owner


def candidate_counts(cfg: CandidatesConfig, owner: np.ndarray) -> dict[str, int]:
    """What the candidate set really holds, under the config's names (meta.json; config.yaml keeps the request).

    ``max_members``: members of the target; ``n_test``: held-out rows; ``n_other``: the fewest rows of any
    other client (the per-client count that was met for all of them).
    """
    t = cfg.target_client
    others = [int((owner == c).sum()) for c in np.unique(owner) if c >= 0 and c != t]
    return {
        "max_members": int((owner == t).sum()),
        "n_test": int((owner == -1).sum()),
        "n_other": min(others) if others else 0,
    }


def _check_counts(cfg: CandidatesConfig, sizes: list[int], n_test: int, owner: np.ndarray) -> None:
    """Error when the set is unusable (no members / no non-members); warn when an explicit request was capped."""
    t = cfg.target_client
    if sizes[t] == 0:
        raise ConfigError(
            f"candidates.target_client={t}: client {t} holds no training samples, so there are no members to "
            "attack; choose another target client or raise partition.min_size"
        )
    if not (owner != t).any():
        raise ConfigError(
            "the candidate set has no non-members (candidates.n_test=0 and no other client contributes); "
            "set candidates.n_test or candidates.n_other above 0"
        )
    given = cfg.model_fields_set
    notes = []
    if "n_test" in given and cfg.n_test > n_test:
        notes.append(f"candidates.n_test={cfg.n_test} but the test split has {n_test} samples: all {n_test} are used")
    others = [c for c, n in enumerate(sizes) if c != t and not cfg.rotating_target and n < cfg.n_other]
    if "n_other" in given and others:
        low = min(sizes[c] for c in others)
        notes.append(f"candidates.n_other={cfg.n_other} but {len(others)} other client(s) hold fewer samples "
                     f"(as few as {low}): all of theirs are used")
    members = [c for c, n in enumerate(sizes) if (c == t or cfg.rotating_target) and n < (cfg.max_members or 0)]
    if "max_members" in given and members:
        notes.append(f"candidates.max_members={cfg.max_members} but client {members[0]} holds "
                     f"{sizes[members[0]]} samples: all are members")
    for note in notes:
        log.warning("warning: %s (meta.json records the counts used)", note)


def redraw_nonmembers(
    ids: np.ndarray,
    owner: np.ndarray,
    target: int,
    client_indices: list[np.ndarray],
    n_train: int,
    n_test: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """official-compat: new samples for every non-member row, drawn from the same owner's pool."""
    out = ids.copy()
    for c in np.unique(owner):
        if c == target:
            continue
        rows = np.flatnonzero(owner == c)
        pool = np.arange(n_test) + n_train if c < 0 else np.asarray(client_indices[c], np.int64)
        out[rows] = rng.choice(pool, size=len(rows), replace=len(rows) > len(pool))
    return out


def gather(ids: np.ndarray, n_train: int, train_x, train_y, test_x, test_y):
    """Stack the images and labels of candidate ids (train rows first, test rows offset by n_train)."""
    import torch

    ids_t = torch.as_tensor(ids, dtype=torch.long)
    is_test = ids_t >= n_train
    x = torch.empty((len(ids_t), *train_x.shape[1:]), dtype=train_x.dtype)
    y = torch.empty(len(ids_t), dtype=torch.long)
    x[~is_test] = train_x[ids_t[~is_test]]
    y[~is_test] = train_y[ids_t[~is_test]]
    x[is_test] = test_x[ids_t[is_test] - n_train]
    y[is_test] = test_y[ids_t[is_test] - n_train]
    return x, y
