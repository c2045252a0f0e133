"""Defense hook points of the FedAvg engine.

A defense subclasses :class:`Defense` and overrides only the hooks it needs; every hook is a
no-op by default. The engine calls them in this order for each participating client:

1. ``select_data(indices, round, gen)``            which of the client's samples this round uses
2. ``transform_batch(x, y, num_classes, gen)``     each local batch, pixel space [0,1], before
                                                   normalisation; may return soft labels [B, C]
3. ``training_step(model, x, y, loss_fn, opt)``    one local optimisation step (return the loss)
4. ``transform_update(delta, gen)``                the update Δ = θ_global − θ_local the server receives
5. ``privacy_spent(round)``                        (ε, δ) after this round, logged with the metrics

Signals are computed on what the server receives, i.e. after ``transform_update``.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from fedleak.config import ConfigError, DefenseConfig, ExperimentConfig


def soft_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean CE for hard labels [B] (int) or soft labels [B, C] (probabilities)."""
    if y.dtype.is_floating_point:
        return -(y * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    return F.cross_entropy(logits, y)


class Defense:
    """No-op defense; subclasses override hooks."""

    name = "none"

    def __init__(self, params: dict[str, Any] | None = None, cfg: ExperimentConfig | None = None) -> None:
        self.params = dict(params or {})
        self.cfg = cfg

    def select_data(self, indices: np.ndarray, rnd: int, gen: np.random.Generator) -> np.ndarray:
        return indices

    def transform_batch(
        self, x: torch.Tensor, y: torch.Tensor, num_classes: int, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return x, y

    def training_step(
        self,
        model: torch.nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        optimizer: torch.optim.Optimizer,
    ) -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    def transform_update(self, delta: dict[str, torch.Tensor], gen: torch.Generator) -> dict[str, torch.Tensor]:
        return delta

    def privacy_spent(self, rnd: int) -> dict[str, float] | None:
        return None


DefenseFactory = Callable[[dict[str, Any], ExperimentConfig], Defense]
DEFENSES: dict[str, DefenseFactory] = {"none": lambda params, cfg: Defense(params, cfg)}


def register_defense(name: str, factory: DefenseFactory) -> None:
    DEFENSES[name] = factory


def build_defense(dcfg: DefenseConfig, cfg: ExperimentConfig) -> Defense:
    try:  # defenses register themselves on import
        import fedleak.defenses  # noqa: F401
    except ImportError:
        pass
    if dcfg.name not in DEFENSES:
        raise ConfigError(f"unknown defense '{dcfg.name}'; choose from: {', '.join(sorted(DEFENSES))}")
    return DEFENSES[dcfg.name](dcfg.params, cfg)
