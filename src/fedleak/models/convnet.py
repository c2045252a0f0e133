"""Inverting Gradients' ConvNet (width 64), as in Soteria's GS attack (inversion.md §2.2).

8 conv3x3(pad 1) layers with channels 3->64->128->128->256->256->256, MaxPool2d(3), 256->256->256, MaxPool2d(3),
flatten (2304 = 256*3*3 at 32x32) -> ``linear`` = Linear(2304, C).

The original has BatchNorm after every conv: ``norm="batch"`` is that (``BatchNorm2d``, running statistics as
buffers; the Soteria GS script runs it in eval mode right after initialisation, i.e. with running mean 0 and
variance 1). The other norms need no buffers and couple no samples: ``norm="instance"`` (default) is
GroupNorm(C, C), which is exactly what train-mode BN computes for a batch of one image; ``norm="group"`` is
GroupNorm(32, C); ``norm="none"`` drops it. With a norm, the parameter count matches the original: 2,904,970 for
C=10 on 3x32x32.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from fedleak.models._common import conv_out

_NORMS = ("instance", "group", "batch", "none")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.GroupNorm(channels, channels)
    if kind == "group":
        return nn.GroupNorm(min(32, channels), channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.Identity()


class ConvNet(nn.Module):
    def __init__(
        self, num_classes: int, input_shape: tuple[int, int, int], width: int = 64, norm: str = "instance"
    ) -> None:
        super().__init__()
        if norm not in _NORMS:
            raise ValueError(f"convnet: unknown norm {norm!r}; choose from: {', '.join(_NORMS)}")
        c_in, h, w = input_shape
        chans = [c_in, width, 2 * width, 2 * width, 4 * width, 4 * width, 4 * width, 4 * width, 4 * width]
        self.convs = nn.ModuleList(nn.Conv2d(chans[i], chans[i + 1], 3, padding=1) for i in range(8))
        self.norms = nn.ModuleList(_norm(norm, chans[i + 1]) for i in range(8))
        for _ in range(2):  # two MaxPool2d(3) (kernel 3, stride 3)
            h, w = conv_out(h, 3, 3), conv_out(w, 3, 3)
        if h < 1 or w < 1:
            raise ValueError(f"convnet: input {input_shape} is too small (needs at least 9x9)")
        self.feature_dim = chans[-1] * h * w
        self.linear = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = F.relu(norm(conv(x)))
            if i in (5, 7):
                x = F.max_pool2d(x, 3)
        return x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x))
