"""The dataset registry: ``load_dataset(DataConfig)`` and ``describe_datasets(data_dir)``.

Every loader returns raw arrays; one generic post-processing step then applies, in this order:

1. ``max_train`` / ``max_test``: keep the first N rows of each split (after any seeded split).
2. ``channels``: 1 -> 3 replicates the grey channel; 3 -> 1 is the luminance
   ``0.299 R + 0.587 G + 0.114 B`` (ITU-R 601, as PIL's ``convert("L")``).
3. ``image_size``: antialiased bilinear resize (``torch.nn.functional.interpolate``) to a square.
4. normalisation (``Dataset.mean`` / ``Dataset.std``; pixels themselves stay in [0, 1]):

   ============== ==========================================================================
   normalization  mean / std
   ============== ==========================================================================
   ``default``    the dataset's documented constants (table below)
   ``none``       mean 0, std 1 (``normalize`` is the identity)
   ``dataset``    per-channel mean / std of the final training split (population std)
   ``mnist``      (0.1307,) / (0.3081,)
   ``fashion-mnist`` (0.2860,) / (0.3530,)
   ``cifar10``    (0.4914, 0.4822, 0.4465) / (0.2470, 0.2435, 0.2616) (true CIFAR-10 stats)
   ``cifar100``   (0.5071, 0.4865, 0.4409) / (0.2673, 0.2564, 0.2762) (true CIFAR-100 stats)
   ``cifar10-fedmia`` (0.4914, 0.4822, 0.4465) / (0.2023, 0.1994, 0.2010) (the FedMIA original's constants)
   ``*-ig``       the inversion originals' full-precision constants (see ``fedleak.data.normalization``)
   ============== ==========================================================================

   ``default`` per dataset: mnist -> ``mnist``; fashion-mnist -> ``fashion-mnist``; cifar10 ->
   ``cifar10-fedmia``; **cifar100 -> ``cifar10-fedmia``** (the FedMIA original normalises CIFAR-100 with
   those constants; ask for ``cifar100`` to get the true statistics); dermnet -> ``cifar10-fedmia``
   (as the original's preprocessing); digits, synthetic, ham10000, imagefolder -> ``dataset``.
   One-channel constants are replicated when images are forced to 3 channels; when 3-channel
   constants meet images forced to 1 channel, ``default`` falls back to ``dataset`` statistics
   (an explicit ``cifar10``/``cifar100`` is then an error). All constants live in one table,
   :data:`fedleak.data.normalization.NORMALIZATIONS`.

Images are float32 ``[N, C, H, W]`` in [0, 1], labels int64 (see ``fedleak.data.base``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from fedleak.data import builtin, custom, folders, vision
from fedleak.data.base import DataError, Dataset, Split, check_memory
from fedleak.data.paths import resolve_data_dir
from fedleak.data.normalization import NORMALIZATIONS
from fedleak.data.raw import RawData
from fedleak.registry import Registry

if TYPE_CHECKING:
    from fedleak.config import DataConfig

USER_LAYOUT = "(your loader)"  # the layout of a loader named by import path
NORMALIZATION_CHOICES = ("default", "none", "dataset", *NORMALIZATIONS)
LUMINANCE = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    description: str
    layout: str  # expected files, relative to the data dir
    source: str
    license: str
    downloadable: bool
    loader: Callable[[Any, Path, int], RawData]
    locate: Callable[[Path], str | None] | None  # None: needs no files / not located in data_dir
    aliases: tuple[str, ...] = field(default=())


def _locate_idx(spec: vision.IdxSpec) -> Callable[[Path], str | None]:
    def f(d: Path) -> str | None:
        p = vision.locate_idx(spec, d)
        return str(p) if p else None

    return f


def _locate_cifar(spec: vision.CifarSpec) -> Callable[[Path], str | None]:
    def f(d: Path) -> str | None:
        found = vision.locate_cifar(spec, d)
        return str(found[1]) if found else None

    return f


def _locate_ham(d: Path) -> str | None:
    p = folders.locate_ham(d)
    return str(p) if p else None


def _locate_dermnet(d: Path) -> str | None:
    for sub in ("dermnet", "Dermnet", "DermNet"):
        if (d / sub).is_dir():
            return str(d / sub)
    return None


_IDX_LAYOUT = "{a}/train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz"

#: The datasets; adding one is one loader file and one ``DATASETS.add(name, DatasetInfo(...))`` line.
DATASETS: Registry[DatasetInfo] = Registry("dataset", error=DataError)

for _info in (
    DatasetInfo(
        "digits",
        "scikit-learn's 1,797 8x8 handwritten digits (embedded; seeded stratified train/test split)",
        "(embedded in scikit-learn)",
        "https://archive.ics.uci.edu/dataset/80",
        "CC BY 4.0",
        False,
        builtin.load_digits_raw,
        None,
    ),
    DatasetInfo(
        "synthetic",
        "seeded class-pattern + Gaussian noise images, for tests (options: data.synthetic)",
        "(generated)",
        "-",
        "-",
        False,
        builtin.load_synthetic_raw,
        None,
    ),
    DatasetInfo(
        "mnist",
        "MNIST handwritten digits, 60,000 + 10,000 28x28 grey",
        _IDX_LAYOUT.format(a="MNIST/raw/ (or mnist/ or .)"),
        "http://yann.lecun.com/exdb/mnist/",
        "CC BY-SA 3.0",
        True,
        lambda cfg, d, s: vision.load_idx_raw(vision.MNIST, cfg, d, s),
        _locate_idx(vision.MNIST),
    ),
    DatasetInfo(
        "fashion-mnist",
        "Zalando Fashion-MNIST, 60,000 + 10,000 28x28 grey",
        _IDX_LAYOUT.format(a="FashionMNIST/raw/ (or fashion-mnist/)"),
        "https://github.com/zalandoresearch/fashion-mnist",
        "MIT",
        True,
        lambda cfg, d, s: vision.load_idx_raw(vision.FASHION_MNIST, cfg, d, s),
        _locate_idx(vision.FASHION_MNIST),
        ("fashion_mnist", "fashionmnist", "fmnist"),
    ),
    DatasetInfo(
        "cifar10",
        "CIFAR-10, 50,000 + 10,000 32x32 colour, 10 classes",
        "cifar-10-python.tar.gz or cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}",
        "https://www.cs.toronto.edu/~kriz/cifar.html",
        "no explicit licence; cite Krizhevsky (2009)",
        True,
        lambda cfg, d, s: vision.load_cifar_raw(vision.CIFAR10, cfg, d, s),
        _locate_cifar(vision.CIFAR10),
        ("cifar-10",),
    ),
    DatasetInfo(
        "cifar100",
        "CIFAR-100, 50,000 + 10,000 32x32 colour, 100 fine classes",
        "cifar-100-python.tar.gz or cifar-100-python/{train,test,meta}",
        "https://www.cs.toronto.edu/~kriz/cifar.html",
        "no explicit licence; cite Krizhevsky (2009)",
        True,
        lambda cfg, d, s: vision.load_cifar_raw(vision.CIFAR100, cfg, d, s),
        _locate_cifar(vision.CIFAR100),
        ("cifar-100",),
    ),
    DatasetInfo(
        "ham10000",
        "HAM10000 dermatoscopic images, 7 classes (dx), resized (default 64x64), split grouped by lesion",
        "HAM10000_metadata.csv + images/ (or HAM10000_images_part_1/, _part_2/), or inside HAM10000/",
        "https://doi.org/10.7910/DVN/DBW86T",
        "CC BY-NC 4.0",
        False,
        folders.load_ham10000_raw,
        _locate_ham,
        ("ham",),
    ),
    DatasetInfo(
        "imagefolder",
        "any class-per-folder image tree (data.root), resized (default 64x64), seeded split",
        "data.root=<root>/<class>/<image>",
        "-",
        "the images' own",
        False,
        folders.load_imagefolder_raw,
        None,
        ("image-folder",),
    ),
    DatasetInfo(
        "dermnet",
        "Dermnet (Kaggle) as FedMIA: train/+test/ merged, torch seed 42 shuffle, 15,000 train / last 4,000 test, 64x64",
        "dermnet/{train,test}/<class>/<image> (or data.root)",
        "https://www.kaggle.com/datasets/shubhamgoel27/dermnet",
        "see the source (images from DermNet NZ)",
        False,
        folders.load_dermnet_raw,
        _locate_dermnet,
    ),
):
    DATASETS.add(_info.name, _info)

_ALIASES = {a: d.name for d in DATASETS.values() for a in d.aliases}


def available_datasets() -> list[str]:
    return DATASETS.names()


def canonical_name(name: str) -> str:
    key = name.strip().lower()
    if key in DATASETS:
        return key
    if key in _ALIASES:
        return _ALIASES[key]
    raise DataError(DATASETS.unknown(name))


def user_loader(path: str, fn: Callable[..., Any]) -> DatasetInfo:
    """A loader named by import path (or given to fedleak.api) as a registry entry: ``fn(**data.options)``."""
    return DatasetInfo(
        path, f"your loader {path}", USER_LAYOUT, "-", "-", False,
        lambda cfg, d, s: custom.raw_from_result(path, custom.call_loader(path, fn, cfg.options, s)), None,
    )


def register_raw(name: str, raw: RawData) -> None:
    """In-memory data (already checked, see ``custom.raw_from_result``) under ``name``, for this process only."""
    DATASETS.add(name, DatasetInfo(name, "in-memory data", USER_LAYOUT, "-", "-", False, lambda cfg, d, s: raw, None),
                 replace=True)


def dataset_info(name: str) -> DatasetInfo:
    """The registered dataset (or alias) ``name``, else the loader named by an import path (see docs/byo.md)."""
    key = name.strip().lower()
    if key in DATASETS or key in _ALIASES:
        return DATASETS.get(canonical_name(key))
    return DATASETS.resolve(name.strip(), wrap=user_loader)


def load_dataset(cfg: DataConfig, seed: int = 0) -> Dataset:
    """Load the dataset ``cfg.name`` (a ``DataConfig``) as float32 [0,1] images + int64 labels."""
    info = dataset_info(cfg.name)
    if cfg.normalization not in NORMALIZATION_CHOICES:
        raise DataError(f"unknown data.normalization {cfg.normalization!r}; choose one of {', '.join(NORMALIZATION_CHOICES)}")
    if cfg.options and info.layout != USER_LAYOUT:
        raise DataError(f"data.options {sorted(cfg.options)} are passed to a loader named by import path; dataset "
                        f"'{info.name}' takes none (remove them; 'synthetic' reads data.synthetic)")
    data_dir = resolve_data_dir(cfg.data_dir) if info.layout != USER_LAYOUT else Path(".")
    raw = info.loader(cfg, data_dir, seed)
    return finalize(raw, cfg, info.name)


# ----------------------------------------------------------------------------- post-processing


def _to_float(x: np.ndarray | torch.Tensor, scale: float) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(x))
    else:
        t = x
    t = t.to(torch.float32)
    if scale != 1.0:
        t = t / scale
    return t.contiguous()


def convert_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    c = x.shape[1]
    if c == channels:
        return x
    if c == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1).contiguous()
    if c == 3 and channels == 1:
        w = torch.tensor(LUMINANCE, dtype=x.dtype).view(1, 3, 1, 1)
        return (x * w).sum(dim=1, keepdim=True).clamp_(0.0, 1.0)
    raise DataError(f"cannot convert {c}-channel images to {channels} channels")


def resize(x: torch.Tensor, size: int, chunk: int = 2048) -> torch.Tensor:
    if x.shape[-2:] == (size, size) or x.shape[0] == 0:
        return x
    out = torch.empty((x.shape[0], x.shape[1], size, size), dtype=x.dtype)
    for i in range(0, x.shape[0], chunk):
        out[i : i + chunk] = F.interpolate(
            x[i : i + chunk], size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    return out.clamp_(0.0, 1.0)


def dataset_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std over every pixel of ``x`` (float64 accumulation)."""
    if x.shape[0] == 0:
        c = x.shape[1]
        return (0.0,) * c, (1.0,) * c
    xd = x.transpose(0, 1).reshape(x.shape[1], -1).to(torch.float64)
    mean = xd.mean(dim=1)
    std = xd.std(dim=1, unbiased=False)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _stats(kind: str, explicit: bool, x_train: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    c = x_train.shape[1]
    if kind == "none":
        return (0.0,) * c, (1.0,) * c
    if kind == "dataset":
        return dataset_stats(x_train)
    mean, std = NORMALIZATIONS[kind]
    if len(mean) == c:
        return mean, std
    if len(mean) == 1:
        return mean * c, std * c
    if explicit:
        raise DataError(f"normalization {kind!r} is for 3-channel images but these have {c}; use 'dataset' or data.channels=3")
    return dataset_stats(x_train)


def _check_final_size(n: int, shape: tuple[int, ...], cfg: DataConfig) -> None:
    """Refuse, before converting anything, images that would not fit in memory once resized / recoloured."""
    c = cfg.channels or int(shape[0])
    h, w = (cfg.image_size, cfg.image_size) if cfg.image_size else (int(shape[1]), int(shape[2]))
    check_memory(4 * n * c * h * w, f"{n:,} images of {c}x{h}x{w} (float32)",
                 "lower data.image_size or set data.max_train / data.max_test")


def finalize(raw: RawData, cfg: DataConfig, name: str) -> Dataset:
    x_tr, y_tr, x_te, y_te = raw.x_train, raw.y_train, raw.x_test, raw.y_test
    if cfg.max_train is not None:
        x_tr, y_tr = x_tr[: cfg.max_train], y_tr[: cfg.max_train]
    if cfg.max_test is not None:
        x_te, y_te = x_te[: cfg.max_test], y_te[: cfg.max_test]
    _check_final_size(len(y_tr) + len(y_te), tuple(x_tr.shape[1:]), cfg)
    xs = []
    for x in (x_tr, x_te):
        t = _to_float(x, raw.scale)
        if cfg.channels is not None and cfg.channels < t.shape[1]:
            t = convert_channels(t, cfg.channels)
        if cfg.image_size is not None:
            t = resize(t, int(cfg.image_size))
        if cfg.channels is not None and cfg.channels > t.shape[1]:
            t = convert_channels(t, cfg.channels)
        xs.append(t)
    x_tr_t, x_te_t = xs
    explicit = cfg.normalization != "default"
    kind = raw.default_norm if cfg.normalization == "default" else cfg.normalization
    given = raw.stats is not None and len(raw.stats[0]) == x_tr_t.shape[1] and not explicit
    mean, std = raw.stats if given else _stats(kind, explicit, x_tr_t)  # type: ignore[misc]
    return Dataset(
        name=name,
        train=Split(x_tr_t, torch.as_tensor(np.asarray(y_tr), dtype=torch.int64)),
        test=Split(x_te_t, torch.as_tensor(np.asarray(y_te), dtype=torch.int64)),
        num_classes=raw.num_classes,
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        class_names=list(raw.class_names),
    )


# ---------------------------------------------------------------------------------- describing


def describe_datasets(data_dir: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """One dict per registered dataset: ``name, description, files, found, location, downloadable,
    source, license, aliases``. ``found`` is True/False for file-based datasets (looked up in the
    resolved data dir), True for the embedded/generated ones and None for ``imagefolder`` (whose
    folder is ``data.root``)."""
    d = resolve_data_dir(data_dir)
    if d.exists() and not d.is_dir():
        raise DataError(f"data dir {d} is not a folder; give the folder that holds (or will hold) the dataset files")
    out = []
    for info in DATASETS.values():
        if info.locate is None:
            found: bool | None = None if info.name == "imagefolder" else True
            location = None if info.name == "imagefolder" else info.layout.strip("()")
        else:
            location = info.locate(d) if d.is_dir() else None
            found = location is not None
        out.append(
            {
                "name": info.name,
                "description": info.description,
                "files": info.layout,
                "found": found,
                "location": location,
                "downloadable": info.downloadable,
                "source": info.source,
                "license": info.license,
                "aliases": list(info.aliases),
                "data_dir": str(d),
            }
        )
    return out
