"""A reader for the IDX format of (Fashion-)MNIST.

IDX layout (big-endian): two zero bytes, a type code (0x08 ubyte, 0x09 byte, 0x0B int16,
0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions, one uint32 per dimension,
then the values in C order. Files ending in ``.gz`` are decompressed on the fly.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from fedleak.data.base import DataError
from fedleak.data.download import DOWNLOAD_HINT

IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_ADVICE = f"delete it and download the official file again ({DOWNLOAD_HINT})"


def parse_idx(
    data: bytes,
    *,
    name: str = "IDX data",
    ndim: int | None = None,
    dtype: int | None = None,
) -> np.ndarray:
    """Parse IDX bytes into a native-endian array; check type code / ndim when given."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{name} is not an IDX file (bad magic number {data[:4].hex() or 'empty'}); {_ADVICE}")
    code, nd = data[2], data[3]
    if code not in IDX_DTYPES:
        raise DataError(f"{name}: unknown IDX type code 0x{code:02x}; {_ADVICE}")
    if dtype is not None and code != dtype:
        raise DataError(f"{name}: IDX type code 0x{code:02x}, expected 0x{dtype:02x}; {_ADVICE}")
    if ndim is not None and nd != ndim:
        raise DataError(f"{name}: IDX file has {nd} dimensions, expected {ndim}; {_ADVICE}")
    header = 4 + 4 * nd
    if len(data) < header:
        raise DataError(f"{name}: truncated IDX header; {_ADVICE}")
    dims = struct.unpack(f">{nd}I", data[4:header])
    dt = IDX_DTYPES[code]
    count = int(np.prod(dims, dtype=np.int64)) if nd else 1
    expected = header + count * dt.itemsize
    if len(data) != expected:
        raise DataError(
            f"{name}: {len(data)} bytes but dimensions {tuple(dims)} need {expected}; the file is truncated or corrupt, {_ADVICE}"
        )
    arr = np.frombuffer(data, dtype=dt, count=count, offset=header).reshape(dims)
    return arr.astype(dt.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike[str], *, ndim: int | None = None, dtype: int | None = None) -> np.ndarray:
    path = Path(path)
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read {path}: {e}; {_ADVICE}") from e
    return parse_idx(data, name=str(path), ndim=ndim, dtype=dtype)
