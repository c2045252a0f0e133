"""The tests' independent reference for ``.safetensors`` files: a hand-written reader/writer, without pickle and
without the ``safetensors`` package (it was fedleak's own codec before ``fedleak.signals.tensorfile`` became a thin
layer over the library; tests/signals/test_tensorfile.py checks the two against each other both ways).

The format: 8 bytes, the header length ``H`` (unsigned little-endian); ``H`` bytes of UTF-8 JSON, an object mapping
each tensor name to ``{"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}`` (byte offsets into the data
that follows the header) plus an optional ``"__metadata__"`` object of string -> string; then the data: every
tensor's bytes, little-endian, row-major, the tensors back to back with no gap. This writer puts the tensors in
name order (the library orders them by dtype alignment, then name), so files differ in layout but not in content.

:func:`read_tensors` checks everything before it builds a tensor (header length, JSON, dtype names, shapes,
offsets that tile the data exactly, the file's length) and raises :class:`TensorFileError` saying what is wrong.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from pathlib import Path

import torch

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
NAMES = {v: k for k, v in DTYPES.items()}
MAX_HEADER = 100 * 2**20  # the reference implementation's limit too

__all__ = ["TensorFileError", "encode_tensors", "read_tensors", "read_header", "DTYPES"]


class TensorFileError(Exception):
    """Why a file is not a usable safetensors file (the reason only; callers name the file)."""


def encode_tensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """The bytes of a safetensors file holding ``tensors`` (names in sorted order) and ``metadata``."""
    if sys.byteorder != "little":  # pragma: no cover - every platform torch ships for is little-endian
        raise TensorFileError("writing safetensors needs a little-endian machine")
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs, off = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        if t.dtype not in NAMES:
            raise TensorFileError(f"tensor '{name}' has dtype {t.dtype}, which safetensors files here do not hold")
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def _entry(name: str, e: object) -> tuple[torch.dtype, list[int], int, int]:
    if not isinstance(e, dict) or set(e) != {"dtype", "shape", "data_offsets"}:
        raise TensorFileError(f"has a malformed header entry for '{name}'")
    dt, shape, offs = e["dtype"], e["shape"], e["data_offsets"]
    if dt not in DTYPES:
        raise TensorFileError(f"has tensor '{name}' of unknown dtype {dt!r}")
    ints = lambda v: isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v)  # noqa: E731
    if not ints(shape) or not ints(offs) or len(offs) != 2 or offs[1] < offs[0]:
        raise TensorFileError(f"has a malformed shape or data_offsets for '{name}'")
    size = math.prod(shape) * torch.empty(0, dtype=DTYPES[dt]).element_size()
    if offs[1] - offs[0] != size:
        raise TensorFileError(f"has {offs[1] - offs[0]} bytes for '{name}' of shape {shape} {dt} ({size} expected)")
    return DTYPES[dt], shape, offs[0], offs[1]


def read_header(path: Path) -> tuple[dict[str, tuple[torch.dtype, list[int], int, int]], dict[str, str], int]:
    """``({name: (dtype, shape, begin, end)}, metadata, data start)`` of a safetensors file, checked against its
    length (a truncated file is caught here without reading the data)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise TensorFileError("is truncated (shorter than the 8-byte header length)" if head else "is empty")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or 8 + n > size:
                raise TensorFileError(
                    "is truncated or not a safetensors file (its header length exceeds the file)")
            raw = f.read(n)
    except OSError as e:
        raise TensorFileError(f"cannot be read ({e.strerror or e})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise TensorFileError("has a damaged header (not JSON): truncated or not a safetensors file") from None
    if not isinstance(header, dict):
        raise TensorFileError("has a damaged header (not a JSON object)")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise TensorFileError("has __metadata__ that is not a mapping of strings")
    entries = {name: _entry(name, e) for name, e in header.items()}
    spans = sorted((b, e) for _, _, b, e in entries.values())
    pos = 0
    for b, e in spans:
        if b != pos:
            raise TensorFileError("has tensors whose data overlap or leave gaps (not a valid safetensors file)")
        pos = e
    if 8 + n + pos != size:
        why = "is truncated" if 8 + n + pos > size else "has trailing bytes after its tensors"
        raise TensorFileError(f"{why} ({size} bytes, its header describes {8 + n + pos})")
    return entries, meta, 8 + n


def read_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor of a safetensors file and its metadata; a damaged file raises TensorFileError."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise TensorFileError("is not a regular file (a directory or a special file)")
    if not path.exists():
        raise TensorFileError("is missing")
    entries, meta, start = read_header(path)
    try:
        data = bytearray(path.read_bytes()[start:])
    except OSError as e:
        raise TensorFileError(f"cannot be read ({e.strerror or e})") from None
    if len(data) != max((e for *_, e in entries.values()), default=0):
        raise TensorFileError("changed while it was read")
    out = {}
    for name, (dt, shape, b, e) in entries.items():
        n = math.prod(shape)
        t = torch.frombuffer(data, dtype=dt, count=n, offset=b) if n else torch.empty(0, dtype=dt)
        out[name] = t.clone().reshape(shape)
    return out, meta
