"""A plain MLP: flatten -> [Linear -> ReLU]* -> Linear(C). Works for any input shape."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, num_classes: int, input_shape: tuple[int, int, int], hidden: Sequence[int] = (256, 128)) -> None:
        super().__init__()
        dims = [math.prod(input_shape), *[int(h) for h in hidden]]
        if any(d < 1 for d in dims):
            raise ValueError(f"mlp: hidden sizes must be positive, got {list(hidden)!r}")
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(dims[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))
