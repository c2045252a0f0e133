"""Your own dataset: what a user's loader may return, converted to :class:`RawData` and checked.

A loader named by import path (``data.name: my_pkg.data:load``, see docs/byo.md) is called as
``load(**data.options)`` (plus ``seed=<the run's seed>`` when it has a ``seed`` parameter) and returns one of

* a :class:`fedleak.data.base.Dataset` (its ``num_classes``, class names and ``mean``/``std`` are kept);
* ``(x_train, y_train, x_test, y_test)``: tensors or numpy arrays, images ``[N, C, H, W]`` (or ``[N, H, W]``,
  one channel) as floats in [0, 1] or uint8 in 0..255, labels integers; ``num_classes`` is the largest label + 1;
* ``(train, test)``: two ``torch.utils.data.Dataset`` whose items are ``(image, label)`` with an image tensor
  ``[C, H, W]`` in [0, 1] (e.g. torchvision's ``ToTensor()``); materialised to tensors here. ``num_classes`` is
  ``len(train.classes)`` where the dataset has ``classes`` (torchvision's convention), else the largest label + 1.

Images are pixels, not normalised: fedleak normalises them itself (``data.normalization``, by default with the
training set's own per-channel statistics). Every problem is a one-line :class:`DataError` naming the loader.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from fedleak.data.base import Dataset, DataError, check_memory
from fedleak.data.raw import RawData
from fedleak.registry import article

RETURNS = ("return a fedleak Dataset, (x_train, y_train, x_test, y_test) or a (train, test) pair of "
           "torch.utils.data.Dataset (see docs/byo.md)")


def call_loader(name: str, fn: Callable[..., Any], options: dict[str, Any], seed: int) -> Any:
    """``fn(**options)`` (and ``seed=`` where it takes one); a wrong signature or an exception is one line."""
    kwargs = dict(options)
    try:
        sig: inspect.Signature | None = inspect.signature(fn)
    except (TypeError, ValueError):
        sig = None
    if sig is not None:
        if "seed" in sig.parameters and "seed" not in kwargs:
            kwargs["seed"] = seed
        try:
            sig.bind(**kwargs)
        except TypeError as e:
            raise DataError(
                f"dataset loader {name!r} has the signature {sig} but fedleak calls it as load(**data.options) with "
                f"{sorted(kwargs) or 'no arguments'} ({e}); change its parameters or data.options"
            ) from None
    try:
        return fn(**kwargs)
    except DataError:
        raise
    except Exception as e:
        text = str(e).strip().splitlines()
        raise DataError(f"dataset loader {name!r} raised {type(e).__name__}" + (f": {text[0]}" if text else "")) from None


def raw_from_result(name: str, result: Any) -> RawData:
    """What a loader returned, as checked :class:`RawData` (see the module docstring for the accepted forms)."""
    what = f"dataset loader {name!r}"
    if isinstance(result, Dataset):
        raw = RawData(result.train.x, result.train.y, result.test.x, result.test.y, int(result.num_classes),
                      list(result.class_names), scale=1.0, stats=(tuple(result.mean), tuple(result.std)))
        return check_raw(what, raw, num_classes_given=True)
    if isinstance(result, (tuple, list)) and len(result) == 2 and all(_is_torch_dataset(d) for d in result):
        train, test = result
        x_tr, y_tr = materialise(what, "train", train)
        x_te, y_te = materialise(what, "test", test)
        classes = getattr(train, "classes", None)
        given = isinstance(classes, (list, tuple)) and len(classes) > 0
        k = len(classes) if given else _inferred_classes(y_tr, y_te)
        raw = RawData(x_tr, y_tr, x_te, y_te, k, [str(c) for c in classes] if given else [], scale=1.0)
        return check_raw(what, raw, num_classes_given=given)
    if isinstance(result, (tuple, list)) and len(result) == 4:
        x_tr, y_tr, x_te, y_te = (_array(what, n, a) for n, a in zip(("x_train", "y_train", "x_test", "y_test"), result))
        if x_tr.ndim == 3:
            x_tr = x_tr.unsqueeze(1)
        if x_te.ndim == 3:
            x_te = x_te.unsqueeze(1)
        raw = RawData(x_tr, y_tr, x_te, y_te, _inferred_classes(y_tr, y_te), [])
        return check_raw(what, raw, num_classes_given=False)
    kind = f"a {len(result)}-tuple" if isinstance(result, (tuple, list)) else article(type(result).__name__)
    raise DataError(f"{what} returned {kind}; {RETURNS}")


def _is_torch_dataset(d: Any) -> bool:
    return isinstance(d, torch.utils.data.Dataset) and hasattr(d, "__len__")


def _array(what: str, field: str, a: Any) -> torch.Tensor:
    if isinstance(a, np.ndarray):
        if a.dtype == object:
            raise DataError(f"{what}: {field} is a numpy array of Python objects; return numbers")
        return torch.from_numpy(np.ascontiguousarray(a))
    if isinstance(a, torch.Tensor):
        return a.detach().cpu()
    raise DataError(f"{what}: {field} is {article(type(a).__name__)}; return a torch tensor or a numpy array")


def _inferred_classes(*ys: torch.Tensor) -> int:
    tops = [int(y.max()) for y in ys if y.numel() and not y.dtype.is_floating_point and y.dtype != torch.bool]
    return max(tops, default=0) + 1


def materialise(what: str, split: str, ds: torch.utils.data.Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack a map-style dataset's ``(image, label)`` items into ``x [N, C, H, W]`` and ``y [N]`` int64."""
    n = len(ds)  # type: ignore[arg-type]
    if n == 0:
        raise DataError(f"{what}: the {split} dataset is empty; give it at least one sample")
    first = _item(what, split, ds, 0)
    shape = tuple(first[0].shape)
    check_memory(4 * n * int(np.prod(shape)), f"{what}: {n:,} {split} images of {shape}", "return fewer samples")
    x = torch.empty((n, *shape), dtype=torch.float32)
    y = torch.empty(n, dtype=torch.int64)
    for i in range(n):
        xi, yi = first if i == 0 else _item(what, split, ds, i)
        if tuple(xi.shape) != shape:
            raise DataError(f"{what}: {split} item {i} has an image of shape {tuple(xi.shape)}, item 0 of {shape}; "
                            "give every image the same size (e.g. a Resize transform)")
        x[i], y[i] = xi, yi
    return x, y


