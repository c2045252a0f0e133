"""Accuracy cost of a gradient transform in FedAvg training (Soteria's "without sacrificing accuracy" claim).

A compact, self-contained FedAvg loop: every round each client starts from the global model, runs
``local_steps`` SGD steps on its IID shard, and shares ``Δ_k = θ_global − θ_k`` *after* the transform (Soteria's
mask is computed on the client's batch of that round at the global parameters; pruning / DP act on ``Δ_k``);
the server averages the shared updates. With ``local_steps=1`` the shared update is the (defended) FedSGD
gradient times the learning rate, the setting the inversion attacks target.

Command line (writes ``DIR/accuracy.json``)::

    python -m fedleak.defenses.gradient.fedavg_eval --dataset cifar10 --data-dir DIR \\
        --defense soteria --rate 60 --rounds 30 --out DIR
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from fedleak.defenses.gradient.base import GradientContext, GradientTransform


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    correct = sum(int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum()) for i in range(0, len(y), batch))
    return correct / max(len(y), 1)


def fedavg_with_transform(
    model: nn.Module,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    transform: GradientTransform | None,
    *,
    clients: int = 10,
    rounds: int = 20,
    local_steps: int = 5,
    batch_size: int = 32,
    lr: float = 0.1,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Train ``model`` (in place) with FedAvg; inputs already in model-input space. Returns the accuracy curve."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(train_y), generator=g)
    shards = list(torch.tensor_split(perm, clients))
    names = [n for n, _ in model.named_parameters()]
    history, pruned = [], []
    local = copy.deepcopy(model)
    for rnd in range(rounds):
        global_state = {n: p.detach().clone() for n, p in model.named_parameters()}
        agg = {n: torch.zeros_like(p) for n, p in global_state.items()}
        for k in range(clients):
            with torch.no_grad():
                for n, p in local.named_parameters():
                    p.copy_(global_state[n])
            local.train()
            opt = torch.optim.SGD(local.parameters(), lr=lr)
            idx_all = shards[k][torch.randperm(len(shards[k]), generator=g)]
            used = []
            for s in range(local_steps):
                idx = idx_all[(torch.arange(batch_size) + s * batch_size) % len(idx_all)]
                used.append(idx)
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(local(train_x[idx]), train_y[idx]).backward()
                opt.step()
            delta = {n: global_state[n] - p.detach() for n, p in local.named_parameters()}
            if transform is not None:
                first = used[0]  # the mask is computed on the client's first batch of the round
                ctx = GradientContext(model=model, x=train_x[first], y=train_y[first], params=global_state,
                                      kind="update" if local_steps > 1 else "gradient")
                delta, info = transform(delta, ctx, g)
                if "pruned_fraction" in info:
                    pruned.append(float(info["pruned_fraction"]))
            for n in names:
                agg[n] += delta[n] / clients
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(global_state[n] - agg[n])
        acc = accuracy(model, test_x, test_y)
        history.append(acc)
        if progress is not None:
            progress(rnd, acc)
    return {"test_accuracy": history, "final_accuracy": history[-1], "best_accuracy": max(history),
            "mean_pruned_fraction": sum(pruned) / len(pruned) if pruned else None}


def main(argv: list[str] | None = None) -> None:
    from fedleak.attacks.inversion.presets import NORMALIZATIONS
    from fedleak.config import DataConfig
    from fedleak.data import load_dataset
    from fedleak.defenses.gradient import build_transform
    from fedleak.models import build_model

    ap = argparse.ArgumentParser(description="FedAvg test accuracy under a gradient transform.")
    ap.add_argument("--dataset", default="cifar10")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--model", default="lenet_soteria")
    ap.add_argument("--defense", default="none", help="none, soteria, prune, prune-global, dp-gaussian, dp-laplace")
    ap.add_argument("--rate", type=float, default=None, help="Soteria / pruning rate in percent.")
    ap.add_argument("--scale", type=float, default=None, help="DP noise scale.")
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--local-steps", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--max-train", type=int, default=None)
    ap.add_argument("--max-test", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    ds = load_dataset(DataConfig(name=a.dataset, data_dir=a.data_dir, normalization="none", max_train=a.max_train,
                                 max_test=a.max_test), a.seed)
    mean, std = NORMALIZATIONS.get(a.dataset, NORMALIZATIONS["none"])
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    params: dict[str, Any] = {}
    if a.rate is not None:
        params["rate"] = a.rate
    if a.scale is not None:
        params["scale"] = a.scale
    transform = None if a.defense == "none" else build_transform(a.defense, **params)
    torch.manual_seed(a.seed)
    model = build_model(a.model, ds.num_classes, ds.input_shape)
    t0 = time.perf_counter()
    res = fedavg_with_transform(
        model, (ds.train.x - m) / s, ds.train.y, (ds.test.x - m) / s, ds.test.y, transform,
        clients=a.clients, rounds=a.rounds, local_steps=a.local_steps, batch_size=a.batch_size, lr=a.lr,
        seed=a.seed, progress=lambda r, acc: print(f"round {r + 1:3d}/{a.rounds}: test accuracy {acc:.4f}", flush=True),
    )
    res.update({"args": vars(a), "seconds": time.perf_counter() - t0})
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "accuracy.json").write_text(json.dumps(res, indent=1))
    print(f"final {res['final_accuracy']:.4f} best {res['best_accuracy']:.4f} -> {out / 'accuracy.json'}")


if __name__ == "__main__":
    main()
