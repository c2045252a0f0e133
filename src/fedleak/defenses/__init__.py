"""FL defenses against membership inference, selected in the config's ``defense`` section.

Every defense implements the protocol :class:`fedleak.defenses.base.Defense` and is registered in
:data:`fedleak.defenses.base.DEFENSES`; importing this package registers the built-in ones:

===================  ==========================================================================================
``perturb``          Gaussian noise on the upload; ``clip: C`` turns it into client-level DP (dp-accounting)
``dpsgd``            local DP-SGD (per-sample clipping + noise) with sample-level (ε, δ)
``sparse``           top-k of |Δ| per tensor (> 1,000 entries) or over all entries
``quant``            b-bit quantisation of Δ, floor (original) or stochastic (unbiased) rounding
``mixup``            MixUp on inputs and labels (``labels_only`` = the original's label-only version)
``augment``          crop / flips / rotation / colour jitter recipe in plain torch
``sampling``         a fraction p of the client's data per round (redrawn or fixed)
``augment+sampling`` both
``instahide``        k-sample mixing, one random sign mask per encoded image, soft labels
===================  ==========================================================================================

``soteria``, ``prune``, ``prune-global``, ``dp-gaussian``, ``dp-laplace`` (``fedleak.defenses.gradient``) act on
the shared update with the client's data at hand; every defense works in ``fedleak train`` and every defense
that changes the shared update in ``fedleak invert`` (docs/defenses.md has the table).
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from fedleak.config import DefenseConfig, ExperimentConfig
from fedleak.defenses import data, dpsgd, gradient, instahide, update  # noqa: F401  (registration on import)
from fedleak.defenses.base import DEFENSES, Defense, UpdateContext, register_defense
from fedleak.defenses.dp_accounting import client_level_epsilon, dpsgd_epsilon, fixed_size_epsilon
from fedleak.defenses.data import Augment, Compose, MixUp, Sampling
from fedleak.defenses.dpsgd import DPSGD
from fedleak.defenses.instahide import InstaHide
from fedleak.defenses.gradient import TRANSFORMS, UPDATE_DEFENSES, GradientDefense, GradientTransform, Identity
from fedleak.defenses.update import Perturb, Quant, Sparse
from fedleak.errors import ConfigError
from fedleak.registry import article


def build_defense(dcfg: DefenseConfig, cfg: ExperimentConfig) -> Defense:
    """The defense named in the config's ``defense`` section, built with its params (a registered name, or an
    import path ``package.module:MyDefense`` naming a :class:`Defense` subclass / factory, see docs/byo.md)."""
    defense = DEFENSES.resolve(dcfg.name)(dcfg.params, cfg)
    if not isinstance(defense, Defense):
        raise ConfigError(f"defense '{dcfg.name}' built {article(type(defense).__name__)}, not a fedleak.defenses.Defense; "
                          "subclass Defense")
    return defense


@dataclass
class UpdateTransform:
    """Any defense that changes the shared update (perturb, sparse, quant), as a gradient transform."""

    defense: Defense

    @property
    def name(self) -> str:
        return self.defense.name

    def __call__(self, grads: Mapping[str, torch.Tensor], ctx: UpdateContext | None = None, generator=None):
        return self.defense.transform_update(dict(grads), generator, ctx), {}


def build_transform(name: str, **params: Any) -> GradientTransform:
    """The registered defense ``name`` as a transform of a shared gradient/update (for ``fedleak invert``).

    Unknown names and bad parameters raise ConfigError (a ValueError); a defense that only acts on local training
    (data, sampling, the training step) has nothing to apply to a shared update and is refused.
    """
    if name == "none":
        if params:
            raise ConfigError(f"defense 'none': unexpected parameters {sorted(params)}")
        return Identity()
    defense = DEFENSES.get(name)(params, None)
    if isinstance(defense, GradientDefense):
        return defense.transform
    if not defense.acts_on_update():
        usable = [n for n in DEFENSES.names() if n in TRANSFORMS or n in UPDATE_DEFENSES]
        raise ConfigError(
            f"defense '{name}' acts on the client's local training, not on the update it shares, so it has no "
            f"effect on a gradient inversion of that update; choose from: {', '.join(usable)}"
        )
    return UpdateTransform(defense)


def defense_params() -> dict[str, dict[str, str]]:
    """Every defense's accepted parameters and their one-line descriptions (for docs and --help)."""
    from fedleak.defenses.data import AugmentParams, MixUpParams, SamplingParams
    from fedleak.defenses.dpsgd import DPSGDParams
    from fedleak.defenses.instahide import InstaHideParams
    from fedleak.defenses.params import describe
    from fedleak.defenses.update import PerturbParams, QuantParams, SparseParams

    table = {
        "perturb": PerturbParams, "dpsgd": DPSGDParams, "sparse": SparseParams, "quant": QuantParams,
        "mixup": MixUpParams, "augment": AugmentParams, "sampling": SamplingParams, "instahide": InstaHideParams,
    }
    return {name: describe(model) for name, model in table.items()}


__all__ = [
    "DEFENSES", "Defense", "UpdateContext", "UpdateTransform", "build_defense", "build_transform", "register_defense",
    "Augment", "Compose", "DPSGD", "InstaHide", "MixUp", "Perturb", "Quant", "Sampling", "Sparse",
    "client_level_epsilon", "defense_params", "dpsgd_epsilon", "fixed_size_epsilon",
]