def _item(what: str, split: str, ds: Any, i: int) -> tuple[torch.Tensor, int]:
    try:
        item = ds[i]
    except Exception as e:
        text = str(e).strip().splitlines()
        raise DataError(f"{what}: {split}[{i}] raised {type(e).__name__}" + (f": {text[0]}" if text else "")) from None
    if not isinstance(item, (tuple, list)) or len(item) < 2:
        raise DataError(f"{what}: {split}[{i}] is {article(type(item).__name__)}; items must be (image, label) pairs")
    x, y = item[0], item[1]
    if isinstance(x, np.ndarray) and x.dtype != object:
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
        kind = f"a {x.dtype} tensor" if isinstance(x, torch.Tensor) else article(type(x).__name__)
        raise DataError(f"{what}: {split}[{i}] holds {kind} image; return float tensors in [0, 1] "
                        "(e.g. torchvision.transforms.ToTensor())")
    if x.ndim == 2:
        x = x.unsqueeze(0)
    if x.ndim != 3:
        raise DataError(f"{what}: {split}[{i}] has an image of shape {tuple(x.shape)}; images must be [C, H, W]")
    label = _label(y)
    if label is None:
        raise DataError(f"{what}: {split}[{i}] has the label {y!r}; labels must be integer class indices")
    return x, int(label)


