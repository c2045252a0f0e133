"""Adaptive attacks against Soteria (inversion.md §3.4): where the defence fails.

Soteria zeroes columns of *one* tensor, the defended ``nn.Linear``'s weight gradient. Everything else is
shared unchanged, so an attacker who knows the defence can

1. **read out the unpruned representation in closed form** (:func:`read_out_features`): for one image and
   softmax-CE, ``g_W = δ rᵀ`` and ``g_b = δ``, hence ``r_i = g_W[c, i] / g_b[c]`` for every class ``c`` with
   ``g_b[c] ≠ 0`` and every unpruned ``i``; the pruned set itself is visible as the exactly-zero columns;
2. **drop the defended tensor from the matching cost** (Balunović et al.: ``exclude=[layer.weight]``), or mask
   its zero entries (``mask_zeros=True``), so the mask cannot mislead the optimisation;
3. **add the read-out features as a target** (``feature_weight > 0``): :func:`adaptive_config`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fedleak.attacks.inversion.optimize import FeatureTarget, InversionConfig
from fedleak.attacks.inversion.victim import ServerView
from fedleak.defenses.gradient import last_linear, linear_param_names


@dataclass
class FeatureReadout:
    r: torch.Tensor  # [1, D] read-out representation (0 where unknown)
    known: torch.Tensor  # bool [D]: columns that were not zeroed
    class_index: int  # the class row used (largest |g_b[c]|)
    layer: str

    @property
    def leaked_fraction(self) -> float:
        return float(self.known.double().mean())

    def target(self) -> FeatureTarget:
        return FeatureTarget(r=self.r, known=self.known)


def read_out_features(view: ServerView, model: nn.Module, layer: str | None = None) -> FeatureReadout:
    """Closed-form representation read-out from a one-image FedSGD gradient (see the module docstring)."""
    if view.kind != "gradient":
        raise ValueError("the closed-form read-out needs a FedSGD gradient, not a multi-step FedAvg update")
    if view.side.num_images != 1:
        raise ValueError(f"the closed-form read-out is exact for one image, got {view.side.num_images}")
    layer = layer or last_linear(model)
    wname, bname = linear_param_names(model, layer)
    if bname is None:
        raise ValueError(f"layer {layer!r} has no bias: the read-out divides by the bias gradient")
    gw, gb = view.update[wname].double(), view.update[bname].double()
    c = int(gb.abs().argmax())
    known = ~(gw == 0).all(0)
    r = torch.where(known, gw[c] / gb[c], torch.zeros_like(gw[c]))
    return FeatureReadout(r=r[None].to(view.update[wname].dtype), known=known, class_index=c, layer=layer)


def adaptive_config(base: InversionConfig, model: nn.Module, layer: str | None = None,
                    feature_weight: float = 0.1, drop_layer: bool = True) -> InversionConfig:
    """``base`` with the defended weight dropped from the cost and the read-out feature term switched on."""
    layer = layer or last_linear(model)
    wname, _ = linear_param_names(model, layer)
    exclude = list(base.exclude) + ([wname] if drop_layer and wname not in base.exclude else [])
    return base.model_copy(update={"exclude": exclude, "feature_weight": feature_weight, "feature_layer": layer})
