"""Sigmoid LeNets used by the gradient-inversion literature (inversion.md §1.1, §1.3, §2.2).

* ``LeNetDLG``: DLG's 3-conv LeNet (12 channels, 5x5, strides 2/2/1, padding 2, Sigmoid) -> Linear(flat, C).
  768 features at 32x32, 588 at 28x28.
* ``LeNetSoteria``: Soteria's 4-conv variant (strides 2/2/1/1) -> ``fc`` = Linear(flat, C). ``fc`` is a plain
  ``nn.Linear`` so a representation defence can hook its input by module name ``"fc"``.
"""

from __future__ import annotations

import torch
from torch import nn

from fedleak.models._common import conv_out


def _sigmoid_convs(in_channels: int, strides: tuple[int, ...], width: int = 12) -> nn.Sequential:
    layers: list[nn.Module] = []
    c = in_channels
    for s in strides:
        layers += [nn.Conv2d(c, width, kernel_size=5, stride=s, padding=2), nn.Sigmoid()]
        c = width
    return nn.Sequential(*layers)


def _flat_dim(input_shape: tuple[int, int, int], strides: tuple[int, ...], width: int = 12) -> int:
    _, h, w = input_shape
    for s in strides:
        h, w = conv_out(h, 5, s, 2), conv_out(w, 5, s, 2)
    return width * h * w


class _SigmoidLeNet(nn.Module):
    strides: tuple[int, ...] = ()

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.body = _sigmoid_convs(input_shape[0], self.strides)
        self.feature_dim = _flat_dim(input_shape, self.strides)
        self.fc = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class LeNetDLG(_SigmoidLeNet):
    strides = (2, 2, 1)


class LeNetSoteria(_SigmoidLeNet):
    strides = (2, 2, 1, 1)
