"""``fedleak import SRC --out RUN``: a federation recorded elsewhere (the layout of :mod:`fedleak.fl.exchange`) into
a run directory, computing the signals with the engine's own code (:func:`fedleak.fl.record.record_round`).

Order: the manifest, the dataset and model it names, the candidates and every tensor file are checked before
anything is written; then, holding RUN's lock, split.npz and candidates.npz, one round file (and metrics line) per
round, meta.json, and config.yaml last (a directory with config.yaml is a complete run). RUN must be new or empty;
if anything fails after writing began, what was written is removed again, so RUN never holds half an import.
"""

from __future__ import annotations

import copy
import sys
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedleak.config import ConfigError, ExperimentConfig, dump_config, parse_config
from fedleak.data.base import DataError, Dataset
from fedleak.defenses import build_defense
from fedleak.fl.exchange import (
    MANIFEST,
    NOTHING,
    Manifest,
    RoundEntry,
    Spec,
    check_file,
    load_params,
    read_manifest,
    tensor_path,
)
from fedleak.fl.federation import Federation
from fedleak.fl.local import evaluate, get_params
from fedleak.fl.record import record_round
from fedleak.fl.round import aggregate
from fedleak.fl.rundir import _write_meta
from fedleak.runlock import run_lock
from fedleak.seeding import Purpose, init_seed, np_rng
from fedleak.signals import store

__all__ = ["import_federation", "import_config"]


def import_config(m: Manifest, source: str) -> ExperimentConfig:
    """The run's config: the manifest's ``config`` with the federation's facts (clients, target, rounds) set."""
    raw: dict[str, Any] = copy.deepcopy(m.config)
    raw.setdefault("name", "imported")
    rounds = [r.round for r in m.rounds]
    raw.setdefault("partition", {})["num_clients"] = m.num_clients
    raw.setdefault("candidates", {})["target_client"] = m.candidates.target
    fl = raw.setdefault("fl", {})
    if not isinstance(fl.get("rounds"), int) or fl["rounds"] <= rounds[-1]:
        fl["rounds"] = rounds[-1] + 1
    sig = raw.setdefault("signals", {})
    sig.pop("keep_models", None)  # the imported run keeps no models of its own
    cfg = parse_config(raw, f"{source} (config section)")
    if cfg.signals.recorded_rounds(cfg.fl.rounds) != rounds:
        sig["rounds"] = rounds
        cfg = parse_config(raw, f"{source} (config section)")
    return cfg


def _federation(cfg: ExperimentConfig, m: Manifest, path: Path) -> Federation:
    from fedleak.data import load_dataset
    from fedleak.models import build_model

    try:
        data = load_dataset(cfg.data, seed=cfg.seed)
    except (DataError, ConfigError) as e:
        raise type(e)(f"{path}: config.data: {e}") from None
    torch.manual_seed(init_seed(cfg.seed))
    try:
        model = build_model(cfg.model.name, data.num_classes, data.input_shape, **cfg.model.options)
    except (ValueError, ConfigError) as e:
        raise ConfigError(f"{path}: config.model: {e}") from None
    n_train, n_all = len(data.train), len(data.train) + len(data.test)
    clients = [np.asarray(c, np.int64) for c in m.clients] if m.clients is not None else \
        [np.zeros(0, np.int64) for _ in range(m.num_clients)]
    ids, owner = np.asarray(m.candidates.ids, np.int64), np.asarray(m.candidates.owner, np.int64)
    _check_candidates(path, m, data, clients, ids, owner, n_train, n_all)
    sizes = [len(c) for c in clients]
    if m.clients is None:  # the client sizes: the example counts (the last one given for each client)
        for c in (c for r in m.rounds for c in r.clients):
            sizes[c.id] = c.examples
    weights = np.asarray(sizes, np.float64)
    return Federation(cfg, data, clients, ids, owner, model, build_defense(cfg.defense, cfg), weights)


