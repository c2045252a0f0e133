"""FedMIA's AlexNet, CIFAR variant (fedmia.md §1.5): 5 convs, two 2x2 max-pools, global max pool, Linear(256, C).

No BatchNorm, no dropout; ReLUs are out-of-place so torch.func transforms work.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class AlexNetCifar(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=11, stride=4, padding=5)
        self.conv2 = nn.Conv2d(64, 192, kernel_size=5, padding=2)
        self.conv3 = nn.Conv2d(192, 384, kernel_size=3, padding=1)
        self.conv4 = nn.Conv2d(384, 256, kernel_size=3, padding=1)
        self.conv5 = nn.Conv2d(256, 256, kernel_size=3, padding=1)
        self.fc = nn.Linear(256, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2, 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2, 2)
        x = F.relu(self.conv3(x))
        x = F.relu(self.conv4(x))
        x = F.relu(self.conv5(x))
        # global max pool over the whole spatial extent (the original uses a square window of x.shape[-1])
        return torch.amax(x, dim=(-2, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))
