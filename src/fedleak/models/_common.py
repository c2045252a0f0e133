"""Small shared helpers for the model zoo."""

from __future__ import annotations

import torch
from torch import nn


def check_input_shape(input_shape) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (channels, height, width) with positive entries, got {input_shape!r}")
    return shape  # type: ignore[return-value]


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Spatial output size of a convolution / pooling window (floor mode)."""
    return (size + 2 * padding - kernel) // stride + 1


def uniform_init_(module: nn.Module, bound: float = 0.5) -> None:
    """Re-initialise every weight and bias of every submodule U(-bound, bound), as DLG does."""
    with torch.no_grad():
        for m in module.modules():
            for name in ("weight", "bias"):
                p = getattr(m, name, None)
                if isinstance(p, nn.Parameter):
                    p.uniform_(-bound, bound)


def apply_init(module: nn.Module, init: str, model_name: str) -> None:
    if init == "uniform":
        uniform_init_(module)
    elif init != "default":
        raise ValueError(f"{model_name}: unknown init {init!r}; choose from: default, uniform")
