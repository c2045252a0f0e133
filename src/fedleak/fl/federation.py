"""The federation of a run: everything fixed for the whole run, derived from the config.

Data, the client partition, the candidate set, the initial model and the defense; built the same way by the
in-process engine (:mod:`fedleak.fl.simulation`) and by the Flower apps (:mod:`fedleak.flower`), and re-read from
a run directory's saved split and candidates when one is resumed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedleak.config import ConfigError, ExperimentConfig
from fedleak.data.base import Dataset
from fedleak.defenses import Defense, build_defense
from fedleak.fl.canaries import build_canaries
from fedleak.fl.rundir import saved_candidates, saved_split
from fedleak.models.functional import batchnorm_state_names
from fedleak.seeding import Purpose, init_seed, np_rng
from fedleak.signals.canaries import CanarySet
from fedleak.signals.candidates import build_candidates


@dataclass
class Federation:
    """Everything fixed for the whole run, derived from the config (and saved in the run dir)."""

    cfg: ExperimentConfig
    data: Dataset
    clients: list[np.ndarray]
    cand_ids: np.ndarray
    cand_owner: np.ndarray
    model: torch.nn.Module
    defense: Defense
    weights: np.ndarray  # client data sizes
    canaries: CanarySet | None = None  # audit.canaries (fl/canaries.py); inserted ones train with the target

    @property
    def n_train(self) -> int:
        return len(self.data.train)


def build_federation(cfg: ExperimentConfig, run_dir: Path | None = None) -> Federation:
    """Load data, partition, candidates, model and defense (reusing the run dir's saved split)."""
    from fedleak.data import load_dataset
    from fedleak.data.partition import dirichlet_partition, iid_partition
    from fedleak.models import build_model

    data = load_dataset(cfg.data, seed=cfg.seed)
    pc = cfg.partition
    if run_dir is not None and (run_dir / "split.npz").is_file():
        clients = saved_split(run_dir, pc.num_clients, len(data.train))
    elif pc.scheme == "iid":
        clients = iid_partition(len(data.train), pc.num_clients, np_rng(cfg.seed, Purpose.PARTITION), pc.samples_per_client)
    else:
        clients = dirichlet_partition(
            data.train.y.numpy(), pc.num_clients, pc.beta, np_rng(cfg.seed, Purpose.PARTITION), min_size=pc.min_size
        )
    if run_dir is not None and (run_dir / "candidates.npz").is_file():
        ids, owner = saved_candidates(run_dir, pc.num_clients, len(data.train) + len(data.test))
    else:
        ids, owner = build_candidates(
            cfg.candidates, clients, len(data.train), len(data.test), np_rng(cfg.seed, Purpose.CANDIDATES)
        )
    torch.manual_seed(init_seed(cfg.seed))
    try:
        model = build_model(cfg.model.name, data.num_classes, data.input_shape, **cfg.model.options)
    except ValueError as e:
        raise ConfigError(f"model: {e}") from None
    defense = build_defense(cfg.defense, cfg)
    _refuse_batchnorm_training_step(model, defense, cfg)
    weights = np.array([len(c) for c in clients], dtype=np.float64)
    defense.client_weights = weights
    fed = Federation(cfg, data, clients, ids, owner, model, defense, weights)
    fed.canaries = build_canaries(fed)
    return fed


def _refuse_batchnorm_training_step(model: torch.nn.Module, defense: Defense, cfg: ExperimentConfig) -> None:
    """A defense that replaces the local step (DP-SGD: per-sample gradients) cannot train BatchNorm layers, whose
    batch statistics couple the samples of a batch."""
    if type(defense).training_step is Defense.training_step or not batchnorm_state_names(model):
        return
    raise ConfigError(
        f"defense {cfg.defense.name!r} replaces local training with per-sample gradients, which model "
        f"{cfg.model.name!r}'s BatchNorm layers couple across the batch; use a model without BatchNorm "
        "(e.g. resnet18_gn, or convnet64 with model.options.norm=group)"
    )


def train_eval_subset(fed: Federation, cap: int = 10_000) -> tuple[torch.Tensor, torch.Tensor]:
    """Global-model train accuracy on at most ``cap`` training samples (spec W18: not all 50k every round)."""
    n = fed.n_train
    idx = torch.arange(n) if n <= cap else torch.as_tensor(np.sort(np_rng(fed.cfg.seed, Purpose.TRAIN_EVAL).choice(n, cap, replace=False)))
    return fed.data.normalize(fed.data.train.x[idx]), fed.data.train.y[idx]


__all__ = ["Federation", "build_federation", "train_eval_subset"]
