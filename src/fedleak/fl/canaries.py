"""Sample-level canaries riding along in the run they audit (Steinke, Nasr & Jagielski 2023).

``audit: {canaries: m, kind: natural | mislabeled}``:

* **pool** — samples no client holds and no candidate uses: training rows outside every client's shard, then
  test rows that are not candidates (ids in the candidate convention: train row ``i`` -> ``i``, test row ``j``
  -> ``n_train + j``). ``m`` canaries are drawn from it uniformly without replacement.
* **coins** — each canary is put into the target client's training data by an independent fair coin.
* **labels** — ``natural``: its own label; ``mislabeled``: a uniformly drawn wrong label.

Every draw comes from ``np_rng(seed, Purpose.CANARIES, j)`` (j = 0 selection, 1 coins, 2 labels), so a resumed
run, a Flower ClientApp and a replay derive the same canaries from the config. Inserted canaries are part of the
target's data *before* the defense's ``select_data`` (a DP accountant counts them); the engine evaluates test
accuracy without the canary rows (:func:`utility_test_rows`). The canaries are scored every recorded round with
the candidates' signals and their own (possibly wrong) label (:func:`canary_round_arrays`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from fedleak.config import AuditConfig, ConfigError
from fedleak.seeding import Purpose, np_rng
from fedleak.signals.canaries import CanarySet
from fedleak.signals.candidates import gather
from fedleak.signals.compute import cos_and_diff, gradient_signals, per_sample_loss_margin
from fedleak.signals.store import OPTIONAL_KEYS_KN, SIGNAL_KEYS_KN

if TYPE_CHECKING:
    from fedleak.fl.federation import Federation


def canary_pool(clients: list[np.ndarray], n_train: int, n_test: int, cand_ids: np.ndarray) -> np.ndarray:
    """Sorted ids of the samples no client holds and no candidate uses (train rows first, then test rows)."""
    held = np.zeros(n_train + n_test, bool)
    for c in clients:
        held[np.asarray(c, np.int64)] = True
    held[np.asarray(cand_ids, np.int64)] = True
    return np.flatnonzero(~held).astype(np.int64)


def draw_canaries(
    audit: AuditConfig, seed: int, target: int, pool: np.ndarray, true_labels: np.ndarray, num_classes: int
) -> CanarySet:
    """``audit.canaries`` canaries from ``pool`` with their coins and labels (module docstring).

    ``true_labels``: the label of every id (train labels, then test labels). Too many canaries for the pool is a
    :class:`ConfigError` naming ``audit.canaries`` and the maximum."""
    m = audit.canaries
    if m > len(pool):
        raise ConfigError(
            f"audit.canaries={m} but only {len(pool)} samples are held by no client and used by no candidate; "
            f"set audit.canaries to at most {len(pool)} (or free samples: fewer candidates.n_test, "
            "partition.samples_per_client)")
    if m > 0 and audit.kind == "mislabeled" and num_classes < 2:
        raise ConfigError("audit.kind=mislabeled needs at least 2 classes; use audit.kind=natural")
    ids = np.sort(np_rng(seed, Purpose.CANARIES, 0).choice(pool, size=m, replace=False)).astype(np.int64)
    inserted = np_rng(seed, Purpose.CANARIES, 1).integers(0, 2, size=m).astype(bool)
    true = np.asarray(true_labels, np.int64)[ids]
    label = true.copy()
    if audit.kind == "mislabeled":
        label = (true + np_rng(seed, Purpose.CANARIES, 2).integers(1, num_classes, size=m)) % num_classes
    return CanarySet(ids, label.astype(np.int64), true, inserted, int(target))


def build_canaries(fed: "Federation") -> CanarySet | None:
    """The federation's canaries (None when ``audit.canaries`` is 0)."""
    cfg = fed.cfg
    if cfg.audit.canaries == 0:
        return None
    if cfg.candidates.protocol == "official-compat":
        raise ConfigError("audit.canaries needs candidates.protocol=aligned (official-compat redraws non-members "
                          "from the test rows the canaries come from); set one of them back")
    d = fed.data
    pool = canary_pool(fed.clients, len(d.train), len(d.test), fed.cand_ids)
    labels = torch.cat([d.train.y, d.test.y]).numpy()
    return draw_canaries(cfg.audit, cfg.seed, cfg.candidates.target_client, pool, labels, d.num_classes)


def client_pool(fed: "Federation", k: int) -> np.ndarray:
    """Client ``k``'s sample ids: its shard, plus the inserted canaries when ``k`` is the target."""
    c = fed.canaries
    if c is None or k != c.target or not c.inserted.any():
        return fed.clients[k]
    return np.concatenate([np.asarray(fed.clients[k], np.int64), c.ids[c.inserted]])


def rows(fed: "Federation", ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-space images and labels of sample ids (train or test rows), canaries with their canary label."""
    d = fed.data
    ids = np.asarray(ids, np.int64)
    x, y = gather(ids, len(d.train), d.train.x, d.train.y, d.test.x, d.test.y)
    c = fed.canaries
    if c is not None and c.m:
        pos = np.searchsorted(c.ids, ids).clip(0, c.m - 1)
        hit = c.ids[pos] == ids
        if hit.any():
            y[torch.as_tensor(hit)] = torch.as_tensor(c.label[pos[hit]])
    return x, y


def utility_test_rows(fed: "Federation") -> torch.Tensor | None:
    """Test rows to evaluate utility on: all but the canaries (None = all rows, the run has no test canaries)."""
    c, n_train = fed.canaries, len(fed.data.train)
    if c is None or not (c.ids >= n_train).any():
        return None
    keep = np.ones(len(fed.data.test), bool)
    keep[c.ids[c.ids >= n_train] - n_train] = False
    return torch.as_tensor(np.flatnonzero(keep))


def canary_round_arrays(
    fed: "Federation", global_params: dict[str, torch.Tensor], uploaded: dict[int, dict[str, torch.Tensor]],
    ks: list[int], deltas: torch.Tensor, dn2: torch.Tensor,
) -> dict[str, np.ndarray]:
    """The ``canary_*`` [K, m] arrays of one recorded round: the candidates' signals computed for the canaries
    (with their canary labels) against the round's uploads ``deltas`` of clients ``ks``."""
    c, sc, K = fed.canaries, fed.cfg.signals, fed.cfg.partition.num_clients
    assert c is not None
    out = {f"canary_{k}": np.full((K, c.m), np.nan, np.float32) for k in (*SIGNAL_KEYS_KN, *OPTIONAL_KEYS_KN)}
    if c.m == 0:
        return out
    x, y = rows(fed, c.ids)
    x = fed.data.normalize(x)
    g = gradient_signals(fed.model, global_params, deltas, x, y, chunk_size=sc.chunk_size,
                         memory_budget_mb=sc.memory_budget_mb)
    for i, k in enumerate(ks):
        cos, diff = cos_and_diff(g["dot"][i][None], g["gnorm2"], dn2[i : i + 1])
        loss, margin = per_sample_loss_margin(fed.model, uploaded[k], x, y, batch_size=sc.batch_size)
        out["canary_loss"][k], out["canary_margin"][k] = loss.numpy(), margin.numpy()
        out["canary_dot"][k] = g["dot"][i].numpy()
        out["canary_gnorm2"][k] = g["gnorm2"].numpy()
        out["canary_cos"][k] = cos[0].numpy()
        out["canary_diff"][k] = diff[0].numpy()
    return out


__all__ = ["build_canaries", "canary_pool", "canary_round_arrays", "client_pool", "draw_canaries", "rows",
           "utility_test_rows"]
