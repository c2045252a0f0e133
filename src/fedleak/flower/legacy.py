"""``LegacyAuditStrategy``: the same audit for Flower's legacy strategy API (``configure_fit``/``aggregate_fit``).

For apps still built on ``flwr.server.strategy`` (``ServerAppComponents``, ``start_server``, or the
``DefaultWorkflow``/``SecAggPlusWorkflow`` workflows)::

    from flwr.server.strategy import FedAvg
    strategy = LegacyAuditStrategy(FedAvg(...), FlowerAudit("cfg.yaml", "runs/audit", num_rounds=10))

Parameters travel as a positional list of ndarrays; they are matched to the configured model in
``state_dict()`` order (what ``[v.cpu().numpy() for v in model.state_dict().values()]`` produces).
Behind ``SecAggPlusWorkflow`` every ``FitRes`` carries the same unmasked aggregate: the audit notices and
records no per-client signals for such rounds (see docs/flower.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from flwr.common import FitIns, FitRes, Parameters, Scalar, parameters_to_ndarrays
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy

from fedleak.config import ConfigError
from fedleak.flower.audit import PARTITION_KEY, FlowerAudit


def legacy_client_id(
    proxy: ClientProxy,
    res: FitRes,
    client_ids: Mapping[Any, int] | Callable[[ClientProxy, FitRes], int] | None = None,
    key: str = PARTITION_KEY,
) -> int:
    """``res.metrics[key]``, else ``client_ids`` looked up by node id, then by cid."""
    if key in res.metrics:
        return int(res.metrics[key])
    if callable(client_ids):
        return int(client_ids(proxy, res))
    if client_ids is not None:
        for ident in (getattr(proxy, "node_id", None), proxy.cid):
            if ident in client_ids:
                return int(client_ids[ident])
    raise ConfigError(
        f"FitRes of client {proxy.cid} does not say which partition it trains on: return "
        f"metrics={{'{key}': partition_id, ...}} from fit(), or give LegacyAuditStrategy(client_ids=...)"
    )


class LegacyAuditStrategy(Strategy):
    """Honest-but-curious wrapper of a legacy ``flwr.server.strategy.Strategy`` (see module docstring)."""

    def __init__(
        self,
        strategy: Strategy,
        audit: FlowerAudit,
        *,
        client_ids: Mapping[Any, int] | Callable[[ClientProxy, FitRes], int] | None = None,
        client_id_key: str = PARTITION_KEY,
    ) -> None:
        super().__init__()
        self.strategy = strategy
        self.audit = audit
        self.client_ids = client_ids
        self.client_id_key = client_id_key

    def __getattr__(self, name: str) -> Any:
        if name == "strategy":
            raise AttributeError(name)
        return getattr(self.strategy, name)

    def __repr__(self) -> str:
        return f"LegacyAuditStrategy({self.strategy!r}, run_dir={str(self.audit.run_dir)!r})"

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return self.strategy.initialize_parameters(client_manager)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        ins = self.strategy.configure_fit(server_round, parameters, client_manager)
        sent = ins[0][1].parameters if ins else parameters
        lr = ins[0][1].config.get("lr") if ins else None
        lr = float(lr) if isinstance(lr, (int, float)) and not isinstance(lr, bool) else None
        self.audit.global_sent(server_round - 1, self.audit.to_params(parameters_to_ndarrays(sent), "global model"), lr)
        return ins

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        rnd = server_round - 1
        uploads, metrics, keyed = {}, {}, []
        for proxy, res in results:
            k = legacy_client_id(proxy, res, self.client_ids, self.client_id_key)
            if k in uploads:
                raise ConfigError(f"round {rnd}: two results claim client id {k}")
            uploads[k] = self.audit.to_params(parameters_to_ndarrays(res.parameters), f"result of client {k}")
            metrics[k] = dict(res.metrics)
            keyed.append((k, (proxy, res)))
        keyed.sort(key=lambda t: t[0])
        params, agg_metrics = self.strategy.aggregate_fit(server_round, [r for _, r in keyed], failures)
        aggregate = self.audit.to_params(parameters_to_ndarrays(params), "aggregate") if params is not None else None
        self.audit.round_finished(rnd, uploads, aggregate, metrics)
        return params, agg_metrics

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: ClientManager):
        return self.strategy.configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(self, server_round: int, results, failures):
        return self.strategy.aggregate_evaluate(server_round, results, failures)

    def evaluate(self, server_round: int, parameters: Parameters):
        return self.strategy.evaluate(server_round, parameters)
