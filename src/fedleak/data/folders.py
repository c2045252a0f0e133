"""Image-file datasets: a class-per-folder tree (``imagefolder``, ``dermnet``) and HAM10000.

Images are decoded with Pillow, converted to RGB and resized to ``image_size`` x ``image_size``
(default 64; the aspect ratio is not kept, like ``Resize((s, s))``) with antialiased bilinear
interpolation (``torch.nn.functional.interpolate``). Only the rows that survive the split and
``max_train``/``max_test`` are decoded.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fedleak.data.base import DataError, check_memory
from fedleak.data.raw import RawData
from fedleak.data.splits import stratified_split

# the extensions torchvision's ImageFolder accepts, so that Dermnet lists the same files in the same order
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DEFAULT_IMAGE_SIZE = 64


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow ships with matplotlib
        raise DataError("image-folder datasets need Pillow: pip install pillow") from None
    return Image


def decode_image(path: Path, size: int) -> torch.Tensor:
    """``[3, size, size]`` float32 in [0, 1]."""
    Image = _pil()
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot decode image {path}: {e}; remove or replace the file") from e
    t = torch.from_numpy(arr.copy()).permute(2, 0, 1).unsqueeze(0).to(torch.float32).div_(255.0)
    if t.shape[-2:] != (size, size):
        t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return t[0].clamp_(0.0, 1.0)


def decode_images(paths: list[Path], size: int) -> torch.Tensor:
    out = torch.empty((len(paths), 3, size, size), dtype=torch.float32)
    for i, p in enumerate(paths):
        out[i] = decode_image(p, size)
    return out


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def list_class_folders(root: Path) -> tuple[list[str], list[tuple[Path, str]]]:
    """Sorted class names and ``(path, class)`` for every image, classes in sorted order and files
    sorted within each class folder (searched recursively), the order torchvision's ImageFolder uses."""
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist: set data.root to a folder with one subfolder per class")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    items: list[tuple[Path, str]] = []
    empty: list[Path] = []
    for c in classes:
        before = len(items)
        for dirpath, _, files in sorted(os.walk(root / c, followlinks=True)):
            items.extend((Path(dirpath) / f, c) for f in sorted(files) if _is_image(f))
        if len(items) == before:
            empty.append(root / c)
    if not classes or not items:
        raise DataError(
            f"no images found in {root}: expected {root}/<class name>/<image>.jpg|png|... (one subfolder per class)"
        )
    if empty:
        more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
        raise DataError(
            f"class folder {empty[0]}{more} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
            f"add images or remove the folder"
        )
    if len(classes) < 2:
        raise DataError(
            f"{root} has only one class folder ({classes[0]}); a classification dataset needs at least 2 "
            f"(one subfolder per class: {root}/<class name>/<image>)"
        )
    return classes, items


def _image_size(cfg: Any) -> int:
    return int(cfg.image_size) if cfg.image_size else DEFAULT_IMAGE_SIZE


def _resolve_root(cfg: Any, data_dir: Path, default_subdirs: tuple[str, ...] = ()) -> Path:
    if cfg.root:
        root = Path(cfg.root).expanduser()
        if not root.is_absolute() and not root.exists() and (data_dir / root).exists():
            root = data_dir / root
        return root
    for sub in default_subdirs:
        if (data_dir / sub).is_dir():
            return data_dir / sub
    hint = f" (or put it at {data_dir / default_subdirs[0]})" if default_subdirs else ""
    raise DataError(f"dataset '{cfg.name}' needs data.root=<folder with one subfolder per class>{hint}")


def _build(
    paths: list[Path], labels: np.ndarray, train: np.ndarray, test: np.ndarray, cfg: Any, classes: list[str], norm: str
) -> RawData:
    if cfg.max_train is not None:
        train = train[: cfg.max_train]
    if cfg.max_test is not None:
        test = test[: cfg.max_test]
    size = _image_size(cfg)
    check_memory(4 * 3 * size * size * (len(train) + len(test)), f"decoding {len(train) + len(test):,} images at "
                 f"{size}x{size}", "lower data.image_size or set data.max_train / data.max_test")
    return RawData(
        x_train=decode_images([paths[i] for i in train], size),
        y_train=labels[train].astype(np.int64),
        x_test=decode_images([paths[i] for i in test], size),
        y_test=labels[test].astype(np.int64),
        num_classes=len(classes),
        class_names=list(classes),
        scale=1.0,
        default_norm=norm,
    )


