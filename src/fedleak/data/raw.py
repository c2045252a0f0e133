"""What a dataset loader hands to the generic post-processing (see ``registry.finalize``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class RawData:
    """Images as ``[N, C, H, W]`` numpy/torch arrays; ``x / scale`` lies in [0, 1]."""

    x_train: np.ndarray | torch.Tensor
    y_train: np.ndarray
    x_test: np.ndarray | torch.Tensor
    y_test: np.ndarray
    num_classes: int
    class_names: list[str] = field(default_factory=list)
    scale: float = 255.0
    default_norm: str = "dataset"  # a key of fedleak.data.normalization.NORMALIZATIONS, or "dataset"
    stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # (mean, std) a user's Dataset came with
