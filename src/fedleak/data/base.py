"""In-memory dataset container shared by every loader.

Images are kept as float32 tensors in [0, 1] with shape [N, C, H, W]; normalisation is applied
separately (``Dataset.normalize``) so that augmentation, mixing and image metrics can work in
pixel space.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from fedleak.errors import DataError  # noqa: F401  (re-exported: its historical home)


def physical_memory() -> int | None:
    """Bytes of RAM of this machine (None where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(nbytes: int, what: str, advice: str) -> None:
    """Refuse, before allocating, an array that would take more than half of this machine's memory."""
    ram = physical_memory()
    if ram is not None and nbytes > ram // 2:
        raise DataError(
            f"{what} needs {nbytes / 2**30:,.1f} GiB, more than half of this machine's {ram / 2**30:,.1f} GiB of "
            f"memory; {advice}"
        )


@dataclass
class Split:
    x: torch.Tensor  # float32 [N, C, H, W] in [0, 1]
    y: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class Dataset:
    name: str
    train: Split
    test: Split
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str] = field(default_factory=list)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.x.shape[1:]
        return int(c), int(h), int(w)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map [0,1] pixels to the model's input space ((x - mean) / std per channel)."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return x * std + mean
