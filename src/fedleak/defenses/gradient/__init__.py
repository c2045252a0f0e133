"""Gradient transforms applied by a client before it shares its update (see ``base.py`` for the contract).

Each is also a defense of the one protocol (:class:`GradientDefense`, registered in
:data:`fedleak.defenses.base.DEFENSES`), so it trains FedAvg too (``fedleak train`` with
``defense: {name: soteria, params: {rate: 60}}``). ``fedleak.defenses.build_transform(name, **params)`` gives any
registered defense that changes the shared update as a transform (the gradient ones below, and ``perturb``,
``sparse``, ``quant``):

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

from collections.abc import Callable
from typing import Any

from fedleak.defenses.base import DEFENSES, Defense, UpdateContext
from fedleak.defenses.params import (
    BOOL,
    FLOAT,
    INT,
    STR,
    STRS,
    DefenseParams,
    Field,
    between,
    non_negative,
    param,
    parse_params,
    positive,
)
from fedleak.errors import ConfigError

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
    "TRANSFORMS",
    "UPDATE_DEFENSES",
    "GradientDefense",
    "GRADIENT_PARAMS",
    "jacobian_rows",
    "representation_fn",
    "prune_mask",
    "percentile_linear",
    "last_linear",
    "linear_param_names",
    "per_example_gradients",
]

DENOMINATORS = ("legacy", "notebook", "abs")
REDUCTIONS = ("sum", "per-sample")
SELECTIONS = ("percentile", "topk")
METHODS = ("approx", "exact")
JACOBIANS = ("vmap", "replicate", "loop", "sketch")
PROBE_KINDS = ("rademacher", "gaussian")
TRANSFORMS = ("none", "soteria", "prune", "prune-global", "dp-gaussian", "dp-laplace")


class GradientDefense(Defense):
    """A gradient transform (Soteria, pruning, DP noise) as a defense of the one protocol.

    In FedAvg training (``fedleak train``) it acts on each client's update ``Δ = θ_global − θ_local`` with the
    round kernel's :class:`UpdateContext` (the client's data of the round, the global parameters); in
    ``fedleak invert`` on the victim's gradient or update. ``last_info`` keeps the transform's log (e.g.
    Soteria's mask and pruned fraction) of the last call.
    """

    needs_context = True

    def __init__(self, name: str, transform: GradientTransform, params: dict[str, Any] | None, cfg=None) -> None:
        super().__init__(params, cfg)
        self.name = name
        self.transform = transform
        self.last_info: dict[str, Any] = {}

    def transform_update(self, delta, gen, ctx: UpdateContext | None = None):
        if ctx is None:
            raise ConfigError(f"defense '{self.name}' needs the client's data and parameters (an UpdateContext)")
        out, self.last_info = self.transform(delta, ctx, gen)
        return {k: v.detach() for k, v in out.items()}


class SoteriaParams(DefenseParams):
    rate: param(FLOAT, check=between(0, 100)) = Field(60.0, description="percent of the defended input features")
    layer: param(STR, optional=True) = Field(None, description="the defended nn.Linear (null: the last one)")
    denominator: param(STR, choices=DENOMINATORS) = Field("legacy", description="score denominator (docs/inversion.md)")
    eps: param(FLOAT, check=positive) = Field(1e-6, description="added to the denominator")
    reduction: param(STR, choices=REDUCTIONS) = Field("sum", description="one mask for the batch (sum) or per sample")
    selection: param(STR, choices=SELECTIONS) = Field("percentile", description="percentile threshold or exact top-k")
    method: param(STR, choices=METHODS) = Field("approx", description="Jacobian-row approximation or exact scores")
    jacobian: param(STR, choices=JACOBIANS) = Field(
        "vmap", description="how Jacobian row norms are computed: exactly (vmap, replicate, loop) or sketched")
    chunk_size: param(INT, check=positive, optional=True) = Field(None, description="rows (sketch: probes) per chunk "
                                                                  "(null: auto)")
    memory_budget_mb: param(FLOAT, check=positive) = Field(32.0, description="memory for one chunk of Jacobian rows")
    ridge: param(FLOAT, check=non_negative) = Field(1e-6, description="exact method: ridge λ relative to diag(J Jᵀ)")
    probes: param(INT, check=between(1, 65536)) = Field(64, description="jacobian=sketch: number of random probes")
    probe_kind: param(STR, choices=PROBE_KINDS) = Field("rademacher", description="jacobian=sketch: probe distribution")


class PruneParams(DefenseParams):
    rate: param(FLOAT, check=between(0, 100)) = Field(60.0, description="percent of entries pruned")
    layers: param(STRS, optional=True) = Field(None, description="parameter names to prune (null: all)")
    include_bias: param(BOOL) = Field(True, description="prune bias tensors too")


class DPNoiseParams(DefenseParams):
    scale: param(FLOAT, check=non_negative) = Field(0.01, description="noise std (Gaussian) or scale (Laplace)")
    clip: param(FLOAT, check=positive, optional=True) = Field(None, description="L2 clipping bound (null: none)")
    per_example: param(BOOL) = Field(False, description="clip each sample's gradient (FedSGD gradients only)")


def _register(name: str, model: type[DefenseParams], make: Callable[..., GradientTransform]) -> None:
    def factory(params: dict[str, Any] | None, cfg=None) -> GradientDefense:
        given = dict(params or {})
        checked = parse_params(name, given, model)
        try:
            transform = make(**{k: checked[k] for k in given})  # the transform's own defaults for the rest
        except (TypeError, ValueError) as e:
            raise ConfigError(f"defense {name!r}: {e}") from None
        return GradientDefense(name, transform, params, cfg)

    DEFENSES.add(name, factory)


_register("soteria", SoteriaParams, Soteria)
_register("prune", PruneParams, lambda **p: GradientPruning(**{"scope": "tensor", **p}))
_register("prune-global", PruneParams, lambda **p: GradientPruning(**{"scope": "global", **p}))
_register("dp-gaussian", DPNoiseParams, lambda **p: DPNoise(**{"mechanism": "gaussian", **p}))
_register("dp-laplace", DPNoiseParams, lambda **p: DPNoise(**{"mechanism": "laplace", **p}))
#: the params model of each gradient defense
GRADIENT_PARAMS = {"soteria": SoteriaParams, "prune": PruneParams, "prune-global": PruneParams,
                   "dp-gaussian": DPNoiseParams, "dp-laplace": DPNoiseParams}


#: FL defenses that change the shared update (usable in ``fedleak invert`` besides the gradient transforms).
UPDATE_DEFENSES = ("perturb", "quant", "sparse")