def _label(y: Any) -> int | None:
    """An integer class index from an int, a numpy integer or a one-element integer tensor/array; else None."""
    if isinstance(y, (torch.Tensor, np.ndarray)):
        t = torch.as_tensor(y)
        if t.numel() != 1 or t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            return None
        return int(t.reshape(()).item())
    if isinstance(y, bool) or not isinstance(y, (int, np.integer)):
        return None
    return int(y)


def check_raw(what: str, raw: RawData, num_classes_given: bool) -> RawData:
    """Shapes, dtypes, finiteness, pixel range and labels of a user's data; one-line DataError on the first problem."""
    xs = {"x_train": raw.x_train, "x_test": raw.x_test}
    ys = {"y_train": raw.y_train, "y_test": raw.y_test}
    for (xn, x), (yn, y) in zip(xs.items(), ys.items()):
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        if x.ndim != 4 or x.shape[0] == 0 or min(x.shape[1:]) < 1:
            raise DataError(f"{what}: {xn} has shape {tuple(x.shape)}; images must be a non-empty [N, C, H, W] "
                            "(or [N, H, W] for one channel)")
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise DataError(f"{what}: {yn} has shape {tuple(y.shape)} for {x.shape[0]} images in {xn}; give one "
                            "label per image, a 1-D array")
        if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
            raise DataError(f"{what}: {yn} is {y.dtype}; labels must be integer class indices (e.g. int64)")
        _check_pixels(what, xn, x)
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= raw.num_classes:
            whose = "num_classes" if num_classes_given else "the inferred number of classes"
            raise DataError(f"{what}: {yn} has labels {lo}..{hi}, outside 0..{raw.num_classes - 1} ({whose} "
                            f"{raw.num_classes}); labels must be class indices 0..num_classes-1")
    if tuple(raw.x_train.shape[1:]) != tuple(raw.x_test.shape[1:]):
        raise DataError(f"{what}: x_train images are {tuple(raw.x_train.shape[1:])} but x_test images are "
                        f"{tuple(raw.x_test.shape[1:])}; give both splits the same [C, H, W]")
    if raw.x_train.dtype != raw.x_test.dtype:
        raise DataError(f"{what}: x_train is {raw.x_train.dtype} but x_test is {raw.x_test.dtype}; use one dtype")
    raw.scale = 255.0 if raw.x_train.dtype == torch.uint8 else 1.0
    if raw.num_classes < 2:
        raise DataError(f"{what}: the labels hold a single class; membership inference needs at least 2 classes")
    raw.y_train = torch.as_tensor(raw.y_train).to(torch.int64).numpy()
    raw.y_test = torch.as_tensor(raw.y_test).to(torch.int64).numpy()
    return raw


def _check_pixels(what: str, name: str, x: torch.Tensor) -> None:
    if x.dtype == torch.uint8:
        return  # 0..255, divided by 255 by the post-processing
    if not x.dtype.is_floating_point:
        raise DataError(f"{what}: {name} is {x.dtype}; images must be floats in [0, 1] or uint8 in 0..255")
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise DataError(f"{what}: {name} holds {bad:,} NaN or infinite value(s); remove or repair those images")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise DataError(f"{what}: {name} has pixel values in [{lo:.4g}, {hi:.4g}]; fedleak expects unnormalised pixels "
                        "in [0, 1] and normalises them itself (data.normalization); e.g. divide uint8 images by 255")


def tensor_digest(raw: RawData) -> str:
    """sha256 over the four arrays (dtype, shape and bytes of each): what a config records for in-memory data."""
    import hashlib

    h = hashlib.sha256()
    for a in (raw.x_train, raw.y_train, raw.x_test, raw.y_test):
        t = torch.as_tensor(a).contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(f"classes={raw.num_classes}".encode())
    return h.hexdigest()


__all__ = ["RETURNS", "call_loader", "check_raw", "materialise", "raw_from_result", "tensor_digest"]
