"""Datasets that need no files: scikit-learn's digits and a seeded synthetic set."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from fedleak.data.base import DataError, check_memory
from fedleak.data.raw import RawData
from fedleak.data.splits import stratified_split


def load_digits_raw(cfg: Any, data_dir: Path, seed: int) -> RawData:
    """1,797 8x8 images (values 0..16) with a seeded stratified train/test split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32)[:, None]  # [N, 1, 8, 8], 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    train, test = stratified_split(labels, cfg.test_fraction, np.random.default_rng(seed))
    return RawData(
        x_train=images[train],
        y_train=labels[train],
        x_test=images[test],
        y_test=labels[test],
        num_classes=10,
        class_names=[str(i) for i in range(10)],
        scale=16.0,
    )


MAX_SYNTHETIC_SIZE = 1024

SYNTHETIC_DEFAULTS: dict[str, Any] = {
    "n_train": 512,
    "n_test": 256,
    "num_classes": 10,
    "channels": 1,
    "size": 16,
    "noise": 0.25,
}


def synthetic_options(options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(SYNTHETIC_DEFAULTS))
    if unknown:
        raise DataError(f"unknown data.synthetic option(s) {unknown}; known: {sorted(SYNTHETIC_DEFAULTS)}")
    opts = {**SYNTHETIC_DEFAULTS, **options}
    for key in ("n_train", "n_test", "num_classes", "channels", "size"):
        v = opts[key]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise DataError(f"data.synthetic.{key} must be a positive integer, got {v!r}")
        opts[key] = int(v)
    if opts["num_classes"] < 2:
        raise DataError("data.synthetic.num_classes must be at least 2")
    if opts["channels"] not in (1, 3):
        raise DataError(f"data.synthetic.channels must be 1 or 3, got {opts['channels']}")
    try:
        opts["noise"] = float(opts["noise"])
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"data.synthetic.noise must be a number, got {opts['noise']!r}") from None
    if not (math.isfinite(opts["noise"]) and opts["noise"] >= 0):
        raise DataError(f"data.synthetic.noise must be a finite number >= 0, got {opts['noise']!r}")
    if opts["size"] > MAX_SYNTHETIC_SIZE:
        raise DataError(f"data.synthetic.size must be <= {MAX_SYNTHETIC_SIZE}, got {opts['size']}")
    # float64 draws: the class patterns plus about two temporaries of every image
    nbytes = 8 * (opts["num_classes"] + 2 * (opts["n_train"] + opts["n_test"]))
    check_memory(nbytes * opts["channels"] * opts["size"] ** 2, f"data.synthetic ({opts['n_train']:,} + "
                 f"{opts['n_test']:,} images of {opts['size']}x{opts['size']}, {opts['num_classes']:,} classes)",
                 "lower data.synthetic.n_train / n_test / size / num_classes")
    return opts


def load_synthetic_raw(cfg: Any, data_dir: Path, seed: int) -> RawData:
    """Class k's images are a fixed random pattern ``mu_k`` (uniform in [0.2, 0.8]) plus Gaussian
    noise of std ``noise``, clipped to [0, 1]. Labels cycle through the classes (balanced) and are
    shuffled. Everything derives from ``seed``."""
    o = synthetic_options(dict(cfg.synthetic))
    rng = np.random.default_rng(seed)
    k, c, s = o["num_classes"], o["channels"], o["size"]
    patterns = rng.uniform(0.2, 0.8, size=(k, c, s, s))

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.permutation(np.arange(n) % k).astype(np.int64)
        x = patterns[y] + o["noise"] * rng.standard_normal((n, c, s, s))
        return np.clip(x, 0.0, 1.0).astype(np.float32), y

    x_tr, y_tr = draw(o["n_train"])
    x_te, y_te = draw(o["n_test"])
    return RawData(x_tr, y_tr, x_te, y_te, num_classes=k, class_names=[f"class{i}" for i in range(k)], scale=1.0)
