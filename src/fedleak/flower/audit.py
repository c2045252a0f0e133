"""The honest-but-curious server's notebook: what a Flower server observes, written as a fedleak run.

This module does not import ``flwr``; the Flower strategy wrappers (``fedleak.flower.strategy`` for the
Message API, ``fedleak.flower.legacy`` for ``aggregate_fit``) only translate Flower records into the
two calls below, so the run directory is produced by the same code as ``fedleak train``:

- ``global_sent(round, params, lr)``: the global model the server sent in round ``round`` (0-based);
- ``round_finished(round, uploads, aggregate, client_metrics)``: every client's returned model, keyed by
  client id (= Flower partition id), and the model the wrapped strategy aggregated. On recorded rounds the
  per-sample signals are computed by ``fedleak.fl.record.record_round`` (the engine's own code); after
  the last round the aggregate is saved as ``final_model.pt``.

Signals are computed on what the server receives; with Flower DP wrappers, ``LocalDpMod`` or SecAgg+ that
is something different from the client's raw update (see docs/flower.md).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedleak.config import ConfigError, ExperimentConfig, load_config, parse_config
from fedleak.data.base import Dataset
from fedleak.defenses import build_defense
from fedleak.fl.local import ParamDict, evaluate
from fedleak.fl.schedule import lr_at
from fedleak.signals import store
from fedleak.signals.candidates import build_candidates

PARTITION_KEY = "partition-id"
"""MetricRecord key under which a ClientApp reports its partition id (the fedleak client id)."""

logger = logging.getLogger("fedleak.flower")

__all__ = [
    "FlowerAudit", "PARTITION_KEY", "aggregate_only", "custom_federation", "params_from_arrays", "refuse_buffers",
]


def refuse_buffers(model: torch.nn.Module, name: str) -> None:
    """The Flower apps ship parameters only: a model with buffers (BatchNorm running statistics) is refused."""
    buffers = [n for n, _ in model.named_buffers()]
    if buffers:
        raise ConfigError(
            f"model {name!r} has buffers ({buffers[0]}: BatchNorm running statistics), which the Flower apps do not "
            "carry; train it with `fedleak train` (in-process engine), or use a model without BatchNorm"
        )


def refuse_canary_clients(cfg: ExperimentConfig) -> None:
    """Canary clients join the in-process engine's aggregation only; a Flower federation refuses them."""
    if cfg.audit.canary_clients:
        raise ConfigError(
            f"audit.canary_clients={cfg.audit.canary_clients}: canary clients join the aggregation of the "
            "in-process engine only; use `fedleak train` for the client-level audit, or set audit.canary_clients=0"
        )


def _with_rounds(cfg: ExperimentConfig, num_rounds: int | None) -> ExperimentConfig:
    if num_rounds is None or num_rounds == cfg.fl.rounds:
        return cfg
    raw = cfg.model_dump(mode="json")
    raw["fl"]["rounds"] = int(num_rounds)
    return parse_config(raw, "flower audit")


def custom_federation(cfg: ExperimentConfig, data: Dataset, clients: Sequence[np.ndarray], model: torch.nn.Module):
    """A ``Federation`` over your own data split, for a Flower app that does not load data through fedleak.

    ``data``: a ``fedleak.data.base.Dataset`` holding every client's training rows (``train``) and held-out
    rows (``test``), pixels in [0, 1], with the ``mean``/``std`` your ClientApp normalises with;
    ``clients[k]``: the ``data.train`` rows of partition ``k``; ``model``: the architecture your ClientApp
    trains (its parameter names must match the ArrayRecord keys). The candidate set is drawn from
    ``cfg.candidates`` exactly as ``fedleak train`` draws it.
    """
    from fedleak.fl.federation import Federation
    from fedleak.seeding import Purpose, np_rng

    clients = [np.asarray(c, np.int64) for c in clients]
    if len(clients) != cfg.partition.num_clients:
        raise ConfigError(
            f"{len(clients)} client index lists given but partition.num_clients={cfg.partition.num_clients}"
        )
    ids, owner = build_candidates(cfg.candidates, clients, len(data.train), len(data.test), np_rng(cfg.seed, Purpose.CANDIDATES))
    weights = np.array([len(c) for c in clients], dtype=np.float64)
    return Federation(cfg, data, clients, ids, owner, model, build_defense(cfg.defense, cfg), weights)


def _tensor(v: Any) -> torch.Tensor:
    """A copied CPU tensor from a tensor, an ndarray or a Flower ``Array`` (anything with ``.numpy()``)."""
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().clone()
    if not isinstance(v, np.ndarray) and callable(getattr(v, "numpy", None)):
        v = v.numpy()
    return torch.tensor(np.asarray(v))


