"""``fedleak flower-sim``: run a fedleak experiment config through Flower's simulation engine.

The pieces are those of a normal Flower app, built from one ``ExperimentConfig``:

- :func:`client_app` -- a ``ClientApp`` whose ``train`` handler runs ``fedleak.fl.round.client_update``
  (``local_update`` with the engine's (seed, round, client, purpose) generators) on its partition and replies
  with its model, ``num-examples`` (the partition size, the engine's FedAvg weight), ``partition-id`` and
  ``train_loss``; a ``query`` handler reports the partition id.
- :class:`EngineFedAvg` -- Flower's ``FedAvg`` whose client sampling and learning rate follow the engine
  (``participation`` with the engine's sampling stream, ``lr`` of ``fl.schedule`` sent in the config).
- :func:`server_app` -- a ``ServerApp`` that maps nodes to partitions, wraps ``EngineFedAvg`` in
  :class:`~fedleak.flower.strategy.AuditStrategy` and starts from the engine's seeded initial model.

Same config and seed as ``fedleak train``, so the run directories can be compared (tests/flower/test_flower_sim.py).
"""

from __future__ import annotations

import io
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedleak.config import ConfigError, ExperimentConfig, dump_config
from fedleak.fl.schedule import lr_at
from fedleak.flower.audit import PARTITION_KEY, FlowerAudit, params_from_arrays, refuse_buffers
from fedleak.flower.strategy import AuditStrategy

__all__ = [
    "client_app", "server_app", "EngineFedAvg", "EngineAudit", "run_flower_simulation", "check_new_run_dir",
    "load_partition", "partition_map",
]

ROUND_KEY = "fedleak-round"
_OPT_STATE_KEY = "fedleak-optimizer"
_FEDERATIONS: dict[str, Any] = {}  # per process: config YAML -> Federation (ClientApps are re-created per message)


def _federation(cfg: ExperimentConfig):
    from fedleak.fl.federation import build_federation

    key = dump_config(cfg)
    if key not in _FEDERATIONS:
        _FEDERATIONS.clear()
        fed = build_federation(cfg)
        refuse_buffers(fed.model, cfg.model.name)
        _FEDERATIONS[key] = fed
    return _FEDERATIONS[key]


def load_partition(cfg: ExperimentConfig, partition_id: int) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """(x in [0,1], y, normalize) of client ``partition_id`` exactly as the engine splits ``cfg``'s data.

    For your own ClientApp: train on these rows so that the audit's membership labels are true.
    """
    fed = _federation(cfg)
    if not 0 <= partition_id < len(fed.clients):
        raise ConfigError(f"partition id {partition_id} outside 0..{len(fed.clients) - 1}")
    it = torch.as_tensor(np.asarray(fed.clients[partition_id]), dtype=torch.long)
    return fed.data.train.x[it], fed.data.train.y[it], fed.data.normalize


def _partition_id(context: Context) -> int:
    try:
        return int(context.node_config["partition-id"])
    except KeyError:
        raise ConfigError("this ClientApp needs node_config['partition-id'] (set by Flower's simulation engine)") from None


def _scalar(x: Any) -> Any:
    return x[0] if isinstance(x, list) else x


