"""Gradient pruning ("model compression" baseline of Soteria; DLG's best defence) as a gradient transform.

``scope``:

* ``"tensor"`` (legacy, the Soteria GS script and notebook): for every selected tensor ``g_l``,
  ``τ_l = numpy.percentile(|g_l|, rate)`` (linear interpolation) and entries with ``|g_l| < τ_l`` are zeroed,
  i.e. ``⌈rate·(n−1)/100⌉`` of ``n`` distinct magnitudes;
* ``"global"``: global magnitude top-k over all selected tensors together, exactly ``round(rate·N/100)``
  smallest magnitudes zeroed;
* ``"layer-topk"``: the same top-k, per tensor.

Tensors are selected by module name (``layers``, default all) and optionally without biases; the rest pass
through untouched. No rescaling, no error feedback.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from fedleak.defenses.gradient.base import GradientContext, Grads, percentile_linear, select_names
from fedleak.models.functional import smallest_k_mask


def _keep_above_rate(mag: torch.Tensor, rate: float) -> torch.Tensor:
    """Keep-mask that prunes the ``round(rate·n/100)`` smallest magnitudes (ties: lower index first)."""
    return smallest_k_mask(mag, int(round(rate * mag.numel() / 100.0)))


@dataclass
class GradientPruning:
    rate: float = 60.0
    scope: Literal["tensor", "global", "layer-topk"] = "tensor"
    layers: Sequence[str] | None = None
    include_bias: bool = True
    name: str = "prune"

    def __call__(self, grads: Mapping[str, torch.Tensor], ctx: GradientContext | None = None, generator=None):
        if not 0.0 <= self.rate <= 100.0:
            raise ValueError(f"pruning rate is a percentage in [0, 100], got {self.rate}")
        names = select_names(grads, self.layers, self.include_bias)
        out: Grads = dict(grads)
        pruned = total = 0
        if self.scope == "global":
            mags = torch.cat([grads[n].detach().abs().flatten() for n in names])
            keep = _keep_above_rate(mags, self.rate)
            offset = 0
            for n in names:
                k = grads[n].numel()
                m = keep[offset : offset + k].view(grads[n].shape)
                offset += k
                out[n] = grads[n] * m.to(grads[n].dtype)
            pruned, total = int((~keep).sum()), keep.numel()
        elif self.scope in ("tensor", "layer-topk"):
            for n in names:
                g = grads[n]
                mag = g.detach().abs()
                if self.scope == "tensor":
                    keep = ~(mag.double() < percentile_linear(mag, self.rate))
                else:
                    keep = _keep_above_rate(mag, self.rate)
                out[n] = g * keep.to(g.dtype)
                pruned += int((~keep).sum())
                total += keep.numel()
        else:
            raise ValueError(f"unknown pruning scope {self.scope!r}; choose tensor, global or layer-topk")
        return out, {"pruned_fraction": pruned / max(total, 1), "num_pruned": pruned, "num_selected": total}