def params_from_arrays(
    model: torch.nn.Module, arrays: Mapping[str, Any] | Sequence[Any], what: str = "model"
) -> ParamDict:
    """Name -> float tensor (copied) of ``model``'s parameters from named arrays or a positional list.

    Named: the keys must include every parameter name (extra keys, e.g. buffers, are ignored). Positional
    (a list, or keys "0", "1", ... as ``ArrayRecord(list_of_ndarrays)`` makes): ``state_dict()`` order.
    """
    names = [n for n, _ in model.named_parameters()]
    if isinstance(arrays, Mapping):
        keys = list(arrays.keys())
        if all(n in arrays for n in names):
            return _check_shapes(model, {n: _tensor(arrays[n]) for n in names}, what)
        if keys != [str(i) for i in range(len(keys))]:
            missing = [n for n in names if n not in arrays][:5]
            raise ConfigError(
                f"{what}: arrays lack the model's parameters {missing} (got keys {keys[:5]}); build the "
                "ArrayRecord from model.state_dict() of the configured model"
            )
        seq = [arrays[k] for k in keys]
    else:
        seq = list(arrays)
    sd_names = list(model.state_dict().keys())
    if len(seq) != len(sd_names):
        raise ConfigError(
            f"{what}: {len(seq)} positional arrays but the configured model's state_dict has {len(sd_names)} entries"
        )
    by_name = dict(zip(sd_names, seq))
    return _check_shapes(model, {n: _tensor(by_name[n]) for n in names}, what)


def _check_shapes(model: torch.nn.Module, params: ParamDict, what: str) -> ParamDict:
    for n, p in model.named_parameters():
        if tuple(params[n].shape) != tuple(p.shape):
            raise ConfigError(f"{what}: array for '{n}' has shape {tuple(params[n].shape)}, model has {tuple(p.shape)}")
    return params


def aggregate_only(uploads: Mapping[int, ParamDict], global_params: ParamDict) -> bool:
    """True when 2+ clients 'returned' one bit-identical model that is not the global model.

    That is what a server behind secure aggregation is handed (Flower's SecAgg+ workflow gives every
    client's FitRes the unmasked aggregate); signals computed from it would credit every client with
    every member of the federation.
    """
    if len(uploads) < 2:
        return False
    vals = list(uploads.values())
    first = vals[0]
    same = all(all(torch.equal(v[n], first[n]) for n in first) for v in vals[1:])
    return same and not all(torch.equal(first[n], global_params[n]) for n in first)


