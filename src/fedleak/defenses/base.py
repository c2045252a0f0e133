"""The defense protocol and the defense registry.

A defense subclasses :class:`Defense` and overrides only the hooks it needs; every hook is a no-op by default.
The round kernel (:func:`fedleak.fl.round.client_update`) calls them in this order for each participating client:

1. ``select_data(indices, round, gen)``            which of the client's samples this round uses
   ``local_batches(n, batch_size, gen)``           each local epoch's batches, as index tensors (default: a
                                                   shuffle cut into batches of ``batch_size``; DP-SGD: Poisson)
2. ``transform_batch(x, y, num_classes, gen)``     each local batch, pixel space [0,1], before
                                                   normalisation; may return soft labels [B, C]
3. ``training_step(model, x, y, loss_fn, opt)``    one local optimisation step (return the loss)
4. ``transform_update(delta, gen, ctx)``           the update Δ = θ_global − θ_local (or a FedSGD gradient) the
                                                   server receives; ``ctx`` (:class:`UpdateContext`: model, the
                                                   client's data, the parameters Δ was computed at) is given
                                                   when the defense sets ``needs_context = True``
5. ``privacy_spent(round)``                        (ε, δ) after this round, logged with the metrics

Signals are computed on what the server receives, i.e. after ``transform_update``.

The same protocol serves the inversion study: ``fedleak invert`` applies ``transform_update`` to the victim's
shared gradient or FedAvg update (see :func:`fedleak.defenses.update_transform`); defenses that only act on the
local training (data or training step) have no hook there and are refused with a one-line error.

Adding a defense is one file and one registry line: subclass :class:`Defense` and decorate the class with
``@DEFENSES.register("name")``; a defense class is built as ``cls(params, cfg)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fedleak.config import ExperimentConfig
from fedleak.registry import Registry

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class UpdateContext:
    """Client-side context of one shared update (what a defense may use; the server never sees it).

    Built by the round kernel only for a defense with ``needs_context = True`` (Soteria needs the client's data
    and the parameters the update was computed at)."""

    model: nn.Module
    x: torch.Tensor  # local data in model-input (normalised) space, [B, ...]
    y: torch.Tensor  # labels [B] (int64) or soft labels [B, C]
    params: Mapping[str, torch.Tensor] | None = None  # parameters the update was computed at (default: model's)
    loss_fn: LossFn = F.cross_entropy
    kind: Literal["gradient", "update"] = "gradient"

    def parameters(self) -> dict[str, torch.Tensor]:
        if self.params is not None:
            return {k: v.detach() for k, v in self.params.items()}
        return {k: v.detach() for k, v in self.model.named_parameters()}


class Defense:
    """No-op defense; subclasses override hooks."""

    name = "none"
    needs_context = False  # True: transform_update needs the UpdateContext
    #: the FedAvg weights (client data sizes) [K], set by ``fl.federation.build_federation``; None outside a
    #: federation. Accounting may use them (``perturb``'s ε for an observer of the global models).
    client_weights: np.ndarray | None = None

    def __init__(self, params: dict[str, Any] | None = None, cfg: ExperimentConfig | None = None) -> None:
        self.params = dict(params or {})
        self.cfg = cfg

    def select_data(self, indices: np.ndarray, rnd: int, gen: np.random.Generator) -> np.ndarray:
        return indices

    def local_batches(self, n: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
        """One local epoch's batches over the client's ``n`` samples, as index tensors, from the local stream
        ``gen``: by default one ``randperm`` cut into batches of ``batch_size`` (the last one shorter). A batch may
        be empty (the local loop still calls ``training_step`` and leaves its loss out of the mean)."""
        perm = torch.randperm(n, generator=gen)
        for s in range(0, n, batch_size):
            yield perm[s : s + batch_size]

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

    def transform_update(
        self, delta: dict[str, torch.Tensor], gen: torch.Generator | None, ctx: UpdateContext | None = None
    ) -> dict[str, torch.Tensor]:
        return delta

    def acts_on_update(self) -> bool:
        """Whether this defense changes the shared update (its class overrides ``transform_update``)."""
        return type(self).transform_update is not Defense.transform_update

    def privacy_spent(self, rnd: int) -> dict[str, Any] | None:
        return None


DefenseFactory = Callable[[dict[str, Any], ExperimentConfig], Defense]
DEFENSES: Registry[DefenseFactory] = Registry("defense")
DEFENSES.add("none", Defense)


def register_defense(name: str, factory: DefenseFactory) -> None:
    """Register ``factory(params, cfg) -> Defense`` under ``name`` (same as ``@DEFENSES.register(name)``)."""
    DEFENSES.add(name, factory)


__all__ = ["DEFENSES", "Defense", "DefenseFactory", "UpdateContext", "register_defense"]
