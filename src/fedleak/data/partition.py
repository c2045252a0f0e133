"""Splitting the training set among federated clients.

Both functions return one int64 index array per client (indices into the training split); the
arrays are disjoint. Their order is the drawn order (not sorted): IID shards are consecutive
slices of one random permutation; Dirichlet shards are shuffled after assembly, as the original.
"""

from __future__ import annotations

import numpy as np

from fedleak.data.base import DataError

MAX_DIRICHLET_ATTEMPTS = 100


def iid_partition(
    n: int, num_clients: int, rng: np.random.Generator, samples_per_client: int | None = None
) -> list[np.ndarray]:
    """Disjoint equal shards of ``samples_per_client`` (default ``n // num_clients``) indices drawn
    uniformly without replacement from ``range(n)``; any leftover indices belong to no client."""
    if num_clients < 1:
        raise DataError(f"num_clients must be >= 1, got {num_clients}")
    size = n // num_clients if samples_per_client is None else int(samples_per_client)
    if size < 1:
        raise DataError(f"cannot give {num_clients} clients at least one of {n} samples; use fewer clients")
    if size * num_clients > n:
        raise DataError(
            f"{num_clients} clients x {size} samples_per_client = {size * num_clients} > {n} training samples; "
            f"lower partition.samples_per_client to at most {n // num_clients}"
        )
    perm = rng.permutation(n).astype(np.int64)
    return [perm[k * size : (k + 1) * size].copy() for k in range(num_clients)]


def _dirichlet_draw(labels: np.ndarray, num_clients: int, beta: float, rng: np.random.Generator) -> list[np.ndarray]:
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for y in np.unique(labels):
        idx = np.flatnonzero(labels == y)
        p = rng.dirichlet(np.full(num_clients, beta))
        if not np.all(np.isfinite(p)):  # extreme underflow for tiny beta: put the class on one client
            p = np.zeros(num_clients)
            p[rng.integers(num_clients)] = 1.0
        sizes = np.floor(p * idx.size).astype(np.int64)
        sizes[-1] += idx.size - sizes.sum()  # the remainder goes to the last client, as the original
        idx = idx[rng.permutation(idx.size)]
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        for k in range(num_clients):
            parts[k].append(idx[bounds[k] : bounds[k + 1]])
    out = []
    for k in range(num_clients):
        a = np.concatenate(parts[k]).astype(np.int64) if parts[k] else np.empty(0, dtype=np.int64)
        out.append(a[rng.permutation(a.size)])
    return out


def dirichlet_partition(
    labels: np.ndarray, num_clients: int, beta: float, rng: np.random.Generator, min_size: int = 1
) -> list[np.ndarray]:
    """Label-skewed partition of every index of ``labels``.

    For each class y the client shares are ``p ~ Dir(beta * 1_K)``; client k gets
    ``floor(p_k * n_y)`` of the (shuffled) class-y indices and the last client the remainder.
    The whole draw is repeated until every client holds at least ``min_size`` samples; after
    100 failed draws a DataError suggests raising beta. Smaller beta = stronger label skew.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DataError(f"labels must be one-dimensional, got shape {labels.shape}")
    if num_clients < 1:
        raise DataError(f"num_clients must be >= 1, got {num_clients}")
    if not beta > 0:
        raise DataError(f"Dirichlet beta must be > 0, got {beta}")
    n = labels.shape[0]
    if min_size * num_clients > n:
        raise DataError(
            f"{num_clients} clients x min_size {min_size} exceeds the {n} training samples; "
            f"use fewer clients or a smaller partition.min_size"
        )
    for _ in range(MAX_DIRICHLET_ATTEMPTS):
        parts = _dirichlet_draw(labels, num_clients, beta, rng)
        if min(p.size for p in parts) >= min_size:
            return parts
    raise DataError(
        f"Dirichlet partition: after {MAX_DIRICHLET_ATTEMPTS} draws some client still had fewer than {min_size} "
        f"samples (beta={beta}, {num_clients} clients, {n} samples); raise partition.beta, lower "
        f"partition.min_size or use fewer clients"
    )
