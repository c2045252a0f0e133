from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("FEDLEAK_QUIET", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present (CI has it)")
    return SHARED_DATA


def tiny_config(**over):
    """A seconds-long synthetic experiment for engine tests."""
    from fedleak.config import parse_config

    raw = {
        "name": "tiny",
        "seed": 3,
        "data": {"name": "synthetic", "synthetic": {"n_train": 120, "n_test": 40, "num_classes": 4, "channels": 1, "size": 8}},
        "partition": {"num_clients": 3},
        "candidates": {"n_test": 20, "n_other": 10},
        "model": {"name": "mlp", "options": {"hidden": [16]}},
        "fl": {"rounds": 3, "batch_size": 8, "lr": 0.1},
        "signals": {"every": 1},
    }
    for key, value in over.items():
        node = raw
        parts = key.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return parse_config(raw)
