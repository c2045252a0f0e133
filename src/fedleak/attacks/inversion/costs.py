"""Gradient-matching costs and image priors.

:class:`GradientMatcher` compares the attacker's dummy gradients with the shared ones. Costs (weights ``w_l``
per tensor, ``L`` selected tensors):

* ``sim``      one global cosine distance over all selected tensors (Inverting Gradients' default)
               ``1 − Σ_l w_l⟨ĝ_l, g_l⟩ / (sqrt(Σ_l w_l‖ĝ_l‖²) · sqrt(Σ_l w_l‖g_l‖²))``
* ``simlocal`` per-tensor cosine, ``Σ_l (1 − w_l cos(ĝ_l, g_l))`` (IG's definition: the weight multiplies the cosine)
* ``l2``       ``Σ_l w_l ‖ĝ_l − g_l‖²`` (DLG with equal weights)
* ``l1``       ``Σ_l w_l ‖ĝ_l − g_l‖₁``

Layer weights: ``equal``; ``linear`` ``(L − l)/L``; ``exp`` softmax of ``L..1`` scaled so the first is 1 (IG);
or an explicit ``{name: weight}``. ``exclude`` drops tensors (by parameter name, or all tensors of a module
name) from the cost: the adaptive "drop the defended layer" attack. ``mask_zeros`` ignores entries whose shared
value is exactly zero (masked cosine: pruned coordinates carry no information).

Everything is vectorised over tensors: the dummy gradients are concatenated once per iteration and the target
vector, its norm, the per-element weights and segment ids are precomputed. :func:`reference_cost` is the
straightforward per-tensor Python loop the original code uses, kept as the independent reference for tests and
the benchmark.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch.nn import functional as F

Cost = Literal["sim", "simlocal", "l2", "l1"]
COSTS = ("sim", "simlocal", "l2", "l1")


def layer_weights(n: int, kind: str) -> torch.Tensor:
    if kind == "equal":
        return torch.ones(n, dtype=torch.float64)
    if kind == "linear":
        return torch.arange(n, 0, -1, dtype=torch.float64) / n
    if kind == "exp":
        w = torch.arange(n, 0, -1, dtype=torch.float64).softmax(0)
        return w / w[0]
    raise ValueError(f"unknown layer weights {kind!r}; choose equal, linear or exp")


def select_params(names: Sequence[str], exclude: Sequence[str] = ()) -> list[str]:
    """``names`` minus those equal to an ``exclude`` entry or under an excluded module name."""
    ex = tuple(exclude)
    for e in ex:
        if not any(n == e or n.startswith(f"{e}.") for n in names):
            raise ValueError(f"exclude: {e!r} matches no parameter (names look like {list(names)[:4]})")
    keep = [n for n in names if not any(n == e or n.startswith(f"{e}.") for e in ex)]
    if not keep:
        raise ValueError("every tensor is excluded from the cost")
    return keep


class GradientMatcher:
    """Vectorised gradient-matching cost against a fixed shared update."""

    def __init__(
        self,
        target: Mapping[str, torch.Tensor],
        cost: Cost = "sim",
        weights: str | Mapping[str, float] = "equal",
        exclude: Sequence[str] = (),
        mask_zeros: bool = False,
    ) -> None:
        if cost not in COSTS:
            raise ValueError(f"unknown cost {cost!r}; choose from: {', '.join(COSTS)}")
        self.cost = cost
        self.names = select_params(list(target), exclude)
        L = len(self.names)
        if isinstance(weights, str):
            w_layer = layer_weights(L, weights)
        else:
            unknown = set(weights) - set(self.names)
            if unknown:
                raise ValueError(f"layer weights for unknown/excluded tensors: {sorted(unknown)}")
            w_layer = torch.tensor([float(weights.get(n, 1.0)) for n in self.names], dtype=torch.float64)
        tensors = [target[n].detach() for n in self.names]
        dtype = tensors[0].dtype
        self.sizes = [t.numel() for t in tensors]
        self.t = torch.cat([t.reshape(-1) for t in tensors])
        self.seg = torch.repeat_interleave(torch.arange(L), torch.tensor(self.sizes))
        self.w_layer = w_layer.to(dtype)
        elem_mask = (self.t != 0).to(dtype) if mask_zeros else None
        uniform = bool((w_layer == w_layer[0]).all()) and elem_mask is None
        if cost == "simlocal":
            self.w = elem_mask  # simlocal weights multiply the per-tensor cosines, not the entries
        elif uniform:
            self.w = None
            self.scale = float(w_layer[0])
        else:
            w = self.w_layer[self.seg]
            self.w = w * elem_mask if elem_mask is not None else w
        tw = self.t if self.w is None else self.t * self.w
        if cost == "sim":
            self.t_w = tw  # w ⊙ g
            self.t_norm = torch.sqrt((tw * self.t).sum())
        elif cost == "simlocal":
            self.t_w = tw
            self.t_norms = torch.sqrt(torch.zeros(L, dtype=dtype).index_add_(0, self.seg, tw * self.t))

    def flatten(self, dummy: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([g.reshape(-1) for g in dummy])

    def __call__(self, dummy: Sequence[torch.Tensor] | Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Cost of dummy gradients given in ``self.names`` order (a sequence) or by name (a mapping)."""
        if isinstance(dummy, Mapping):
            dummy = [dummy[n] for n in self.names]
        g = self.flatten(dummy)
        if self.cost == "sim":
            gw = g if self.w is None else g * self.w
            return 1.0 - (gw * self.t).sum() / (torch.sqrt((gw * g).sum()) * self.t_norm).clamp_min(1e-30)
        if self.cost == "simlocal":
            gm = g if self.w is None else g * self.w
            L = len(self.names)
            dots = torch.zeros(L, dtype=g.dtype).index_add(0, self.seg, gm * self.t)
            gn = torch.sqrt(torch.zeros(L, dtype=g.dtype).index_add(0, self.seg, gm * g))
            cos = dots / (gn * self.t_norms).clamp_min(1e-10)
            return (1.0 - cos * self.w_layer).sum()
        d = g - self.t
        d = d.pow(2) if self.cost == "l2" else d.abs()
        if self.w is None:
            return d.sum() * self.scale
        return (d * self.w).sum()