def client_app(cfg: ExperimentConfig) -> ClientApp:
    """A ``ClientApp`` that trains exactly like client ``partition-id`` of the in-process engine."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        from fedleak.fl.round import client_update

        if cfg.fl.threads:
            torch.set_num_threads(cfg.fl.threads)
        fed = _federation(cfg)
        k = _partition_id(context)
        conf = msg.content.config_records.get("config", ConfigRecord())
        rnd = int(_scalar(conf[ROUND_KEY])) if ROUND_KEY in conf else int(_scalar(conf["server-round"])) - 1
        lr = float(_scalar(conf["lr"])) if "lr" in conf else lr_at(cfg.fl.schedule, cfg.fl.lr, rnd, cfg.fl.rounds)
        arrays = next(iter(msg.content.array_records.values()))
        global_params = params_from_arrays(fed.model, arrays.to_torch_state_dict(), "global model")
        opt_state = None
        if not cfg.fl.fresh_optimizer and _OPT_STATE_KEY in context.state:
            blob = context.state[_OPT_STATE_KEY]["state"]
            opt_state = torch.load(io.BytesIO(blob), weights_only=True)
        uploaded, loss, state = client_update(fed, k, rnd, lr, global_params, opt_state)
        if state is not None:
            buf = io.BytesIO()
            torch.save(state, buf)
            context.state[_OPT_STATE_KEY] = ConfigRecord({"state": buf.getvalue()})
        content = RecordDict(
            {
                "arrays": ArrayRecord(uploaded),
                "metrics": MetricRecord(
                    {"num-examples": len(fed.clients[k]), PARTITION_KEY: k, "train_loss": float(loss)}
                ),
            }
        )
        return Message(content=content, reply_to=msg)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        return Message(content=RecordDict({"metrics": MetricRecord({PARTITION_KEY: _partition_id(context)})}), reply_to=msg)

    return app


def partition_map(grid: Grid, num_clients: int, timeout: float = 120.0) -> dict[int, int]:
    """partition id -> node id, asked of every node with a ``query`` message (ClientApps of :func:`client_app`)."""
    t0 = time.time()
    nodes = list(grid.get_node_ids())
    while len(nodes) < num_clients and time.time() - t0 < timeout:
        time.sleep(0.5)
        nodes = list(grid.get_node_ids())
    msgs = [Message(content=RecordDict(), message_type=MessageType.QUERY, dst_node_id=n) for n in nodes]
    out: dict[int, int] = {}
    for r in grid.send_and_receive(msgs, timeout=timeout):
        if r.has_error():
            raise RuntimeError(f"node {r.metadata.src_node_id} failed to report its partition id: {r.error.reason}")
        out[int(_scalar(r.content["metrics"][PARTITION_KEY]))] = r.metadata.src_node_id
    missing = sorted(set(range(num_clients)) - set(out))
    if missing:
        raise RuntimeError(f"no node reported partitions {missing} (got {len(nodes)} nodes for {num_clients} clients)")
    return out


def _train_loss_aggr(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Weighted mean train loss (the default would also 'average' the partition ids)."""
    w = np.array([float(next(iter(r.metric_records.values()))[weight_key]) for r in records])
    loss = np.array([float(next(iter(r.metric_records.values())).get("train_loss", np.nan)) for r in records])
    return MetricRecord({"train_loss": float((w * loss).sum() / w.sum())})


class EngineFedAvg(FedAvg):
    """Flower ``FedAvg`` that samples clients and sets the learning rate as ``fedleak.fl.simulation`` does.

    ``node_of``: partition id -> node id (:func:`partition_map`). Aggregation is Flower's own
    (``num-examples``-weighted mean of the replies, in the order ``AuditStrategy`` passes them: client id).
    """

    def __init__(self, cfg: ExperimentConfig, node_of: dict[int, int]) -> None:
        K = cfg.partition.num_clients
        super().__init__(
            fraction_train=cfg.fl.participation,
            fraction_evaluate=0.0,
            min_train_nodes=1,
            min_evaluate_nodes=0,
            min_available_nodes=K,
            train_metrics_aggr_fn=_train_loss_aggr,
        )
        self.cfg, self.node_of = cfg, dict(node_of)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        from fedleak.seeding import participants

        rnd = server_round - 1
        fl = self.cfg.fl
        conf = ConfigRecord(dict(config))
        conf["server-round"] = server_round
        conf[ROUND_KEY] = rnd
        conf["lr"] = float(lr_at(fl.schedule, fl.lr, rnd, fl.rounds))
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: conf})
        return [
            Message(content=record, message_type=MessageType.TRAIN, dst_node_id=self.node_of[k])
            for k in participants(self.cfg, rnd)
        ]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's FedAvg, but a failed ClientApp stops the run (the engine has no dropouts to mirror)."""
        replies = list(replies)
        part = {v: k for k, v in self.node_of.items()}
        for r in replies:
            if r.has_error():
                k = part.get(r.metadata.src_node_id, "?")
                raise RuntimeError(f"round {server_round - 1}: the ClientApp of partition {k} failed: {r.error.reason}")
        return super().aggregate_train(server_round, replies)


