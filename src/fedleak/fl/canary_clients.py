"""Canary clients (``audit.canary_clients``): the client-level one-shot audit of Andrew et al. (ICLR 2024), inside
the run it audits.

``c`` extra clients, numbered ``0..c-1``. Canary ``i``'s update is a fixed random unit direction ``u_i`` times the
clipping norm ``C`` of ``perturb`` (a maximal-norm clipped update), the same in every round it takes part in.
A seeded half of the canaries (``c // 2``, :class:`~fedleak.seeding.Purpose` ``CANARY_CLIENTS``) is *inserted*;
the others are *held out* and never uploaded. Each round, ``round(participation · n_in)`` (at least one) of the
inserted canaries take part, drawn without replacement like the real clients (:func:`fedleak.seeding.participants`).

A taking-part canary behaves like an honest client of the protocol: its ``Δ = −C·u_i`` (so its upload moves the
model along ``+u_i``) goes through the run's ``transform_update`` with its own noise stream
``(seed, CANARY_CLIENTS, round, i)`` — for ``perturb`` with ``clip``, clipping (a no-op at norm ``C``) and
``N(0, (σC)²)`` — and joins the FedAvg aggregation with the mean weight of the real clients. Canaries never
enter the signals, the metrics or the attacks: the engine adds them after recording a round's signals.

After the last round the engine writes ``audit/client_canaries.json``: for every canary its index, whether it was
inserted, the number of rounds it took part in and ``cos(θ_final − θ_initial, u_i)``. The ε estimate from
those cosines is computed one layer up (``fedleak.attacks.client_audit``, with
:mod:`fedleak.metrics.client_canaries`) and written to ``audit/clients.json``.

The directions are drawn in float64 from a seed derived from ``(seed, CANARY_CLIENTS)``, so any process holding
the config regenerates them (:func:`canary_direction`): nothing random is stored.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedleak.config import ConfigError, ExperimentConfig
from fedleak.defenses.base import Defense
from fedleak.errors import FedleakError
from fedleak.seeding import Purpose, np_rng, seed_seq, torch_gen
from fedleak.signals import store

ParamDict = dict[str, torch.Tensor]
EVIDENCE = Path("audit") / "client_canaries.json"
_TAG = 0x0CA7A21E5  # separates canary streams from every other use of a seed


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """Pairwise-summed dot product without BLAS: next to torch's OpenMP threads, OpenBLAS's 1-D dot can spin for
    milliseconds per call on a busy machine (measured: 19 ms for P = 30,000 vs 0.01 ms here)."""
    return float(np.sum(a * b))


def canary_direction(seed: int, index: int, dim: int, clip_norm: float = 1.0) -> np.ndarray:
    """Canary ``index``: a uniformly random direction in R^dim with L2 norm ``clip_norm`` (float64)."""
    if dim < 1 or clip_norm <= 0 or index < 0:
        raise FedleakError(f"canary needs dim >= 1, clip_norm > 0, index >= 0 (got {dim}, {clip_norm}, {index})")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index), _TAG]))
    g = rng.standard_normal(dim)
    return g * (clip_norm / np.sqrt(_dot(g, g)))


def _flat(delta: Any) -> np.ndarray:
    if hasattr(delta, "detach"):  # a torch tensor
        delta = delta.detach().cpu().double().numpy()
    d = np.asarray(delta, dtype=np.float64).ravel()
    if d.size == 0 or not np.isfinite(d).all():
        raise FedleakError("model delta must be a non-empty array of finite numbers")
    return d


def canary_cosines(delta: Any, seed: int, indices: Iterable[int]) -> np.ndarray:
    """``cos(Δ, c_i)`` for each canary index, regenerating one canary at a time (memory O(P))."""
    d = _flat(delta)
    norm = float(np.sqrt(_dot(d, d)))
    if norm == 0.0:
        raise FedleakError("model delta is all zeros: the cosine with a canary is undefined")
    # unit canaries (clip norm 1): the cosine does not depend on the canary's scale
    return np.array([_dot(d, canary_direction(seed, i, d.size)) / norm for i in indices])


@dataclass(frozen=True)
class CanaryPlan:
    """The canary clients of a run: which are inserted, their norm, and the config they derive from."""

    count: int
    inserted: tuple[int, ...]
    clip: float
    seed: int  # the seed of the directions, derived from (cfg.seed, CANARY_CLIENTS)
    run_seed: int
    participation: float

    def taking_part(self, rnd: int) -> list[int]:
        """The inserted canaries that take part in round ``rnd`` (sorted)."""
        n = len(self.inserted)
        m = max(int(round(self.participation * n)), 1)
        if m >= n:
            return list(self.inserted)
        pick = np_rng(self.run_seed, Purpose.CANARY_CLIENTS, rnd).choice(n, size=m, replace=False)
        return sorted(self.inserted[j] for j in pick)


def plan_canary_clients(cfg: ExperimentConfig, defense: Defense) -> CanaryPlan | None:
    """The run's :class:`CanaryPlan` (None without ``audit.canary_clients``); a :class:`ConfigError` when the
    defense has no clipping norm to give the canaries (``perturb`` with ``clip``) or there are too few."""
    c = cfg.audit.canary_clients
    if not c:
        return None
    clip = getattr(defense, "p", {}).get("clip") if defense.name == "perturb" else None
    if clip is None:
        raise ConfigError(
            f"audit.canary_clients={c} needs client-level DP with a clipping norm, the canaries' update norm: set "
            f"defense.name=perturb and defense.params.clip (the defense is '{cfg.defense.name}'"
            f"{' without clip' if defense.name == 'perturb' else ''}), or audit.canary_clients=0"
        )
    if c < 4:
        raise ConfigError(f"audit.canary_clients={c}: need at least 4 (2 inserted and 2 held out); 100 or more "
                          "give a usable estimate")
    inserted = np_rng(cfg.seed, Purpose.CANARY_CLIENTS).permutation(c)[: c // 2]
    seed = int(seed_seq(cfg.seed, Purpose.CANARY_CLIENTS).generate_state(1)[0])
    return CanaryPlan(c, tuple(sorted(int(i) for i in inserted)), float(clip), seed, cfg.seed,
                      cfg.fl.participation)


def _unflatten(flat: np.ndarray, like: Mapping[str, torch.Tensor]) -> ParamDict:
    out, off = {}, 0
    for name, t in like.items():
        out[name] = torch.as_tensor(flat[off : off + t.numel()], dtype=t.dtype).view(t.shape)
        off += t.numel()
    return out


def canary_uploads(plan: CanaryPlan, rnd: int, global_params: ParamDict, defense: Defense) -> dict[int, ParamDict]:
    """``{i: uploaded params}`` of the canaries taking part in round ``rnd`` (module docstring)."""
    dim = sum(t.numel() for t in global_params.values())
    out = {}
    for i in plan.taking_part(rnd):
        delta = _unflatten(-canary_direction(plan.seed, i, dim, plan.clip), global_params)
        sent = defense.transform_update(delta, torch_gen(plan.run_seed, Purpose.CANARY_CLIENTS, rnd, i))
        out[i] = {n: global_params[n] - sent[n] for n in global_params}
    return out


def with_canaries(
    uploaded: dict[int, ParamDict], weights: np.ndarray, canaries: dict[int, ParamDict]
) -> tuple[dict[int, ParamDict], np.ndarray]:
    """The uploads and FedAvg weights with the canaries appended (canary ``i`` as client ``K + i``, weighted
    by the mean weight of the real clients)."""
    if not canaries:
        return uploaded, weights
    K = len(weights)
    top = K + max(canaries) + 1
    ext = np.concatenate([weights, np.full(top - K, float(np.mean(weights)))])
    return {**uploaded, **{K + i: p for i, p in canaries.items()}}, ext


def write_evidence(run_dir: Path, plan: CanaryPlan, initial: ParamDict, final: ParamDict, rounds: int) -> Path:
    """``audit/client_canaries.json``: every canary's cosine with ``θ_final − θ_initial`` (module docstring)."""
    delta = torch.cat([(final[n].double() - initial[n].double()).reshape(-1) for n in initial]).numpy()
    idx = list(range(plan.count))
    cos = canary_cosines(delta, plan.seed, idx)
    taken = np.zeros(plan.count, dtype=np.int64)
    for r in range(rounds):
        taken[plan.taking_part(r)] += 1
    doc = {
        "clip": plan.clip,
        "dim": int(delta.size),
        "rounds": rounds,
        "index": idx,
        "inserted": [i in plan.inserted for i in idx],
        "rounds_taken_part": taken.tolist(),
        "cosine": [float(x) if math.isfinite(x) else None for x in cos],
    }
    path = Path(run_dir) / EVIDENCE
    store.make_dirs(path.parent)
    store.atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
    return path


__all__ = [
    "EVIDENCE",
    "CanaryPlan",
    "canary_cosines",
    "canary_direction",
    "canary_uploads",
    "plan_canary_clients",
    "with_canaries",
    "write_evidence",
]
