"""Your own data, outside fedleak: a loader ``load(**options)`` fedleak calls with the config's ``data.options``.

It may return ``(x_train, y_train, x_test, y_test)`` (images float in [0, 1] or uint8, ``[N, C, H, W]``; labels
integer class indices), a ``(train, test)`` pair of ``torch.utils.data.Dataset`` yielding ``(image, label)``, or a
fedleak ``Dataset``. A ``seed`` parameter, if the loader has one, receives the run's seed. Return unnormalised
pixels: fedleak normalises them itself (``data.normalization``; by default with the training set's statistics).

Here: scikit-learn's 8x8 handwritten digits (shipped with scikit-learn, no download), as 16x16 images.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits


def _digits(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    d = load_digits()
    x = torch.as_tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [1797, 1, 8, 8] in [0, 1]
    if size != 8:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    return x, torch.as_tensor(d.target, dtype=torch.int64)


def load(test_fraction: float = 0.25, size: int = 16, seed: int = 0):
    """Four tensors: a seeded shuffle of the digits split into train and test."""
    x, y = _digits(size)
    order = torch.as_tensor(np.random.default_rng(seed).permutation(len(y)))
    n_test = int(round(test_fraction * len(y)))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


class Digits(torch.utils.data.Dataset):
    """The same images as a map-style torch dataset (``classes`` tells fedleak the number of classes)."""

    classes = [str(d) for d in range(10)]

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.y[i])


def load_datasets(test_fraction: float = 0.25, size: int = 16, seed: int = 0):
    """A (train, test) pair of torch datasets holding what :func:`load` returns."""
    x_tr, y_tr, x_te, y_te = load(test_fraction, size, seed)
    return Digits(x_tr, y_tr), Digits(x_te, y_te)
