"""The in-process FedAvg engine: trains, records per-sample signals, resumes after any crash.

Determinism: every random draw of round r and client k comes from a generator seeded by
``(seed, r, k, purpose)``, so a resumed run needs nothing but the checkpointed global model (and,
with ``fresh_optimizer: false``, the optimizer states) to reproduce an uninterrupted run exactly.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedleak.config import ConfigError, ExperimentConfig
from fedleak.data.base import Dataset
from fedleak.fl.checkpoint import load_checkpoint, save_checkpoint, save_final_model
from fedleak.fl.hooks import Defense, build_defense
from fedleak.fl.local import ParamDict, evaluate, get_params, local_update
from fedleak.fl.progress import RoundProgress
from fedleak.fl.rundir import (
    check_same_config,
    complete_run_dir,
    init_run_dir,
    refuse_orphaned_results,
    saved_candidates,
    saved_split,
)
from fedleak.fl.schedule import lr_at
from fedleak.runlock import run_lock
from fedleak.signals import store
from fedleak.signals.candidates import build_candidates, gather, redraw_nonmembers

# purposes of derived random streams
_PARTITION, _CANDIDATES, _SAMPLE_CLIENTS, _LOCAL, _DEFENSE, _COMPAT, _DATA_SELECT, _INIT = range(8)


def _seed_seq(seed: int, *key: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, *key])


def np_rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(_seed_seq(seed, *key))


def torch_gen(seed: int, *key: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(_seed_seq(seed, *key).generate_state(1, np.uint64)[0] & 0x7FFF_FFFF_FFFF_FFFF))
    return g


@dataclass
class Federation:
    """Everything fixed for the whole run, derived from the config (and saved in the run dir)."""

    cfg: ExperimentConfig
    data: Dataset
    clients: list[np.ndarray]
    cand_ids: np.ndarray
    cand_owner: np.ndarray
    model: torch.nn.Module
    defense: Defense
    weights: np.ndarray  # client data sizes

    @property
    def n_train(self) -> int:
        return len(self.data.train)


def build_federation(cfg: ExperimentConfig, run_dir: Path | None = None) -> Federation:
    """Load data, partition, candidates, model and defense (reusing the run dir's saved split)."""
    from fedleak.data import load_dataset
    from fedleak.data.partition import dirichlet_partition, iid_partition
    from fedleak.models import build_model

    data = load_dataset(cfg.data, seed=cfg.seed)
    pc = cfg.partition
    if run_dir is not None and (run_dir / "split.npz").is_file():
        clients = saved_split(run_dir, pc.num_clients, len(data.train))
    elif pc.scheme == "iid":
        clients = iid_partition(len(data.train), pc.num_clients, np_rng(cfg.seed, _PARTITION), pc.samples_per_client)
    else:
        clients = dirichlet_partition(
            data.train.y.numpy(), pc.num_clients, pc.beta, np_rng(cfg.seed, _PARTITION), min_size=pc.min_size
        )
    if run_dir is not None and (run_dir / "candidates.npz").is_file():
        ids, owner = saved_candidates(run_dir, pc.num_clients, len(data.train) + len(data.test))
    else:
        ids, owner = build_candidates(
            cfg.candidates, clients, len(data.train), len(data.test), np_rng(cfg.seed, _CANDIDATES)
        )
    torch.manual_seed(int(_seed_seq(cfg.seed, _INIT).generate_state(1)[0]))
    try:
        model = build_model(cfg.model.name, data.num_classes, data.input_shape, **cfg.model.options)
    except ValueError as e:
        raise ConfigError(f"model: {e}") from None
    defense = build_defense(cfg.defense, cfg)
    weights = np.array([len(c) for c in clients], dtype=np.float64)
    return Federation(cfg, data, clients, ids, owner, model, defense, weights)


# the old private names (fedleak.flower.audit imports them)
_init_run_dir, _save_checkpoint, _save_final_model = init_run_dir, save_checkpoint, save_final_model


def _participants(cfg: ExperimentConfig, rnd: int) -> list[int]:
    K = cfg.partition.num_clients
    m = max(int(round(cfg.fl.participation * K)), 1)
    if m >= K:
        return list(range(K))
    return sorted(np_rng(cfg.seed, _SAMPLE_CLIENTS, rnd).choice(K, size=m, replace=False).tolist())


def aggregate(uploaded: dict[int, ParamDict], weights: np.ndarray) -> ParamDict:
    """FedAvg: Σ_k w_k θ_k / Σ_k w_k over the clients that uploaded, keyed by client id (spec W10 fixed)."""
    ks = sorted(uploaded)
    total = float(sum(weights[k] for k in ks))
    names = uploaded[ks[0]].keys()
    return {n: sum((weights[k] / total) * uploaded[k][n] for k in ks) for n in names}


def client_update(
    fed: Federation,
    k: int,
    rnd: int,
    lr: float,
    global_params: ParamDict,
    opt_state: dict[str, Any] | None = None,
    defended: bool | None = None,
) -> tuple[ParamDict, float, dict[str, Any] | None]:
    """Client ``k``'s work in round ``rnd``: what it uploads, its mean training loss, its optimizer state.

    Every random draw comes from the (seed, rnd, k, purpose) streams, so any process holding the same
    ``Federation`` (e.g. a Flower ClientApp, ``fedleak.flower``) computes the identical upload.
    """
    cfg, data = fed.cfg, fed.data
    if defended is None:
        defended = cfg.defense.clients is None or k in cfg.defense.clients
    defense = fed.defense if defended else Defense()
    idx = defense.select_data(fed.clients[k], rnd, np_rng(cfg.seed, _DATA_SELECT, rnd, k))
    it = torch.as_tensor(np.asarray(idx), dtype=torch.long)
    local, loss, state = local_update(
        fed.model,
        global_params,
        data.train.x[it],
        data.train.y[it],
        fl=cfg.fl,
        lr=lr,
        num_classes=data.num_classes,
        normalize=data.normalize,
        defense=defense,
        gen=torch_gen(cfg.seed, _LOCAL, rnd, k),
        opt_state=opt_state,
        where=f"round {rnd} (0-based), client {k}",
    )
    delta = {n: global_params[n] - local[n] for n in local}
    delta = defense.transform_update(delta, torch_gen(cfg.seed, _DEFENSE, rnd, k))
    return {n: global_params[n] - delta[n] for n in delta}, loss, state


@dataclass
class _Rounds:
    """What every round of a run needs besides the model state: runs one FedAvg round."""

    fed: Federation
    run_dir: Path
    recorded: list[int]
    test_x: torch.Tensor = field(init=False)
    test_y: torch.Tensor = field(init=False)
    defended: set[int] = field(init=False)
    train_eval: tuple[torch.Tensor, torch.Tensor] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        cfg, data = self.fed.cfg, self.fed.data
        self.test_x, self.test_y = data.normalize(data.test.x), data.test.y
        self.defended = set(range(cfg.partition.num_clients)) if cfg.defense.clients is None else set(cfg.defense.clients)
        if cfg.fl.eval_train_every:
            self.train_eval = _train_eval_subset(self.fed)

    def run(
        self, rnd: int, global_params: ParamDict, opt_states: dict[int, Any], *, signals: bool, evaluate_global: bool
    ) -> tuple[ParamDict, dict[str, Any]]:
        """Round ``rnd`` from ``global_params`` (``opt_states`` updated in place): the new global model and the
        round's metrics record (signals written when ``signals``; utility only when ``evaluate_global``)."""
        from fedleak.signals.record import record_round

        fed, cfg, fl = self.fed, self.fed.cfg, self.fed.cfg.fl
        t0 = time.time()
        lr = lr_at(fl.schedule, fl.lr, rnd, fl.rounds)
        uploaded: dict[int, ParamDict] = {}
        client_loss: dict[int, float] = {}
        for k in _participants(cfg, rnd):
            uploaded[k], client_loss[k], opt_states_k = client_update(
                fed, k, rnd, lr, global_params, opt_states.get(k), defended=k in self.defended
            )
            if opt_states_k is not None:
                opt_states[k] = opt_states_k
        record: dict[str, Any] = {"round": rnd, "lr": lr}
        if signals:
            record["client_test_acc"] = record_round(
                fed, self.run_dir, rnd, lr, global_params, uploaded, self.test_x, self.test_y,
                compat_rng=np_rng(cfg.seed, _COMPAT, rnd),
            )
        global_params = aggregate(uploaded, fed.weights)
        if evaluate_global:
            test_acc, test_loss = evaluate(fed.model, global_params, self.test_x, self.test_y, fl.eval_batch_size)
            record.update(test_acc=test_acc, test_loss=test_loss, client_train_loss=client_loss)
            if self.train_eval is not None and (rnd % fl.eval_train_every == 0 or rnd == fl.rounds - 1):
                tr_acc, tr_loss = evaluate(fed.model, global_params, *self.train_eval, fl.eval_batch_size)
                record.update(train_acc=tr_acc, train_loss=tr_loss)
            eps = fed.defense.privacy_spent(rnd)
            if eps:
                record["privacy"] = eps
            record["time"] = time.time() - t0
        return global_params, record

    def replay(self, initial: ParamDict, redo: list[int], quiet: bool) -> None:
        """Recompute the signal files of rounds ``redo`` (deleted after they were recorded): training is
        deterministic, so rounds 0..max(redo) run again from the initial model, writing only those files."""
        if not quiet:
            print(f"[fedleak] {self.fed.cfg.name}: recomputing the missing signal files of rounds {redo} "
                  f"(replaying rounds 0-{max(redo)})", file=sys.stderr, flush=True)
        params: ParamDict = dict(initial)
        opt_states: dict[int, Any] = {}
        for rnd in range(max(redo) + 1):
            params, _ = self.run(rnd, params, opt_states, signals=rnd in redo, evaluate_global=False)


def train(
    cfg: ExperimentConfig, run_dir: str | Path, quiet: bool = False, stop_after: int | None = None
) -> Path:
    """Run (or resume) the experiment in ``run_dir``; returns the run directory.

    Holds the run directory's lock (``fedleak.runlock``) throughout: a second writer gets a one-line error.
    A resumed run also recomputes recorded rounds whose signal files were deleted (by replaying from round 0).
    ``stop_after``: finish after this many rounds of this call (for tests and incremental work).
    """
    run_dir = Path(run_dir)
    with run_lock(run_dir, "fedleak train"):
        return _train_locked(cfg, run_dir, quiet, stop_after)


def _prepare(cfg: ExperimentConfig, run_dir: Path) -> tuple[Federation, list[int]]:
    """Check or create the run directory; the federation and the rounds to record."""
    resuming = (run_dir / "config.yaml").is_file()
    if resuming:
        check_same_config(run_dir, cfg)
    else:
        refuse_orphaned_results(run_dir)
    fed = build_federation(cfg, run_dir if resuming else None)
    recorded = cfg.signals.recorded_rounds(cfg.fl.rounds)
    (complete_run_dir if resuming else init_run_dir)(run_dir, cfg, fed, recorded)
    return fed, recorded


def _train_locked(cfg: ExperimentConfig, run_dir: Path, quiet: bool, stop_after: int | None) -> Path:
    if cfg.fl.threads:
        torch.set_num_threads(cfg.fl.threads)
    fed, recorded = _prepare(cfg, run_dir)
    initial = get_params(fed.model)
    ck = load_checkpoint(run_dir, fed.model, cfg.fl.rounds)
    start, global_params, opt_states = (0, initial, {}) if ck is None else (ck[0] + 1, ck[1], ck[2])
    _truncate_metrics(run_dir, start)
    rounds = _Rounds(fed, run_dir, recorded)
    redo = [r for r in recorded if r < start and not store.round_path(run_dir, r).is_file()]
    if redo:
        rounds.replay(initial, redo, quiet)
    end = cfg.fl.rounds if stop_after is None else min(cfg.fl.rounds, start + stop_after)
    saved, rnd = start, start  # rounds < saved are in the checkpoint
    try:
        with RoundProgress(total=cfg.fl.rounds, start=start, quiet=quiet, name=cfg.name) as progress:
            for rnd in range(start, end):
                global_params, record = rounds.run(
                    rnd, global_params, opt_states, signals=rnd in recorded, evaluate_global=True
                )
                store.append_metrics(run_dir, record)
                if (rnd + 1) % cfg.output.checkpoint_every == 0 or rnd == end - 1:
                    save_checkpoint(run_dir, rnd, global_params, opt_states)
                    saved = rnd + 1
                progress.update(rnd, record)
        if end == cfg.fl.rounds:
            save_final_model(run_dir, global_params)
    except store.StoreError as e:  # a write failed (disk full, read-only): say what is kept
        kept = f"rounds 0-{saved - 1} are saved and" if saved else "no round is saved yet;"
        then = f"resumes at round {saved}" if saved else "starts over"
        raise store.StoreError(
            f"{e} — training stopped in round {rnd}; {kept} `fedleak train` with the same --out {then} once that "
            "is fixed"
        ) from None
    return run_dir


def _train_eval_subset(fed: Federation, cap: int = 10_000) -> tuple[torch.Tensor, torch.Tensor]:
    """Global-model train accuracy on at most ``cap`` training samples (spec W18: not all 50k every round)."""
    n = fed.n_train
    idx = torch.arange(n) if n <= cap else torch.as_tensor(np.sort(np_rng(fed.cfg.seed, 99).choice(n, cap, replace=False)))
    return fed.data.normalize(fed.data.train.x[idx]), fed.data.train.y[idx]


def _truncate_metrics(run_dir: Path, start: int) -> None:
    """Drop metric lines of rounds >= start (written before a crash, redone on resume)."""
    rows = [r for r in store.read_metrics(run_dir) if r.get("round", -1) < start]
    store.atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


__all__ = ["train", "build_federation", "aggregate", "client_update", "Federation", "redraw_nonmembers", "gather"]
