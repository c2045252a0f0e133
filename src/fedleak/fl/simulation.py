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

import torch

from fedleak.config import ConfigError, ExperimentConfig
from fedleak.fl.canary_clients import CanaryPlan, canary_uploads, plan_canary_clients, with_canaries, write_evidence
from fedleak.fl.canaries import utility_test_rows
from fedleak.device import module_device, setup_device
from fedleak.fl.checkpoint import load_checkpoint, save_checkpoint, save_final_model
from fedleak.fl.federation import Federation, build_federation, train_eval_subset
from fedleak.fl.local import ParamDict, evaluate, get_params
from fedleak.fl.progress import RoundProgress
from fedleak.fl.record import record_round
from fedleak.fl.round import aggregate, client_update, clients_update_vectorized
from fedleak.fl.rundir import check_same_config, complete_run_dir, init_run_dir, refuse_orphaned_results
from fedleak.fl.schedule import lr_at
from fedleak.fl.vectorized_policy import local_training_hooks, resolve_vectorize, supports_vectorized
from fedleak.runlock import run_lock
from fedleak.seeding import Purpose, np_rng, participants
from fedleak.signals import store


@dataclass
class _Rounds:
    """What every round of a run needs besides the model state: runs one FedAvg round."""

    fed: Federation
    run_dir: Path
    recorded: list[int]
    vectorized: bool = False  # a round's clients train as one stacked computation (choose_engine)
    canaries: CanaryPlan | None = None  # audit.canary_clients: extra clients in the aggregation only
    test_x: torch.Tensor = field(init=False)
    test_y: torch.Tensor = field(init=False)
    defended: set[int] = field(init=False)
    train_eval: tuple[torch.Tensor, torch.Tensor] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        cfg, data = self.fed.cfg, self.fed.data
        self.test_x, self.test_y = data.normalize(data.test.x), data.test.y
        keep = utility_test_rows(self.fed)  # an audited run's utility leaves the canary rows out
        if keep is not None:
            self.test_x, self.test_y = self.test_x[keep], self.test_y[keep]
        self.defended = set(range(cfg.partition.num_clients)) if cfg.defense.clients is None else set(cfg.defense.clients)
        if cfg.fl.eval_train_every:
            self.train_eval = train_eval_subset(self.fed)

    def run(
        self, rnd: int, global_params: ParamDict, opt_states: dict[int, Any], *, signals: bool, evaluate_global: bool,
        bn_states: dict[int, ParamDict] | None = None,
    ) -> tuple[ParamDict, dict[str, Any]]:
        """Round ``rnd`` from ``global_params`` (``opt_states`` and, under ``fl.bn: local``, the clients' private
        BatchNorm states ``bn_states`` updated in place): the new global model and the round's metrics record
        (signals written when ``signals``; utility only when ``evaluate_global``)."""
        fed, cfg, fl = self.fed, self.fed.cfg, self.fed.cfg.fl
        t0 = time.time()
        lr = lr_at(fl.schedule, fl.lr, rnd, fl.rounds)
        uploaded: dict[int, ParamDict] = {}
        client_loss: dict[int, float] = {}
        ks = list(participants(cfg, rnd))
        if self.vectorized:
            done = clients_update_vectorized(fed, ks, rnd, lr, global_params, opt_states, self.defended)
        else:
            done = {k: client_update(fed, k, rnd, lr, global_params, opt_states.get(k), defended=k in self.defended,
                                     bn_states=bn_states)
                    for k in ks}
        for k, (uploaded[k], client_loss[k], opt_state_k) in done.items():
            if opt_state_k is not None:
                opt_states[k] = opt_state_k
        record: dict[str, Any] = {"round": rnd, "lr": lr}
        if signals:
            record["client_test_acc"] = record_round(
                fed, self.run_dir, rnd, lr, global_params, uploaded, self.test_x, self.test_y,
                compat_rng=np_rng(cfg.seed, Purpose.COMPAT, rnd),
            )
        if self.canaries is not None:  # after the signals: canaries join the aggregation only
            sent = canary_uploads(self.canaries, rnd, global_params, fed.defense)
            new = aggregate(*with_canaries(uploaded, fed.weights, sent))
        else:
            new = aggregate(uploaded, fed.weights)
        global_params = {**global_params, **new}  # entries kept private (fl.bn: local) stay as they were
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
        bn_states: dict[int, ParamDict] = {}
        for rnd in range(max(redo) + 1):
            params, _ = self.run(rnd, params, opt_states, signals=rnd in redo, evaluate_global=False,
                                 bn_states=bn_states)


