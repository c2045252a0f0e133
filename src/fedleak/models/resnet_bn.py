"""CIFAR ResNets with BatchNorm: ResNet-18 (the GroupNorm ResNet18's layout with BN) and He et al.'s ResNet-20.

* :class:`ResNet18BN`: CIFAR stem (3x3 conv, stride 1, no max-pool), stages 64/128/256/512 of two basic blocks with
  strides 1/2/2/2, projection shortcuts (1x1 conv + BN) where the shape changes, global average pool,
  ``linear`` = Linear(512, C). 11,173,962 parameters for C=10 (the usual CIFAR ResNet-18).
* :class:`ResNet20BN`: He et al. 2016, §4.2 (CIFAR-10): 3x3 conv with 16 channels, then 3 stages x 3 basic blocks
  with 16/32/64 channels (strides 1/2/2), global average pool, ``linear`` = Linear(64, C). Shortcuts are the paper's
  option A (parameter-free: identity, or stride-2 subsampling with zero-padded extra channels), so the network has
  the paper's 0.27M parameters (272,474 for C=10).

Every conv is bias-free and followed by ``BatchNorm2d`` (running statistics as buffers). In train mode a sample's
output depends on its batch mates and the running statistics are updated; in eval mode the model is a fixed
per-sample function of the running statistics (what fedleak's signals and the inversion victim in ``bn_mode:
eval`` use; docs/byo.md "BatchNorm models").
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _conv3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class BasicBlockBN(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU. ``shortcut="conv"``: 1x1 conv + BN where the
    shape changes (ResNet-18); ``"pad"``: He et al.'s option A (subsample, zero-pad the new channels)."""

    def __init__(self, c_in: int, c_out: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = _conv3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = _conv3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.stride, self.extra = stride, c_out - c_in
        self.project = shortcut == "conv" and (stride != 1 or c_in != c_out)
        if self.project:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )
        else:
            self.shortcut = nn.Identity()

    def _skip(self, x: torch.Tensor) -> torch.Tensor:
        if self.project or (self.stride == 1 and self.extra == 0):
            return self.shortcut(x)
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self._skip(x))


class _CifarResNetBN(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, widths: tuple[int, ...], strides: tuple[int, ...],
                 blocks: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = _conv3(in_channels, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, c_in = [], widths[0]
        for width, stride in zip(widths, strides):
            stage = [BasicBlockBN(c_in, width, stride, shortcut)]
            stage += [BasicBlockBN(width, width, 1, shortcut) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            c_in = width
        self.stages = nn.Sequential(*stages)
        self.linear = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stages(F.relu(self.bn1(self.conv1(x))))
        return self.linear(out.mean(dim=(-2, -1)))  # global average pool


class ResNet18BN(_CifarResNetBN):
    def __init__(self, num_classes: int, in_channels: int = 3) -> None:
        super().__init__(num_classes, in_channels, (64, 128, 256, 512), (1, 2, 2, 2), 2, "conv")


class ResNet20BN(_CifarResNetBN):
    def __init__(self, num_classes: int, in_channels: int = 3) -> None:
        super().__init__(num_classes, in_channels, (16, 32, 64), (1, 2, 2), 3, "pad")


__all__ = ["BasicBlockBN", "ResNet18BN", "ResNet20BN"]
