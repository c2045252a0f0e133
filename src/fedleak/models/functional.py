"""The functional building blocks every pipeline shares (one copy each).

* :func:`soft_cross_entropy` — the training loss for hard ``[B]`` or soft ``[B, C]`` labels;
* :func:`per_sample_grad_fn` — per-sample parameter gradients with ``torch.func.vmap(grad)`` (signals, DP-SGD,
  the DP gradient transform);
* :func:`batchnorm_state_names` — the parameters and buffers of a model's BatchNorm layers (FedBN keeps them local);
* :func:`module_by_name` — a layer looked up by its ``named_modules()`` name (Soteria, layer-wise defenses);
* :func:`largest_k_mask` / :func:`smallest_k_mask` — the top-k selections of the sparsification and pruning
  defenses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def soft_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy for hard labels ``[B]`` (int) or soft labels / probabilities ``[B, C]``."""
    if y.dtype.is_floating_point:
        return -(y * F.log_softmax(logits, dim=-1)).sum(-1).mean()
    return F.cross_entropy(logits, y)


def per_sample_grad_fn(
    model: nn.Module,
    frozen: Mapping[str, torch.Tensor],
    loss_fn: LossFn = soft_cross_entropy,
    *,
    with_loss: bool = False,
    randomness: str = "error",
) -> Callable:
    """``fn(params, x [B, ...], y [B]) -> {name: [B, *shape]}`` per-sample gradients of ``loss_fn`` on each sample
    alone (``with_loss``: ``(grads, losses [B])``). ``params`` are the differentiated parameters, ``frozen`` the
    rest of the model's state (buffers, parameters not differentiated), both passed to ``functional_call``."""
    rest = dict(frozen)

    def loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        logits = torch.func.functional_call(model, (p, rest), (xi.unsqueeze(0),))
        return loss_fn(logits, yi.unsqueeze(0))  # a batch of one: mean == the sample's loss

    g = torch.func.grad_and_value(loss) if with_loss else torch.func.grad(loss)
    return torch.func.vmap(g, in_dims=(None, 0, 0), randomness=randomness)


def batchnorm_state_names(model: nn.Module) -> frozenset[str]:
    """Names (as in ``named_parameters()`` / ``named_buffers()``) of every parameter and buffer that belongs to a
    BatchNorm layer (``BatchNorm1d/2d/3d``, ``SyncBatchNorm``, lazy variants): affine weight and bias, running mean
    and variance, ``num_batches_tracked``."""
    names: set[str] = set()
    for prefix, mod in model.named_modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            pre = f"{prefix}." if prefix else ""
            names.update(pre + n for n, _ in mod.named_parameters(recurse=False))
            names.update(pre + n for n, _ in mod.named_buffers(recurse=False))
    return frozenset(names)


def module_by_name(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` in ``model.named_modules()``; a ValueError lists the nn.Linear names."""
    modules = dict(model.named_modules())
    if name not in modules:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise ValueError(f"no module named {name!r} in {type(model).__name__}; its nn.Linear modules: {linears}")
    return modules[name]


def largest_k_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask (shape of ``values``) of exactly ``k`` entries with the largest ``|value|``
    (``torch.topk``; among equal magnitudes its choice)."""
    flat = values.reshape(-1).abs()
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    if k > 0:
        mask[torch.topk(flat, k, sorted=False).indices] = True
    return mask.view(values.shape)


def smallest_k_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask (shape of ``values``) that drops exactly the ``k`` smallest entries (ties: lower index first)."""
    keep = torch.ones(values.numel(), dtype=torch.bool, device=values.device)
    if k > 0:
        keep[torch.sort(values.flatten(), stable=True).indices[:k]] = False
    return keep.view(values.shape)


__all__ = [
    "LossFn", "batchnorm_state_names", "largest_k_mask", "module_by_name", "per_sample_grad_fn", "smallest_k_mask", "soft_cross_entropy",
]
