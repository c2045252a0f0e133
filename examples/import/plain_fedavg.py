"""A plain PyTorch FedAvg loop that records itself in fedleak's import layout (docs/import.md).

Nothing here uses fedleak's engine: the partition, local SGD, FedAvg and the writing of the files are ordinary
PyTorch / NumPy. Two things come from fedleak so that the importer can rebuild them from the manifest: the dataset
rows (``fedleak.data.load_dataset`` with the manifest's ``data`` section and seed, so that candidate id i is the same
image on both sides) and the architecture (``fedleak.models.build_model`` with the manifest's ``model`` section, so
that the parameter names and shapes match). With your own model, name it in the manifest the way a config does.

    python examples/import/plain_fedavg.py --out fed_layout
    fedleak import fed_layout --out runs/imported && fedleak attack runs/imported

Files are written as ``.npz`` (``tensor_format: "npz"``); ``safetensors.torch.save_file(params, path, metadata=...)``
with ``tensor_format: "safetensors"`` works the same way.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from fedleak.config import DataConfig
from fedleak.data import load_dataset
from fedleak.models import build_model

SEED = 0
DATA = {"name": "digits", "test_fraction": 0.5}
MODEL = {"name": "mlp", "options": {"hidden": [64]}}


def save_npz(path: Path, params: dict[str, torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{n: p.detach().numpy() for n, p in params.items()})


def local_sgd(model, params, x, y, lr: float, epochs: int, batch: int, gen: torch.Generator):
    """Plain minibatch SGD from ``params`` on one client's data; returns the new parameters."""
    model.load_state_dict(params, strict=False)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(batch):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def main(out: Path, rounds: int, clients: int, epochs: int, lr: float) -> None:
    data = load_dataset(DataConfig(**DATA), seed=SEED)
    x_tr, y_tr = data.normalize(data.train.x), data.train.y
    n_train, n_test = len(y_tr), len(data.test.y)
    rng = np.random.default_rng(SEED)
    shards = np.array_split(rng.permutation(n_train), clients)  # client k holds training rows shards[k]
    torch.manual_seed(SEED)
    model = build_model(MODEL["name"], data.num_classes, data.input_shape, **MODEL["options"])
    glob = {n: p.detach().clone() for n, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(SEED)
    entries = []
    for rnd in range(rounds):
        folder = out / f"round_{rnd:04d}"
        save_npz(folder / "global.npz", glob)  # what the server sent
        uploads = {}
        for k, rows in enumerate(shards):
            idx = torch.as_tensor(rows)
            uploads[k] = local_sgd(model, glob, x_tr[idx], y_tr[idx], lr, epochs, 10, gen)
            save_npz(folder / f"client_{k:04d}.npz", uploads[k])  # what client k returned
        sizes = np.array([len(s) for s in shards], np.float64)
        glob = {n: sum((sizes[k] / sizes.sum()) * uploads[k][n] for k in uploads) for n in glob}  # FedAvg
        entries.append({"round": rnd, "lr": lr,
                        "clients": [{"id": k, "examples": len(s)} for k, s in enumerate(shards)]})
    # candidates: the target's (client 0's) training rows are members; 60 rows of every other client and
    # 300 test rows (id n_train + j) are non-members
    others = [rng.choice(s, 60, replace=False) for s in shards[1:]]
    test = n_train + rng.choice(n_test, 300, replace=False)
    ids = np.concatenate([shards[0], *others, test])
    owner = np.concatenate([np.zeros(len(shards[0])), *[np.full(60, k + 1) for k in range(len(others))],
                            np.full(300, -1)]).astype(int)
    manifest = {
        "format": "fedleak-federation", "version": 1,
        "config": {"name": "plain-fedavg", "seed": SEED, "data": DATA, "model": MODEL},
        "num_clients": clients, "upload": "model", "tensor_format": "npz",
        "clients": [s.tolist() for s in shards],
        "candidates": {"ids": ids.tolist(), "owner": owner.tolist(), "target": 0},
        "rounds": entries,
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    print(f"wrote {out / 'manifest.json'} and {rounds} round folders")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--clients", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=0.05)
    a = ap.parse_args()
    main(a.out, a.rounds, a.clients, a.epochs, a.lr)