def load_imagefolder_raw(cfg: Any, data_dir: Path, seed: int) -> RawData:
    """Seeded shuffle (``torch.randperm`` with a generator seeded by ``seed``); the last
    ``round(test_fraction * N)`` rows of the shuffled order are the test split."""
    root = _resolve_root(cfg, data_dir)
    classes, items = list_class_folders(root)
    index = {c: i for i, c in enumerate(classes)}
    paths = [p for p, _ in items]
    labels = np.array([index[c] for _, c in items], dtype=np.int64)
    n = len(paths)
    if n < 2:
        raise DataError(f"{root} holds {n} image(s); an image folder needs at least 2 (one train, one test)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    n_test = min(max(1, round(cfg.test_fraction * n)), n - 1)
    return _build(paths, labels, perm[: n - n_test], perm[n - n_test :], cfg, classes, "dataset")


DERMNET_SEED = 42
DERMNET_TRAIN = 15_000
DERMNET_TEST = 4_000


def dermnet_split_sizes(n: int) -> tuple[int, int]:
    """(train, test) sizes: 15,000 / 4,000 when there are at least 19,000 images, else proportional."""
    if n >= DERMNET_TRAIN + DERMNET_TEST:
        return DERMNET_TRAIN, DERMNET_TEST
    total = DERMNET_TRAIN + DERMNET_TEST
    n_train = n * DERMNET_TRAIN // total
    n_test = n * DERMNET_TEST // total
    return n_train, n_test


def load_dermnet_raw(cfg: Any, data_dir: Path, seed: int) -> RawData:
    """The FedMIA Dermnet protocol: ``root/train`` then ``root/test`` (each class-per-folder, listed
    like ImageFolder; a root without them is one class-per-folder tree) are concatenated, shuffled
    with ``torch.manual_seed(42); torch.randperm(N)`` (``seed`` is ignored), the first 15,000 rows
    train and the last 4,000 test (proportionally fewer when N < 19,000). Normalised by default
    with the CIFAR-10 constants the original uses."""
    root = _resolve_root(cfg, data_dir, ("dermnet", "Dermnet", "DermNet"))
    parts = [root / "train", root / "test"]
    if all(p.is_dir() for p in parts):
        listed = [list_class_folders(p) for p in parts]
    else:
        listed = [list_class_folders(root)]
    classes = sorted({c for cs, _ in listed for c in cs})
    index = {c: i for i, c in enumerate(classes)}
    items = [it for _, its in listed for it in its]
    paths = [p for p, _ in items]
    labels = np.array([index[c] for _, c in items], dtype=np.int64)
    n = len(paths)
    n_train, n_test = dermnet_split_sizes(n)
    if n_train < 1 or n_test < 1:
        raise DataError(f"{root} holds {n} images; the Dermnet split needs at least 5")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(DERMNET_SEED)).numpy()
    return _build(paths, labels, perm[:n_train], perm[n - n_test :], cfg, classes, "cifar10-fedmia")


HAM_CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
HAM_CSV = "HAM10000_metadata.csv"
HAM_SUBDIRS = ("", "HAM10000", "ham10000")
HAM_IMAGE_DIRS = ("images", "HAM10000_images_part_1", "HAM10000_images_part_2", "HAM10000_images", "")


def locate_ham(data_dir: Path) -> Path | None:
    for sub in HAM_SUBDIRS:
        if (data_dir / sub / HAM_CSV).is_file():
            return data_dir / sub
    return None


def load_ham10000_raw(cfg: Any, data_dir: Path, seed: int) -> RawData:
    """Rows of ``HAM10000_metadata.csv`` (``image_id``, ``dx``; ``lesion_id`` when present), images
    ``<image_id>.jpg`` from ``images/`` or ``HAM10000_images_part_1/2``. Classes are the 7 dx codes
    sorted. The train/test split is seeded, stratified by dx and grouped by ``lesion_id`` (images of
    one lesion never straddle train and test; otherwise near-duplicates would leak membership)."""
    base = locate_ham(data_dir)
    if base is None:
        raise DataError(
            f"dataset 'ham10000' not found in {data_dir}: put {HAM_CSV} and the images (images/ or "
            f"HAM10000_images_part_1/ and _part_2/) there or in {data_dir / 'HAM10000'}/; HAM10000 is not downloadable "
            f"automatically (get it from https://doi.org/10.7910/DVN/DBW86T)"
        )
    csv_path = base / HAM_CSV
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {csv_path}: {e}") from e
    if not rows or not {"image_id", "dx"} <= set(rows[0]):
        raise DataError(f"{csv_path} needs the columns image_id and dx (the official HAM10000 metadata)")
    files: dict[str, Path] = {}
    for sub in HAM_IMAGE_DIRS:
        folder = base / sub
        if folder.is_dir():
            for e in os.scandir(folder):
                stem, ext = os.path.splitext(e.name)
                if ext.lower() in (".jpg", ".jpeg", ".png") and stem not in files:
                    files[stem] = Path(e.path)
    index = {c: i for i, c in enumerate(HAM_CLASSES)}
    paths, labels, groups = [], [], []
    for r in rows:
        image_id, dx = (r["image_id"] or "").strip(), (r["dx"] or "").strip()
        if dx not in index:
            raise DataError(f"{csv_path}: unknown dx {dx!r} for {image_id}; expected one of {', '.join(HAM_CLASSES)}")
        if image_id not in files:
            raise DataError(
                f"image {image_id}.jpg listed in {csv_path} not found in {base}/images/ or "
                f"{base}/HAM10000_images_part_1|2/; put the images there"
            )
        paths.append(files[image_id])
        labels.append(index[dx])
        groups.append((r.get("lesion_id") or "").strip() or image_id)
    labels_arr = np.array(labels, dtype=np.int64)
    train, test = stratified_split(labels_arr, cfg.test_fraction, np.random.default_rng(seed), np.array(groups))
    return _build(paths, labels_arr, train, test, cfg, list(HAM_CLASSES), "dataset")
