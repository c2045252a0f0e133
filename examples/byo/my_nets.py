"""Your own model, outside fedleak: a factory ``make_net(num_classes, input_shape, **options) -> nn.Module``.

fedleak calls it once per run after seeding torch's global RNG, so draw the initial weights from torch (the
default nn initialisation does). Name it in a config as ``model: {name: "my_nets:make_net", options: {...}}``.
"""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """conv(3x3) -> ReLU -> 2x2 max-pool -> linear; BatchNorm-free (for a BatchNorm model see docs/byo.md)."""

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int], width: int) -> None:
        super().__init__()
        channels, height, width_px = input_shape
        self.conv = nn.Conv2d(channels, width, kernel_size=3, padding=1)
        self.head = nn.Linear(width * (height // 2) * (width_px // 2), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)
        return self.head(h.flatten(1))


def make_net(num_classes: int, input_shape: tuple[int, int, int], width: int = 8) -> nn.Module:
    return SmallCNN(num_classes, input_shape, width)
