"""ServerApp: Flower's FedAvg -- plus the one fedleak line that turns it into an auditing server."""

from __future__ import annotations

import os

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedleak.flower import AuditStrategy, FlowerAudit

from .task import load_cfg, make_model

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = load_cfg()
    num_rounds = int(context.run_config.get("num-server-rounds", os.environ.get("FEDLEAK_FLOWER_ROUNDS", cfg.fl.rounds)))
    run_dir = str(context.run_config.get("fedleak-out", os.environ.get("FEDLEAK_FLOWER_OUT", "runs/flower-digits")))

    model = make_model(cfg)
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=cfg.partition.num_clients)
    # --- fedleak: record what this server sees (global model, every client's model) into run_dir ---
    strategy = AuditStrategy(strategy, FlowerAudit(cfg, run_dir, num_rounds=num_rounds))

    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=num_rounds,
        train_config=ConfigRecord({"lr": cfg.fl.lr, "local-epochs": 2, "batch-size": 16}),
    )
