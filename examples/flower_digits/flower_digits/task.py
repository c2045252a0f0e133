"""What server and clients share: the fedleak config describing data, split and model."""

from __future__ import annotations

import os
from pathlib import Path

from fedleak.config import ExperimentConfig, load_config
from fedleak.models import build_model

CONFIG = Path(os.environ.get("FEDLEAK_FLOWER_CONFIG", Path(__file__).resolve().parents[1] / "fedleak.yaml"))


def load_cfg() -> ExperimentConfig:
    return load_config(CONFIG)


def make_model(cfg: ExperimentConfig):
    """The MLP both sides use (8x8 grayscale digits, 10 classes)."""
    return build_model(cfg.model.name, 10, (1, 8, 8), **cfg.model.options)