def reference_cost(
    dummy: Sequence[torch.Tensor],
    target: Sequence[torch.Tensor],
    cost: Cost = "sim",
    weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """Per-tensor Python loop, as the original ``reconstruction_costs`` (target norms recomputed every call)."""
    weights = [1.0] * len(target) if weights is None else list(weights)
    total = 0.0
    pnorm = [0.0, 0.0]
    for i in range(len(target)):
        if cost == "l2":
            total = total + ((dummy[i] - target[i]).pow(2)).sum() * weights[i]
        elif cost == "l1":
            total = total + ((dummy[i] - target[i]).abs()).sum() * weights[i]
        elif cost == "sim":
            total = total - (dummy[i] * target[i]).sum() * weights[i]
            pnorm[0] = pnorm[0] + dummy[i].pow(2).sum() * weights[i]
            pnorm[1] = pnorm[1] + target[i].pow(2).sum() * weights[i]
        elif cost == "simlocal":
            total = total + 1 - F.cosine_similarity(dummy[i].flatten(), target[i].flatten(), 0, 1e-10) * weights[i]
        else:
            raise ValueError(cost)
    if cost == "sim":
        total = 1 + total / pnorm[0].sqrt() / pnorm[1].sqrt()
    return total


def total_variation(x: torch.Tensor, kind: Literal["aniso", "iso"] = "aniso") -> torch.Tensor:
    """Mean-normalised total variation of ``[..., H, W]`` images.

    ``aniso`` (IG): ``mean|∂_w x| + mean|∂_h x|``; ``iso``: ``mean sqrt(∂_w x² + ∂_h x² + 1e-8)`` on the common
    ``(H−1)×(W−1)`` grid.
    """
    dw = x[..., :, 1:] - x[..., :, :-1]
    dh = x[..., 1:, :] - x[..., :-1, :]
    if kind == "aniso":
        return dw.abs().mean() + dh.abs().mean()
    if kind == "iso":
        return torch.sqrt(dw[..., :-1, :] ** 2 + dh[..., :, :-1] ** 2 + 1e-8).mean()
    raise ValueError(f"unknown total variation {kind!r}; choose aniso or iso")
