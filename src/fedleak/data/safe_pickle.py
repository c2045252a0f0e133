"""A restricted unpickler for the CIFAR python-pickle files.

The CIFAR batches are pickled dicts (bytes keys) of numpy arrays and lists. Unpickling normally
calls any importable function named in the file; here ``find_class`` only resolves numpy's array
reconstruction (``numpy.core.multiarray._reconstruct`` / ``numpy._core.multiarray._reconstruct``,
``numpy.ndarray``, ``numpy.dtype``, ``numpy...multiarray.scalar``, protocol 5's
``numpy...numeric._frombuffer``), ``_codecs.encode`` limited to
text codecs (Python 3 writes bytes that way in protocol 2 pickles) and a few inert builtins.
Anything else raises DataError before it is called. Object dtypes are refused as well.
"""

from __future__ import annotations

import codecs
import io
import pickle
from typing import Any

import numpy as np

from fedleak.data.base import DataError
from fedleak.data.download import DOWNLOAD_HINT

_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's own _reconstruct, whatever its module
_SCALAR = np.float64(0).__reduce__()[0]
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]  # protocol-5 array reconstruction


def _safe_dtype(*args: Any) -> np.dtype:
    if not args or not isinstance(args[0], (str, bytes)):
        raise DataError(f"refusing to unpickle numpy.dtype{args!r}: only plain dtype codes are allowed")
    dt = np.dtype(*args)
    if dt.hasobject:
        raise DataError("refusing to unpickle an object-dtype numpy array")
    return dt


def _safe_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise DataError(f"refusing to unpickle an array of type {subtype!r}")
    try:
        has_object = np.dtype(dtype).hasobject
    except TypeError:
        raise DataError(f"refusing to unpickle an array with dtype {dtype!r}") from None
    if has_object:
        raise DataError("refusing to unpickle an object-dtype numpy array")
    return _RECONSTRUCT(subtype, shape, dtype)


def _safe_frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    if not isinstance(buf, (bytes, bytearray, memoryview, pickle.PickleBuffer)):
        raise DataError(f"refusing to unpickle an array from a {type(buf).__name__}")
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise DataError("refusing to unpickle an object-dtype numpy array")
    return _FROMBUFFER(buf, dtype, shape, order)


def _safe_scalar(dtype: Any, *args: Any) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise DataError("refusing to unpickle an object numpy scalar")
    return _SCALAR(dtype, *args)


_TEXT_CODECS = {"latin1", "latin-1", "iso-8859-1", "iso8859-1", "ascii", "utf-8", "utf8"}


def _safe_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    if not isinstance(obj, str) or str(encoding).lower() not in _TEXT_CODECS or errors != "strict":
        raise DataError(f"refusing to unpickle _codecs.encode with encoding {encoding!r}")
    return codecs.encode(obj, encoding, errors)


ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _safe_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _safe_frombuffer,
    ("numpy.core.multiarray", "scalar"): _safe_scalar,
    ("numpy._core.multiarray", "scalar"): _safe_scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _safe_dtype,
    ("_codecs", "encode"): _safe_encode,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "complex"): complex,
}


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only the globals in :data:`ALLOWED`."""

    def __init__(self, file: Any, *, source: str = "pickle", **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise DataError(
                f"refusing to unpickle {module}.{name} from {self._source}: only numpy arrays are allowed in dataset "
                f"files; the file is not an official dataset file - delete it and download again ({DOWNLOAD_HINT})"
            ) from None


def safe_loads(data: bytes, *, source: str = "pickle", encoding: str = "bytes") -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`; every failure becomes a DataError."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), source=source, encoding=encoding).load()
    except DataError:
        raise
    except Exception as e:  # malformed pickles raise many kinds of errors
        raise DataError(f"cannot read {source}: {type(e).__name__}: {e}; delete it and download again ({DOWNLOAD_HINT})") from e


def safe_load_file(path: Any, *, encoding: str = "bytes") -> Any:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from e
    return safe_loads(data, source=str(path), encoding=encoding)
