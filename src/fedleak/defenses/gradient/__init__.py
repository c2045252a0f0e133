"""Gradient transforms applied by a client before it shares its update (see ``base.py`` for the contract).

``build_transform(name, **params)`` builds one from a short name:

=================  ==========================================================================================
``none``           identity
``soteria``        :class:`Soteria` (representation-layer column masking)
``prune``          :class:`GradientPruning`, per-tensor magnitude percentile (the Soteria baseline)
``prune-global``   :class:`GradientPruning` with ``scope="global"`` (global top-k)
``dp-gaussian``    :class:`DPNoise`, Gaussian noise (optional clipping)
``dp-laplace``     :class:`DPNoise`, Laplace noise (optional clipping)
=================  ==========================================================================================
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fedleak.defenses.gradient.base import (
    Compose,
    GradientContext,
    GradientTransform,
    Identity,
    last_linear,
    linear_param_names,
    percentile_linear,
)
from fedleak.defenses.gradient.dp import DPNoise, per_example_gradients
from fedleak.defenses.gradient.pruning import GradientPruning
from fedleak.defenses.gradient.soteria import Soteria, jacobian_rows, prune_mask, representation_fn

__all__ = [
    "GradientContext",
    "GradientTransform",
    "Compose",
    "Identity",
    "Soteria",
    "GradientPruning",
    "DPNoise",
    "build_transform",
    "TRANSFORMS",
    "jacobian_rows",
    "representation_fn",
    "prune_mask",
    "percentile_linear",
    "last_linear",
    "linear_param_names",
    "per_example_gradients",
]

TRANSFORMS = ("none", "soteria", "prune", "prune-global", "dp-gaussian", "dp-laplace")


def _check_numbers(name: str, transform: Any) -> Any:
    """Fields declared float/int must hold numbers (``rate='abc'`` from the command line would reach torch)."""
    for f in dataclasses.fields(transform) if dataclasses.is_dataclass(transform) else ():
        kinds = {k.strip() for k in str(f.type).split("|")} - {"None"}
        v = getattr(transform, f.name)
        if kinds and kinds <= {"float", "int"} and v is not None and (
                isinstance(v, bool) or not isinstance(v, int if kinds == {"int"} else (int, float))):
            raise ValueError(f"defense {name!r}: parameter '{f.name}' must be a number, got {v!r}")
    return transform


def build_transform(name: str, **params: Any) -> GradientTransform:
    """A transform from its short name; unknown names or parameters raise ``ValueError``."""
    return _check_numbers(name, _build_transform(name, **params))


def _build_transform(name: str, **params: Any) -> GradientTransform:
    try:
        if name == "none":
            if params:
                raise TypeError(f"unexpected parameters {sorted(params)}")
            return Identity()
        if name == "soteria":
            return Soteria(**params)
        if name == "prune":
            return GradientPruning(**{"scope": "tensor", **params})
        if name == "prune-global":
            return GradientPruning(**{"scope": "global", **params})
        if name in ("dp-gaussian", "dp-laplace"):
            return DPNoise(**{"mechanism": name.split("-")[1], **params})
    except TypeError as e:
        raise ValueError(f"defense {name!r}: {e}") from None
    raise ValueError(f"unknown defense {name!r}; choose from: {', '.join(TRANSFORMS)}")