def _check_candidates(path: Path, m: Manifest, data: Dataset, clients: list[np.ndarray], ids: np.ndarray,
                      owner: np.ndarray, n_train: int, n_all: int) -> None:
    def bad(why: str) -> ConfigError:
        return ConfigError(f"{path}: {why}; fix the manifest (or its config.data section) — {NOTHING}")

    if len(ids) == 0 or ids.min() < 0 or ids.max() >= n_all or len(np.unique(ids)) != len(ids):
        raise bad(f"'candidates.ids' must be distinct rows 0..{n_all - 1} of the dataset ({n_train} train + "
                  f"{n_all - n_train} test)")
    if owner.min() < -1 or owner.max() >= m.num_clients or np.any(owner[ids >= n_train] != -1):
        raise bad("'candidates.owner' must be a client id, or -1 for samples nobody trained on (every test row)")
    if m.candidates.labels is not None:
        y = torch.cat([data.train.y, data.test.y]).numpy()[ids]
        wrong = int((np.asarray(m.candidates.labels) != y).sum())
        if wrong:
            raise bad(f"'candidates.labels' disagree with dataset {data.name} at {wrong} of {len(ids)} candidates "
                      "(another dataset, split or seed?)")
    for k, rows in enumerate(clients):
        if len(rows) and (rows.min() < 0 or rows.max() >= n_train):
            raise bad(f"'clients[{k}]' names rows outside the {n_train} training rows")
    if m.clients is not None:
        for n in np.flatnonzero(owner >= 0):
            if not np.isin(ids[n], clients[owner[n]]):
                raise bad(f"candidate {int(ids[n])} is owned by client {int(owner[n])} but not in 'clients[{owner[n]}]'")


def _check_files(src: Path, m: Manifest, want: Spec) -> None:
    for r in m.rounds:
        check_file(tensor_path(src, m, r.round, None), m, want, None, r.round, None)
        for c in r.clients:
            check_file(tensor_path(src, m, r.round, c.id), m, want, c.id, r.round, c.examples)


def _uploads(src: Path, m: Manifest, r: RoundEntry, glob: dict[str, torch.Tensor]) -> dict[int, dict[str, torch.Tensor]]:
    out = {}
    for c in r.clients:
        p = load_params(tensor_path(src, m, r.round, c.id), m)
        out[c.id] = {n: glob[n] + p[n] for n in glob} if m.upload == "delta" else p
    return out


def _prepare_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(p.name != ".lock" for p in out.iterdir())):
        raise store.StoreError(f"{out} already exists and is not an empty folder; import into a new --out (an import "
                               "never writes into an existing run)")


def _clean(out: Path) -> None:
    for p in out.iterdir():  # RUN was empty when the import began: everything in it is the import's
        if p.name != ".lock":
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)


def import_federation(src: str | Path, out: str | Path, quiet: bool = True) -> Path:
    """Check SRC completely, then write the run directory ``out`` (see the module docstring)."""
    src, out = Path(src), Path(out)
    m = read_manifest(src)
    cfg = import_config(m, str(src / MANIFEST))
    _prepare_out(out)
    if cfg.fl.threads:
        torch.set_num_threads(cfg.fl.threads)
    fed = _federation(cfg, m, src / MANIFEST)
    want = {n: (tuple(p.shape), p.dtype) for n, p in get_params(fed.model).items()}  # parameters, then buffers
    _check_files(src, m, want)
    with run_lock(out, "fedleak import"):
        _prepare_out(out)
        try:
            _write(src, out, m, cfg, fed, quiet)
        except BaseException:
            _clean(out)
            raise
    return out


def _write(src: Path, out: Path, m: Manifest, cfg: ExperimentConfig, fed: Federation, quiet: bool) -> None:
    data = fed.data
    if m.clients is not None:  # otherwise nobody said which rows each client holds
        store.write_split(out, fed.clients)
    labels = torch.cat([data.train.y, data.test.y]).numpy()[fed.cand_ids]
    store.write_candidates(out, fed.cand_ids, fed.cand_owner, cfg.candidates.target_client, labels)
    test_x, test_y = data.normalize(data.test.x), data.test.y
    for r in m.rounds:
        glob = load_params(tensor_path(src, m, r.round, None), m)
        uploaded = _uploads(src, m, r, glob)
        lr = float("nan") if r.lr is None else r.lr
        rec: dict[str, Any] = {"round": r.round, "lr": r.lr}
        rec["client_test_acc"] = record_round(fed, out, r.round, lr, glob, uploaded, test_x, test_y,
                                              compat_rng=np_rng(cfg.seed, Purpose.COMPAT, r.round))
        weights = np.zeros(m.num_clients)
        for c in r.clients:
            weights[c.id] = c.examples
        acc, loss = evaluate(fed.model, aggregate(uploaded, weights), test_x, test_y, cfg.fl.eval_batch_size)
        rec.update(test_acc=acc, test_loss=loss)
        store.append_metrics(out, rec)
        if not quiet:
            print(f"[fedleak] import: round {r.round} ({len(uploaded)} clients)", file=sys.stderr, flush=True)
    _write_meta(out, cfg, fed, [r.round for r in m.rounds], dump_config(cfg))
    store.atomic_write_text(out / "config.yaml", dump_config(cfg))
