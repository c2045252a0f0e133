"""ClientApp: ordinary local SGD on this node's partition of the digits data.

Two things make it auditable by fedleak: it trains on the partition fedleak's config defines
(``load_partition``), and its reply's MetricRecord says which partition that is (``partition-id``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedleak.flower import load_partition

from .task import load_cfg, make_model

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = load_cfg()
    pid = int(context.node_config["partition-id"])
    x, y, normalize = load_partition(cfg, pid)  # pixels in [0, 1], labels, the dataset's normalisation
    conf = msg.content["config"]
    lr, epochs, batch = float(conf["lr"]), int(conf["local-epochs"]), int(conf["batch-size"])

    torch.set_num_threads(1)
    model = make_model(cfg)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(1000 * int(conf["server-round"]) + pid)
    losses = []
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        for s in range(0, len(y), batch):
            idx = perm[s : s + batch]
            opt.zero_grad()
            loss = F.cross_entropy(model(normalize(x[idx])), y[idx])
            loss.backward()
            opt.step()
            losses.append(loss.item())

    metrics = MetricRecord({"num-examples": len(y), "partition-id": pid, "train_loss": sum(losses) / len(losses)})
    return Message(content=RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg)
