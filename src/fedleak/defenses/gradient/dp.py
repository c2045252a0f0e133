"""DP-style gradient perturbation: optional clipping, then Gaussian or Laplace noise per entry.

* ``clip=None``: no clipping (the Soteria notebook's baseline is unclipped ``Laplace(0, b=0.1)``).
* ``clip=C, per_example=False``: the whole shared update (all tensors as one vector) is scaled to L2 norm ``≤ C``.
* ``clip=C, per_example=True`` (FedSGD gradients only): per-sample gradients are recomputed from the client's
  batch with ``torch.func`` (``vmap(grad)``), each clipped to ``≤ C`` and averaged (DP-SGD style, breaching's
  ``per_example_clipping``). This *replaces* the incoming gradient, so put it first in a composition.

``scale`` is the absolute noise level added to the final (averaged) update: the Gaussian standard deviation, or
the Laplace scale ``b``. (For DP-SGD with noise multiplier σ, batch B and clip C use ``scale = σ·C/B``.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch

from fedleak.defenses.gradient.base import GradientContext, Grads
from fedleak.models.functional import per_sample_grad_fn


def per_example_gradients(ctx: GradientContext) -> dict[str, torch.Tensor]:
    """``{name: [B, *shape]}`` gradients of ``ctx.loss_fn`` for each sample of ``ctx.x`` alone."""
    fn = per_sample_grad_fn(ctx.model, dict(ctx.model.named_buffers()), ctx.loss_fn)
    return fn(ctx.parameters(), ctx.x.detach(), ctx.y)


@dataclass
class DPNoise:
    scale: float = 0.01
    mechanism: Literal["gaussian", "laplace"] = "gaussian"
    clip: float | None = None
    per_example: bool = False
    name: str = "dp"

    def __call__(self, grads: Mapping[str, torch.Tensor], ctx: GradientContext | None = None, generator=None):
        if self.scale < 0:
            raise ValueError(f"noise scale must be >= 0, got {self.scale}")
        out: Grads = {k: v.detach().clone() for k, v in grads.items()}
        info: dict = {"mechanism": self.mechanism, "scale": self.scale, "clip": self.clip}
        if self.clip is not None:
            if self.clip <= 0:
                raise ValueError(f"clip must be > 0, got {self.clip}")
            if self.per_example:
                if ctx is None or ctx.kind != "gradient":
                    raise ValueError("per-example clipping needs the client's batch and a FedSGD gradient")
                pe = per_example_gradients(ctx)
                norms = torch.sqrt(sum(v.flatten(1).pow(2).sum(1) for v in pe.values()))
                factor = (self.clip / (norms + 1e-12)).clamp(max=1.0)
                for k in out:
                    out[k] = (pe[k] * factor.view(-1, *([1] * (pe[k].dim() - 1)))).mean(0).to(out[k].dtype)
                info["clipped_fraction"] = float((norms > self.clip).double().mean())
            else:
                norm = torch.sqrt(sum(v.double().pow(2).sum() for v in out.values()))
                factor = min(1.0, self.clip / (float(norm) + 1e-12))
                out = {k: v * factor for k, v in out.items()}
                info["clipped_fraction"] = float(norm > self.clip)
        if self.scale > 0:
            for k, v in out.items():
                if self.mechanism == "gaussian":
                    noise = torch.randn(v.shape, generator=generator, dtype=v.dtype, device=v.device) * self.scale
                elif self.mechanism == "laplace":
                    u = torch.rand(v.shape, generator=generator, dtype=torch.float64, device=v.device) - 0.5
                    u = u.clamp(-0.5 + 1e-12, 0.5 - 1e-12)  # inverse CDF: -b·sign(u)·log(1 − 2|u|)
                    noise = (-self.scale * torch.sign(u) * torch.log1p(-2.0 * u.abs())).to(v.dtype)
                else:
                    raise ValueError(f"unknown mechanism {self.mechanism!r}; choose gaussian or laplace")
                out[k] = v + noise
        return out, info
