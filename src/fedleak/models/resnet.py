"""ResNet18 with GroupNorm(32) everywhere (FedMIA's `resnet_cifar.py`, fedmia.md §1.5).

CIFAR stem (3x3 conv, stride 1, no max-pool), stages 64/128/256/512 with strides 1/2/2/2, global average pool,
Linear(512, C). No running statistics, so train/eval are identical and per-sample gradients are exact.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _gn(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels)


class BasicBlockGN(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.gn1 = _gn(planes, groups)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.gn2 = _gn(planes, groups)
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), _gn(planes, groups)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.gn1(self.conv1(x)))
        out = self.gn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18GN(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, groups: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.gn1 = _gn(64, groups)
        layers = []
        in_planes = 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks = [BasicBlockGN(in_planes, planes, stride, groups), BasicBlockGN(planes, planes, 1, groups)]
            layers.append(nn.Sequential(*blocks))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.gn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = out.mean(dim=(-2, -1))  # global average pool
        return self.linear(out)
