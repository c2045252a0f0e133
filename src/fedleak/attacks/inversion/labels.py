"""Analytic label recovery from the classifier layer's gradient (iDLG and its bias-sign variant).

For softmax cross-entropy and one sample, ``∂ℓ/∂W = (p − e_y) rᵀ`` and ``∂ℓ/∂b = p − e_y``. With a
non-negative representation ``r`` (sigmoid/ReLU features) row ``c`` of ``∂ℓ/∂W`` is negative only for the true
class, so

* ``"rowsum"`` (iDLG): ``y = argmin_c Σ_k g_W[c, k]``;
* ``"bias"``: ``y = argmin_c g_b[c]`` (the only negative bias entry; needs no sign assumption on ``r``).

A FedAvg update ``θ_0 − θ_K`` has the same sign pattern for small learning rates. For ``B > 1`` images the
``B`` most negative classes are returned: exact when the labels in the batch are distinct (a stated
limitation; repeated labels cannot be separated this way).

The classifier layer is addressed by module name (default: the model's last ``nn.Linear``), never by a
parameter index.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import nn

from fedleak.defenses.gradient import last_linear, linear_param_names


def class_scores(
    update: Mapping[str, torch.Tensor],
    model: nn.Module,
    method: Literal["rowsum", "bias"] = "rowsum",
    layer: str | None = None,
) -> torch.Tensor:
    """Per-class score ``[C]`` whose most negative entries are the recovered labels."""
    wname, bname = linear_param_names(model, layer or last_linear(model))
    if method == "rowsum":
        return update[wname].detach().double().sum(1)
    if method == "bias":
        if bname is None:
            raise ValueError(f"label method 'bias' needs a bias in {wname.rsplit('.', 1)[0]!r}")
        return update[bname].detach().double()
    raise ValueError(f"unknown label method {method!r}; choose rowsum or bias")


def infer_labels(
    update: Mapping[str, torch.Tensor],
    model: nn.Module,
    num_images: int = 1,
    method: Literal["rowsum", "bias"] = "rowsum",
    layer: str | None = None,
) -> torch.Tensor:
    """Recovered labels ``[num_images]`` (int64), most confident first."""
    s = class_scores(update, model, method, layer)
    if num_images > s.numel():
        raise ValueError(f"cannot recover {num_images} distinct labels from {s.numel()} classes")
    return torch.argsort(s, stable=True)[:num_images].to(torch.long)
