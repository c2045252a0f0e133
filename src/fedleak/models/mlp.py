"""A plain MLP: flatten -> [Linear -> ReLU]* -> Linear(C). Works for any input shape."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, num_classes: int, input_shape: tuple[int, int, int], hidden: Sequence[int] = (256, 128)) -> None:
        super().__init__()
        widths = list(hidden) if isinstance(hidden, (list, tuple)) else None
        if widths is None or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in widths):
            raise ValueError(f"mlp: hidden must be a list of positive integers, e.g. [256, 128], got {hidden!r}")
        dims = [math.prod(input_shape), *widths]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(dims[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))
