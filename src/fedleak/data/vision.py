"""MNIST, Fashion-MNIST (IDX files) and CIFAR-10/100 (python pickles or the official tar.gz)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedleak.data.archive import safe_extract
from fedleak.data.base import DataError
from fedleak.data.download import (
    DOWNLOAD_HINT,
    CIFAR10_ARCHIVE,
    CIFAR100_ARCHIVE,
    FASHION_MNIST_FILES,
    MNIST_FILES,
    RemoteFile,
    fetch,
)
from fedleak.data.idx import read_idx
from fedleak.data.raw import RawData
from fedleak.data.safe_pickle import safe_load_file

# ----------------------------------------------------------------------------------------- IDX


@dataclass(frozen=True)
class IdxSpec:
    name: str
    subdirs: tuple[str, ...]  # searched in this order; "" is data_dir itself; the first one receives downloads
    files: tuple[RemoteFile, ...]  # train images, train labels, test images, test labels
    class_names: tuple[str, ...]
    default_norm: str


# md5 of the 60,000 decompressed training-label bytes (after the 8-byte header): tells MNIST and
# Fashion-MNIST apart whatever gzip produced the files (their .gz names are identical).
LABEL_FINGERPRINTS = {
    "mnist": "e86ee40d66677c011a9abda399ec8c4d",
    "fashion-mnist": "3236f6424fc25388b2834cb19942cf7e",
}

MNIST = IdxSpec(
    "mnist",
    ("MNIST/raw", "mnist", ""),
    MNIST_FILES,
    tuple(str(i) for i in range(10)),
    "mnist",
)
FASHION_MNIST = IdxSpec(
    "fashion-mnist",
    ("FashionMNIST/raw", "fashion-mnist", "fashion_mnist", ""),
    FASHION_MNIST_FILES,
    ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    "fashion-mnist",
)


def _idx_path(folder: Path, gz_name: str) -> Path | None:
    for cand in (folder / gz_name, folder / gz_name.removesuffix(".gz")):
        if cand.is_file():
            return cand
    return None


def _folder(data_dir: Path, sub: str) -> Path:
    return data_dir.joinpath(*sub.split("/")) if sub else data_dir


def locate_idx(spec: IdxSpec, data_dir: Path) -> Path | None:
    """The first candidate folder that holds all four files (``.gz`` or decompressed)."""
    for sub in spec.subdirs:
        folder = _folder(data_dir, sub)
        if all(_idx_path(folder, rf.name) for rf in spec.files):
            return folder
    return None


def _idx_not_found(spec: IdxSpec, data_dir: Path) -> DataError:
    names = ", ".join(rf.name for rf in spec.files)
    where = " or ".join(str(_folder(data_dir, s)) + "/" for s in spec.subdirs)
    partial = ""
    for sub in spec.subdirs:
        folder = _folder(data_dir, sub)
        have = [rf.name for rf in spec.files if _idx_path(folder, rf.name)]
        if have:
            missing = [rf.name for rf in spec.files if rf.name not in have]
            partial = f" ({folder} lacks {', '.join(missing)})"
            break
    return DataError(
        f"dataset '{spec.name}' not found in {data_dir}{partial}: put the official files {names} into {where}, "
        f"or download them: {DOWNLOAD_HINT}"
    )


def load_idx_raw(spec: IdxSpec, cfg: Any, data_dir: Path, seed: int) -> RawData:
    folder = locate_idx(spec, data_dir)
    if folder is None:
        if not cfg.download:
            raise _idx_not_found(spec, data_dir)
        folder = _folder(data_dir, spec.subdirs[0])
        fetch(spec.files, folder, cfg.mirror)
    paths = [_idx_path(folder, rf.name) for rf in spec.files]
    assert all(paths)
    x_tr = read_idx(paths[0], ndim=3, dtype=0x08)
    y_tr = read_idx(paths[1], ndim=1, dtype=0x08)
    x_te = read_idx(paths[2], ndim=3, dtype=0x08)
    y_te = read_idx(paths[3], ndim=1, dtype=0x08)
    for p, x, y in ((paths[0], x_tr, y_tr), (paths[2], x_te, y_te)):
        if x.shape[1:] != (28, 28):
            raise DataError(f"{p}: images are {x.shape[1]}x{x.shape[2]}, expected 28x28; is this {spec.name}?")
        if x.shape[0] != y.shape[0]:
            raise DataError(f"{p}: {x.shape[0]} images but {y.shape[0]} labels; one of the files is from another set")
        if y.size and int(y.max()) >= 10:
            raise DataError(f"{p}: label {int(y.max())} outside 0..9; the labels file is corrupt")
    fp = hashlib.md5(y_tr.astype(np.uint8).tobytes(), usedforsecurity=False).hexdigest()
    for other, other_fp in LABEL_FINGERPRINTS.items():
        if other != spec.name and fp == other_fp:
            raise DataError(
                f"the files in {folder} are {other}, not {spec.name} (both use the same file names); put {spec.name}'s "
                f"files into {_folder(data_dir, spec.subdirs[0])}/"
            )
    return RawData(
        x_train=x_tr[:, None],
        y_train=y_tr.astype(np.int64),
        x_test=x_te[:, None],
        y_test=y_te.astype(np.int64),
        num_classes=10,
        class_names=list(spec.class_names),
        scale=255.0,
        default_norm=spec.default_norm,
    )


# --------------------------------------------------------------------------------------- CIFAR


@dataclass(frozen=True)
class CifarSpec:
    name: str
    folder: str
    archive: RemoteFile
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: bytes
    names_key: bytes
    num_classes: int
    default_norm: str

    @property
    def all_files(self) -> tuple[str, ...]:
        return (*self.train_files, *self.test_files, self.meta_file)


CIFAR10 = CifarSpec(
    "cifar10",
    "cifar-10-batches-py",
    CIFAR10_ARCHIVE,
    tuple(f"data_batch_{i}" for i in range(1, 6)),
    ("test_batch",),
    "batches.meta",
    b"labels",
    b"label_names",
    10,
    "cifar10-fedmia",  # the FedMIA original's constants (fedleak.data.normalization)
)
CIFAR100 = CifarSpec(
    "cifar100",
    "cifar-100-python",
    CIFAR100_ARCHIVE,
    ("train",),
    ("test",),
    "meta",
    b"fine_labels",
    b"fine_label_names",
    100,
    "cifar10-fedmia",  # parity with the FedMIA original, which normalises CIFAR-100 with these constants
)


def locate_cifar(spec: CifarSpec, data_dir: Path) -> tuple[str, Path] | None:
    """``("dir", folder)`` for extracted pickles, ``("archive", tar.gz)``, or None."""
    for folder in (data_dir / spec.folder, data_dir):
        if all((folder / f).is_file() for f in spec.all_files):
            return "dir", folder
    archive = data_dir / spec.archive.name
    if archive.is_file():
        return "archive", archive
    return None


def _cifar_not_found(spec: CifarSpec, data_dir: Path) -> DataError:
    folder = data_dir / spec.folder
    partial = ""
    if folder.is_dir():
        missing = [f for f in spec.all_files if not (folder / f).is_file()]
        partial = f" ({folder} lacks {', '.join(missing)})"
    return DataError(
        f"dataset '{spec.name}' not found in {data_dir}{partial}: put {spec.archive.name} "
        f"(or the extracted {spec.folder}/) there, or download it: {DOWNLOAD_HINT}"
    )


def _read_batch(spec: CifarSpec, path: Path) -> tuple[np.ndarray, np.ndarray]:
    d = safe_load_file(path)
    if not isinstance(d, dict) or b"data" not in d or spec.label_key not in d:
        keys = sorted(k.decode(errors="replace") if isinstance(k, bytes) else str(k) for k in d) if isinstance(d, dict) else []
        raise DataError(
            f"{path} is not a {spec.name} batch (needs keys 'data' and '{spec.label_key.decode()}', has {keys}); "
            f"delete it and download again ({DOWNLOAD_HINT})"
        )
    x = d[b"data"]
    y = np.asarray(d[spec.label_key])
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
        desc = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise DataError(f"{path}: 'data' is {desc}, expected uint8 [N, 3072]; delete it and download again ({DOWNLOAD_HINT})")
    if y.ndim != 1 or y.shape[0] != x.shape[0] or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: {y.shape[0] if y.ndim else 0} labels for {x.shape[0]} images; the file is corrupt")
    if y.size and (int(y.min()) < 0 or int(y.max()) >= spec.num_classes):
        raise DataError(f"{path}: labels outside 0..{spec.num_classes - 1}; is this {spec.name}?")
    return x.reshape(-1, 3, 32, 32), y.astype(np.int64)


def _read_cifar_folder(spec: CifarSpec, folder: Path) -> RawData:
    tr = [_read_batch(spec, folder / f) for f in spec.train_files]
    te = [_read_batch(spec, folder / f) for f in spec.test_files]
    meta = safe_load_file(folder / spec.meta_file)
    names_raw = meta.get(spec.names_key) if isinstance(meta, dict) else None
    if not isinstance(names_raw, list) or len(names_raw) != spec.num_classes:
        raise DataError(f"{folder / spec.meta_file}: no list of {spec.num_classes} class names under {spec.names_key!r}")
    names = [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names_raw]
    return RawData(
        x_train=np.concatenate([x for x, _ in tr]),
        y_train=np.concatenate([y for _, y in tr]),
        x_test=np.concatenate([x for x, _ in te]),
        y_test=np.concatenate([y for _, y in te]),
        num_classes=spec.num_classes,
        class_names=names,
        scale=255.0,
        default_norm=spec.default_norm,
    )


def load_cifar_raw(spec: CifarSpec, cfg: Any, data_dir: Path, seed: int) -> RawData:
    found = locate_cifar(spec, data_dir)
    if found is None:
        if not cfg.download:
            raise _cifar_not_found(spec, data_dir)
        fetch([spec.archive], data_dir, cfg.mirror)
        found = ("archive", data_dir / spec.archive.name)
    kind, path = found
    if kind == "dir":
        return _read_cifar_folder(spec, path)
    with contextlib.ExitStack() as stack:
        dest = data_dir
        if not os.access(data_dir, os.W_OK):  # read-only data dir: extract to a throw-away folder
            dest = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fedleak-")))
        folder = safe_extract(path, dest, spec.folder)
        missing = [f for f in spec.all_files if not (folder / f).is_file()]
        if missing:
            raise DataError(f"{path} lacks {', '.join(missing)}; it is not the official archive - download it again")
        return _read_cifar_folder(spec, folder)