def choose_engine(fed: Federation) -> tuple[bool, str]:
    """``fl.vectorize`` for this run: (train each round's clients as one stacked computation?, a line to log once
    or ""). ``on`` where the stacked engine cannot reproduce the loop (dropout, batch-norm, a defense that changes
    local training) is a :class:`ConfigError` naming the reason."""
    cfg, fl = fed.cfg, fed.cfg.fl
    if fl.vectorize == "on":
        ok, why = supports_vectorized(fed.model, fed.defense)
        if not ok:
            raise ConfigError(f"fl.vectorize=on cannot be used: {why}; set fl.vectorize=auto (falls back to "
                              "training the clients one by one) or off")
    n = len(participants(cfg, 0))
    use, why = resolve_vectorize(fl.vectorize, fed.model, fed.defense, fed.data.input_shape, fl.batch_size, n,
                                 module_device(fed.model))
    if use:
        why = f"fl.vectorize={fl.vectorize}: training the {n} clients of each round as one stacked computation"
    return use, why


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


def _prepare(
    cfg: ExperimentConfig, run_dir: Path
) -> tuple[Federation, list[int], tuple[bool, str], CanaryPlan | None]:
    """Check or create the run directory; the federation, the rounds to record, :func:`choose_engine`'s
    answer and the canary clients (checked before the run directory is touched)."""
    resuming = (run_dir / "config.yaml").is_file()
    if resuming:
        check_same_config(run_dir, cfg)
    else:
        refuse_orphaned_results(run_dir)
    fed = build_federation(cfg, run_dir if resuming else None)
    place_model(fed)
    engine = choose_engine(fed)
    canaries = plan_canary_clients(cfg, fed.defense)
    if canaries is not None and any(True for _ in fed.model.buffers()):
        raise ConfigError(f"audit.canary_clients: model '{cfg.model.name}' has buffers (BatchNorm), which canary "
                          "clients do not support yet; use a model without BatchNorm or set audit.canary_clients=0")
    recorded = cfg.signals.recorded_rounds(cfg.fl.rounds)
    (complete_run_dir if resuming else init_run_dir)(run_dir, cfg, fed, recorded)
    return fed, recorded, engine, canaries


def place_model(fed: Federation) -> None:
    """Move the federation's model to ``cfg.device`` (TF32 off; :func:`fedleak.device.setup_device`). The model is
    built and initialised on the CPU first, so its initial parameters do not depend on the device. A defense whose
    local training step draws noise inside the step (DP-SGD) runs on the CPU only: a :class:`ConfigError`."""
    device = setup_device(fed.cfg.device, "device")
    if device.type != "cpu" and "training_step" in local_training_hooks(fed.defense):
        raise ConfigError(f"defense '{fed.defense.name}' replaces the local training step and runs on the CPU only; "
                          "use --device cpu (or device: cpu)")
    fed.model.to(device)


def _train_locked(cfg: ExperimentConfig, run_dir: Path, quiet: bool, stop_after: int | None) -> Path:
    if cfg.fl.threads:
        torch.set_num_threads(cfg.fl.threads)
    fed, recorded, (vectorized, why), canaries = _prepare(cfg, run_dir)
    if why and not quiet:  # once per run, not per round
        print(f"[fedleak] {cfg.name}: {why}", file=sys.stderr, flush=True)
    initial = get_params(fed.model)
    ck = load_checkpoint(run_dir, fed.model, cfg.fl.rounds)
    start, global_params, opt_states, bn_states = (0, initial, {}, {}) if ck is None else (ck[0] + 1, *ck[1:])
    _truncate_metrics(run_dir, start)
    rounds = _Rounds(fed, run_dir, recorded, vectorized, canaries)
    redo = [r for r in recorded if r < start and not store.round_path(run_dir, r).is_file()]
    if redo:
        rounds.replay(initial, redo, quiet)
    end = cfg.fl.rounds if stop_after is None else min(cfg.fl.rounds, start + stop_after)
    saved, rnd = start, start  # rounds < saved are in the checkpoint
    try:
        with RoundProgress(total=cfg.fl.rounds, start=start, quiet=quiet, name=cfg.name) as progress:
            for rnd in range(start, end):
                global_params, record = rounds.run(
                    rnd, global_params, opt_states, signals=rnd in recorded, evaluate_global=True, bn_states=bn_states
                )
                store.append_metrics(run_dir, record)
                if (rnd + 1) % cfg.output.checkpoint_every == 0 or rnd == end - 1:
                    save_checkpoint(run_dir, rnd, global_params, opt_states, bn_states)
                    saved = rnd + 1
                progress.update(rnd, record)
        if end == cfg.fl.rounds:
            save_final_model(run_dir, global_params)
            if canaries is not None:
                write_evidence(run_dir, canaries, initial, global_params, cfg.fl.rounds)
    except store.StoreError as e:  # a write failed (disk full, read-only): say what is kept
        kept = f"rounds 0-{saved - 1} are saved and" if saved else "no round is saved yet;"
        then = f"resumes at round {saved}" if saved else "starts over"
        raise store.StoreError(
            f"{e} — training stopped in round {rnd}; {kept} `fedleak train` with the same --out {then} once that "
            "is fixed"
        ) from None
    return run_dir


def _truncate_metrics(run_dir: Path, start: int) -> None:
    """Drop metric lines of rounds >= start (written before a crash, redone on resume)."""
    rows = [r for r in store.read_metrics(run_dir) if r.get("round", -1) < start]
    store.atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


__all__ = ["choose_engine", "train"]