class FlowerAudit:
    """Records a Flower federation into a fedleak run directory (``fedleak attack``/``report`` read it).

    Args:
        cfg: experiment config (object, YAML path or preset name) describing the data, the partition (client
            ``k`` = Flower partition ``k``), the model, the candidate set and which rounds to record.
        run_dir: the run directory to create (must not hold recorded rounds already).
        federation: use this ``Federation`` (e.g. from :func:`custom_federation`) instead of building one
            from ``cfg`` with ``fedleak.fl.federation.build_federation``.
        num_rounds: the Flower app's number of rounds when it differs from ``cfg.fl.rounds``.
    """

    def __init__(
        self,
        cfg: ExperimentConfig | str | Path,
        run_dir: str | Path,
        *,
        federation: Any = None,
        num_rounds: int | None = None,
        engine: str = "flower",
    ) -> None:
        from fedleak.fl.federation import build_federation, train_eval_subset
        from fedleak.fl.rundir import init_run_dir

        if not isinstance(cfg, ExperimentConfig):
            cfg = load_config(cfg)
        cfg = _with_rounds(cfg if federation is None else federation.cfg, num_rounds)
        refuse_canary_clients(cfg)
        self.run_dir = Path(run_dir)
        if store.recorded_rounds(self.run_dir) or store.read_metrics(self.run_dir):
            raise ConfigError(
                f"{self.run_dir} already holds a run; a Flower federation cannot be resumed, "
                "use another --out or delete that directory"
            )
        fed = build_federation(cfg) if federation is None else federation
        refuse_buffers(fed.model, cfg.model.name)
        fed.cfg = cfg
        self.fed, self.cfg = fed, cfg
        self.recorded = cfg.signals.recorded_rounds(cfg.fl.rounds)
        init_run_dir(self.run_dir, cfg, fed, self.recorded)
        meta = store.read_meta(self.run_dir)
        meta["engine"] = engine
        try:
            import importlib.metadata as md

            meta.setdefault("versions", {})["flwr"] = md.version("flwr")
        except Exception:  # noqa: BLE001 - flwr absent (tests of this module without the extra)
            pass
        store.atomic_write_text(self.run_dir / "meta.json", json.dumps(meta, indent=2))
        store.atomic_write_text(self.run_dir / "metrics.jsonl", "")
        d = fed.data
        self.test_x, self.test_y = d.normalize(d.test.x), d.test.y
        self.train_eval = train_eval_subset(fed) if cfg.fl.eval_train_every else None
        self._initial = {n: p.detach().clone() for n, p in fed.model.named_parameters()}
        self._global: dict[int, ParamDict] = {}
        self._lr: dict[int, float] = {}
        self._t0: dict[int, float] = {}
        self.last_global: ParamDict | None = None

    # -- conversion -------------------------------------------------------------------------------
    def to_params(self, arrays: Mapping[str, Any] | Sequence[Any], what: str = "model") -> ParamDict:
        return params_from_arrays(self.fed.model, arrays, what)

    def initial_params(self) -> ParamDict:
        """The engine's seeded initial global model (what ``fedleak train`` starts from)."""
        return {n: v.clone() for n, v in self._initial.items()}

    # -- observations -----------------------------------------------------------------------------
    def global_sent(self, rnd: int, params: ParamDict, lr: float | None = None) -> None:
        """The global model the server sends in round ``rnd`` (0-based); ``lr``: the lr it told clients."""
        if rnd < 0:
            raise ValueError(f"round must be >= 0, got {rnd}")
        # only the current round is kept
        self._global = {rnd: params}
        self._lr = {rnd: float(lr) if lr is not None else lr_at(self.cfg.fl.schedule, self.cfg.fl.lr, rnd, self.cfg.fl.rounds)}
        self._t0 = {rnd: time.time()}

    def round_finished(
        self,
        rnd: int,
        uploads: Mapping[int, ParamDict],
        aggregate: ParamDict | None,
        client_metrics: Mapping[int, Mapping[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Record round ``rnd``: signals (on recorded rounds), utility of the aggregate, a metrics line."""
        from fedleak.fl.checkpoint import save_final_model
        from fedleak.fl.record import record_round
        from fedleak.seeding import Purpose, np_rng

        if rnd not in self._global:
            raise RuntimeError(f"round {rnd}: no global model was recorded before the clients' replies")
        K = self.cfg.partition.num_clients
        bad = [k for k in uploads if not 0 <= int(k) < K]
        if bad:
            raise ConfigError(
                f"round {rnd}: client ids {bad} outside 0..{K - 1}; the ClientApps' partition ids must match "
                f"partition.num_clients={K} of the fedleak config"
            )
        uploads = {int(k): v for k, v in uploads.items()}
        gp, lr = self._global[rnd], self._lr[rnd]
        rec: dict[str, Any] = {"round": rnd, "lr": lr}
        if aggregate_only(uploads, gp):
            logger.warning(
                "fedleak round %s: the %s client models are identical and differ from the global model: the "
                "server sees only an aggregate (secure aggregation); no per-client signals recorded",
                rnd, len(uploads),
            )
            rec["aggregate_only"] = True
            uploads = {}
        if rnd in self.recorded and uploads:
            rec["client_test_acc"] = record_round(
                self.fed, self.run_dir, rnd, lr, gp, uploads, self.test_x, self.test_y,
                compat_rng=np_rng(self.cfg.seed, Purpose.COMPAT, rnd),
            )
        if aggregate is not None:
            model, bs = self.fed.model, self.cfg.fl.eval_batch_size
            rec["test_acc"], rec["test_loss"] = evaluate(model, aggregate, self.test_x, self.test_y, bs)
            every = self.cfg.fl.eval_train_every
            if self.train_eval is not None and (rnd % every == 0 or rnd == self.cfg.fl.rounds - 1):
                rec["train_acc"], rec["train_loss"] = evaluate(model, aggregate, *self.train_eval, bs)
            self.last_global = aggregate
        losses = {k: float(m["train_loss"]) for k, m in (client_metrics or {}).items() if "train_loss" in m}
        rec["client_train_loss"] = {int(k): losses[k] for k in sorted(losses)}
        eps = self.fed.defense.privacy_spent(rnd)
        if eps:
            rec["privacy"] = eps
        rec["time"] = time.time() - self._t0.get(rnd, time.time())
        store.append_metrics(self.run_dir, rec)
        if rnd == self.cfg.fl.rounds - 1 and aggregate is not None:
            save_final_model(self.run_dir, aggregate)
        return rec
