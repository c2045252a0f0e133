"""Gradient transforms: the contract shared by Soteria, pruning and DP noise.

A transform maps the update a client is about to share to the update the server receives::

    new_grads, info = transform(grads, ctx, generator)

``grads`` is an ordered ``dict[str, Tensor]`` keyed by ``model.named_parameters()`` names (never by
position), holding either a FedSGD gradient (``ctx.kind == "gradient"``) or a FedAvg update
``θ_start − θ_end`` (``ctx.kind == "update"``). ``ctx`` is the client-side context (model, the parameters at
which the update was computed, the local batch in model-input space, labels, loss); the server never sees
it. ``info`` is a small dict for logging (e.g. Soteria's mask and pruned fraction). Transforms never modify
their input dict in place.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from fedleak.defenses.base import UpdateContext
from fedleak.models.functional import module_by_name

Grads = dict[str, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


GradientContext = UpdateContext  # the context of a shared update (fedleak.defenses.base)


class GradientTransform(Protocol):
    name: str

    def __call__(
        self, grads: Mapping[str, torch.Tensor], ctx: GradientContext, generator: torch.Generator | None = None
    ) -> tuple[Grads, dict[str, Any]]: ...


@dataclass
class Compose:
    """Apply transforms in order; ``info`` holds one entry per transform, keyed by its name."""

    transforms: Sequence[GradientTransform] = field(default_factory=list)
    name: str = "compose"

    def __call__(self, grads, ctx, generator=None):
        out: Grads = dict(grads)
        infos: dict[str, Any] = {}
        for i, t in enumerate(self.transforms):
            out, info = t(out, ctx, generator)
            key = t.name if t.name not in infos else f"{t.name}#{i}"
            infos[key] = info
        return out, infos


class Identity:
    name = "none"

    def __call__(self, grads, ctx, generator=None):
        return dict(grads), {}


def last_linear(model: nn.Module) -> str:
    """Name of the last ``nn.Linear`` in ``model.named_modules()`` order (registration order)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to defend")
    return names[-1]


def linear_param_names(model: nn.Module, layer: str) -> tuple[str, str | None]:
    """(weight name, bias name or None) of the ``nn.Linear`` called ``layer``."""
    mod = module_by_name(model, layer)
    if not isinstance(mod, nn.Linear):
        raise ValueError(f"module {layer!r} is a {type(mod).__name__}, not an nn.Linear")
    prefix = f"{layer}." if layer else ""
    return prefix + "weight", (prefix + "bias" if mod.bias is not None else None)


def select_names(grads: Mapping[str, torch.Tensor], layers: Sequence[str] | None, include_bias: bool = True) -> list[str]:
    """Parameter names under the given module names (all when ``layers`` is None), optionally without biases."""
    names = list(grads)
    if layers is not None:
        prefixes = tuple(f"{layer}." for layer in layers)
        unknown = [layer for layer in layers if not any(n.startswith(f"{layer}.") or n == layer for n in names)]
        if unknown:
            raise ValueError(f"no parameters under module(s) {unknown}; parameter names look like {names[:4]}")
        names = [n for n in names if n.startswith(prefixes) or n in layers]
    if not include_bias:
        names = [n for n in names if not n.endswith("bias")]
    return names


def percentile_linear(values: torch.Tensor, q: float) -> torch.Tensor:
    """``numpy.percentile(values, q)`` with the default linear interpolation, in float64, any size."""
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    s = values.detach().flatten().double().sort().values
    n = s.numel()
    if n == 0:
        raise ValueError("percentile of an empty tensor")
    pos = q / 100.0 * (n - 1)
    lo = int(pos // 1)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    return s[lo] + (s[hi] - s[lo]) * frac
