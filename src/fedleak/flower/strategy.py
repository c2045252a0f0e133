"""``AuditStrategy``: wrap any Flower Message-API strategy (``flwr.serverapp.strategy``) as an auditing server.

::

    from flwr.serverapp.strategy import FedAvg
    from fedleak.flower import AuditStrategy, FlowerAudit

    audit = FlowerAudit("my-fedleak-config.yaml", "runs/flower-audit", num_rounds=num_rounds)
    strategy = AuditStrategy(FedAvg(fraction_evaluate=0.0), audit)
    strategy.start(grid=grid, initial_arrays=arrays, num_rounds=num_rounds)

Each round the wrapper notes the global ArrayRecord the wrapped strategy sends (``configure_train``) and every
client's returned ArrayRecord (``aggregate_train``), identifies the client by the ``partition-id`` entry of
its reply's MetricRecord (or a node-id mapping), and hands the replies to the wrapped strategy in client-id
order, so the aggregate no longer depends on the order in which replies arrive. Training, sampling and
aggregation stay the wrapped strategy's; evaluation calls pass straight through.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from logging import INFO
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedleak.config import ConfigError
from fedleak.flower.audit import PARTITION_KEY, FlowerAudit

try:  # flwr's logger; plain logging if its location moves
    from flwr.supercore import log
except ImportError:  # pragma: no cover
    import logging

    def log(level: int, msg: str, *args: Any) -> None:
        logging.getLogger("fedleak.flower").log(level, msg, *args)


ClientIdSource = Mapping[int, int] | Callable[[Message], int] | None


def _array_record(content: Any, key: str | None, what: str) -> ArrayRecord:
    recs = content.array_records
    if key is not None and key in recs:
        return recs[key]
    if len(recs) == 1:
        return next(iter(recs.values()))
    raise ConfigError(f"{what}: expected one ArrayRecord (or one named '{key}'), got {list(recs)}")


def _metrics(content: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for rec in content.metric_records.values():
        out.update(dict(rec))
    return out


def _lr_from(messages: list[Message]) -> float | None:
    for m in messages:
        for rec in m.content.config_records.values():
            v = rec.get("lr")
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return float(v)
    return None


def client_id_of(msg: Message, client_ids: ClientIdSource = None, key: str = PARTITION_KEY) -> int:
    """The fedleak client id of a reply: its MetricRecord's ``key`` entry, else ``client_ids`` (node -> id)."""
    for rec in msg.content.metric_records.values():
        if key in rec:
            v = rec[key]
            return int(v[0] if isinstance(v, list) else v)
    node = msg.metadata.src_node_id
    if callable(client_ids):
        return int(client_ids(msg))
    if client_ids is not None and node in client_ids:
        return int(client_ids[node])
    raise ConfigError(
        f"reply from node {node} does not say which partition it trains on: add "
        f"'{key}': int(context.node_config['partition-id']) to the MetricRecord the ClientApp returns, "
        "or give AuditStrategy(client_ids={node_id: partition_id})"
    )


class AuditStrategy(Strategy):
    """An honest-but-curious server around ``strategy``: records what it observes into ``audit``'s run.

    Args:
        strategy: any Message-API strategy whose ``aggregate_train`` receives the clients' models (FedAvg,
            FedProx, FedAvgM, FedAdam, ..., or a DP wrapper around one).
        audit: the :class:`FlowerAudit` that writes the run directory.
        client_ids: node id -> client id (mapping or ``f(reply) -> id``) for replies that carry no
            ``partition-id`` metric.
        client_id_key: the MetricRecord key holding the partition id.
    """

    def __init__(
        self,
        strategy: Strategy,
        audit: FlowerAudit,
        *,
        client_ids: ClientIdSource = None,
        client_id_key: str = PARTITION_KEY,
    ) -> None:
        super().__init__()
        self.strategy = strategy
        self.audit = audit
        self.client_ids = client_ids
        self.client_id_key = client_id_key
        self.arrayrecord_key = getattr(strategy, "arrayrecord_key", "arrays")

    def __getattr__(self, name: str) -> Any:  # weighted_by_key, fraction_train, ... of the wrapped strategy
        if name == "strategy":
            raise AttributeError(name)
        return getattr(self.strategy, name)

    def summary(self) -> None:
        log(INFO, "\t├──> fedleak audit: run directory %s, recorded rounds %s", self.audit.run_dir, self.audit.recorded)
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        sent = arrays
        if messages:  # what actually goes out (a wrapper may have changed it)
            try:
                sent = _array_record(messages[0].content, self.arrayrecord_key, "configure_train")
            except ConfigError:
                sent = arrays
        self.audit.global_sent(server_round - 1, self.audit.to_params(sent, "global model"), _lr_from(messages))
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        rnd = server_round - 1
        replies = list(replies)
        uploads, metrics, keyed = {}, {}, []
        for msg in replies:
            if msg.has_error():
                keyed.append((float("inf"), msg))
                continue
            k = client_id_of(msg, self.client_ids, self.client_id_key)
            if k in uploads:
                raise ConfigError(f"round {rnd}: two replies claim client id {k}")
            arrays = _array_record(msg.content, self.arrayrecord_key, f"reply of client {k}")
            uploads[k] = self.audit.to_params(arrays, f"reply of client {k}")
            metrics[k] = _metrics(msg.content)
            keyed.append((k, msg))
        keyed.sort(key=lambda t: t[0])
        agg_arrays, agg_metrics = self.strategy.aggregate_train(server_round, [m for _, m in keyed])
        aggregate = self.audit.to_params(agg_arrays, "aggregate") if agg_arrays is not None else None
        self.audit.round_finished(rnd, uploads, aggregate, metrics)
        return agg_arrays, agg_metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