class EngineAudit(FlowerAudit):
    """``FlowerAudit`` that also mirrors the defense bookkeeping the engine's shared defense object does.

    In ``fedleak train`` one defense object serves every client, so e.g. DP-SGD's accountant learns the
    clients' data sizes from ``select_data``. In Flower each ClientApp holds its own copy; the server replays
    ``select_data`` (same generator, same client order, no training) so ``privacy_spent`` matches.
    """

    def round_finished(self, rnd, uploads, aggregate, client_metrics=None):
        from fedleak.seeding import Purpose, np_rng

        cfg, fed = self.cfg, self.fed
        defended = set(range(cfg.partition.num_clients)) if cfg.defense.clients is None else set(cfg.defense.clients)
        for k in sorted(int(k) for k in uploads):
            if k in defended:
                fed.defense.select_data(fed.clients[k], rnd, np_rng(cfg.seed, Purpose.DATA_SELECT, rnd, k))
        return super().round_finished(rnd, uploads, aggregate, client_metrics)


def server_app(cfg: ExperimentConfig, run_dir: str | Path) -> ServerApp:
    """A ``ServerApp``: engine-faithful FedAvg under the fedleak audit, writing ``run_dir``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        if cfg.fl.threads:  # the signal GEMMs run here; thread counts change float rounding (as in `train`)
            torch.set_num_threads(cfg.fl.threads)
        audit = EngineAudit(cfg, run_dir, engine="flower-sim")
        node_of = partition_map(grid, cfg.partition.num_clients)
        strategy = AuditStrategy(EngineFedAvg(cfg, node_of), audit)
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(audit.initial_params()),
            num_rounds=cfg.fl.rounds,
            train_config=ConfigRecord(),
        )

    return app


def run_flower_simulation(
    cfg: ExperimentConfig, run_dir: str | Path, *, num_cpus: int | None = None, quiet: bool = False
) -> Path:
    """Run ``cfg`` through ``flwr.simulation.run_simulation`` (Ray backend); returns the run directory.

    ``num_cpus``: CPUs Ray may use (one ClientApp per CPU at a time; default: all, at most the number of
    clients). Raises whatever the ServerApp raised. ``run_dir`` is locked for the whole simulation and checked
    before Flower and Ray start: another process writing it, or a run already in it, is a one-line error.
    """
    from fedleak.runlock import run_lock

    run_dir = Path(run_dir)
    with run_lock(run_dir, "fedleak flower-sim"):
        check_new_run_dir(cfg, run_dir)
        _simulate(cfg, run_dir, num_cpus, quiet)
    from fedleak.signals.store import read_metrics

    done = {r.get("round") for r in read_metrics(run_dir)}
    if len(done) < cfg.fl.rounds:
        raise RuntimeError(
            f"the Flower simulation stopped after {len(done)} of {cfg.fl.rounds} rounds; see the log above"
        )
    return run_dir


def check_new_run_dir(cfg: ExperimentConfig, run_dir: Path) -> None:
    """Refuse a ``run_dir`` that holds a run (a Flower federation cannot be resumed): what ``FlowerAudit``
    would find only once Flower and Ray are up, found in a moment."""
    from fedleak.fl.rundir import check_same_config
    from fedleak.flower.audit import refuse_canary_clients
    from fedleak.signals import store

    refuse_canary_clients(cfg)

    if (run_dir / "config.yaml").is_file():
        check_same_config(run_dir, cfg)  # another config: name the keys that differ
    if store.recorded_rounds(run_dir) or store.read_metrics(run_dir):
        raise ConfigError(
            f"{run_dir} already holds a run; a Flower federation cannot be resumed, "
            "use another --out or delete that directory"
        )


def _simulate(cfg: ExperimentConfig, run_dir: Path, num_cpus: int | None, quiet: bool) -> None:
    import warnings

    from flwr.simulation import run_simulation

    K = cfg.partition.num_clients
    ncpu = num_cpus or max(1, min(os.cpu_count() or 1, K))
    backend = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": ncpu, "num_gpus": 0, "include_dashboard": False, "log_to_driver": not quiet},
    }
    flwr_logger = logging.getLogger("flwr")
    old = flwr_logger.level
    if quiet:
        flwr_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            if quiet:
                warnings.simplefilter("ignore")
            run_simulation(server_app(cfg, run_dir), client_app(cfg), num_supernodes=K, backend_config=backend)
    finally:
        flwr_logger.setLevel(old)
