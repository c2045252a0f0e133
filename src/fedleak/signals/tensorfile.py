"""Reading and writing ``.safetensors`` files through the ``safetensors`` library (no pickle anywhere).

A thin layer over :mod:`safetensors.torch` and :func:`safetensors.safe_open`: it writes with metadata, reads the
header and metadata without the data, and reads every tensor. What it adds to the library:

* the library's ``SafetensorError``/``OSError`` become :class:`TensorFileError` with a one-line reason (callers name
  the file and say what to do), including whether a file whose length does not match its header is cut short or
  has trailing bytes;
* only the dtypes in :data:`DTYPES` are read or written (the library also knows 8-bit floats, unsigned 16/32/64-bit
  integers, ...; fedleak's models hold none of them, so such a file is refused as damaged or foreign);
* a path that is not a regular file (a directory, a FIFO) is refused before the library opens it, so nothing
  blocks on a FIFO.

The library checks the rest: header length against the file, UTF-8 JSON, dtype names, non-negative shapes,
``__metadata__`` a mapping of strings, each tensor's byte count against its shape and dtype, offsets tiling the data
exactly, the file's length. The hand-written codec that preceded this module is kept as the tests' independent
reference (``tests/signals/safetensors_reference.py``); files it wrote load here.
"""

from __future__ import annotations

import json
import math
import stat
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
NAMES = {v: k for k, v in DTYPES.items()}

__all__ = ["TensorFileError", "encode_tensors", "read_tensors", "read_header", "DTYPES"]

Entry = tuple[torch.dtype, list[int], int, int]


class TensorFileError(Exception):
    """Why a file is not a usable safetensors file (the reason only; callers name the file)."""


def encode_tensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """The bytes of a safetensors file holding ``tensors`` and ``metadata`` (keys and values made strings)."""
    flat = {}
    for name, t in tensors.items():
        if t.dtype not in NAMES:
            raise TensorFileError(f"tensor '{name}' has dtype {t.dtype}, which safetensors files here do not hold")
        # an own contiguous CPU copy: the library refuses non-contiguous tensors and tensors sharing storage
        flat[str(name)] = t.detach().to("cpu").clone(memory_format=torch.contiguous_format)
    meta = {str(k): str(v) for k, v in metadata.items()} if metadata else None
    try:
        raw = _st_save(flat, metadata=meta)
    except SafetensorError as e:  # pragma: no cover - the inputs above are what the library accepts
        raise TensorFileError(f"cannot be written ({e})") from None
    return _metadata_in_order(raw, meta) if meta and len(meta) > 1 else raw


def _metadata_in_order(raw: bytes, meta: dict[str, str]) -> bytes:
    """``raw`` with its ``__metadata__`` in the caller's order. The library keeps metadata in a hash map, so its
    order (and the file's bytes) would change from process to process; a run's files are the same for the same
    seed. Only the header's JSON is rewritten (same keys and values, padded to 8 bytes again); the data is the
    library's, and its offsets are relative to the data, so they stay valid."""
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    header = {"__metadata__": meta, **{k: v for k, v in header.items() if k != "__metadata__"}}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + raw[8 + n:]


def _described_length(raw: bytes) -> int | None:
    """The file length a (parseable) header describes, for telling a cut file from one with trailing bytes."""
    if len(raw) < 8:
        return None
    (n,) = struct.unpack("<Q", raw[:8])
    try:
        header = json.loads(raw[8:8 + n].decode("utf-8"))
        ends = [e["data_offsets"][1] for k, e in header.items() if k != "__metadata__"]
        return 8 + n + max(ends, default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None


def _bad_metadata(raw: bytes) -> bool:
    """Whether a header that parses as JSON has a ``__metadata__`` that is not a mapping of strings."""
    try:
        meta = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]].decode("utf-8")).get("__metadata__", {})
    except (ValueError, TypeError, AttributeError, struct.error):
        return False
    return not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values())


def _reason(err: SafetensorError, head: bytes, size: int) -> str:
    """One line saying what the library found wrong, in fedleak's words (``head``: the file's first bytes). The
    library's messages are its ``Display`` texts since safetensors 0.6 (the lower bound in pyproject.toml)."""
    msg = str(err)
    detail = msg.split(": ", 1)[-1]
    if "header too small" in msg:
        return "is empty" if size == 0 else "is truncated (shorter than the 8-byte header length)"
    if "invalid header length" in msg or "header too large" in msg.lower():
        return "is truncated or not a safetensors file (its header length exceeds the file)"
    if "incomplete metadata" in msg:
        want = _described_length(head)
        if want is None or want > size:
            return f"is truncated ({size} bytes, its header describes {want})" if want else "is truncated"
        return f"has trailing bytes after its tensors ({size} bytes, its header describes {want})"
    if "unknown variant" in msg:
        return f"has a tensor of unknown dtype ({detail.split(',')[0]})"
    if "expected usize" in msg or "overflow computing" in msg:
        return f"has a malformed shape or data_offsets ({detail})"
    if _bad_metadata(head):
        return f"has __metadata__ that is not a mapping of strings ({detail})"
    if "invalid shape, data type, or offset" in msg:
        return "has a tensor whose byte count does not match its shape and dtype"
    if "invalid offset" in msg:
        return f"has tensors whose data overlap or leave gaps ({detail})"
    if any(w in msg for w in ("invalid JSON", "invalid UTF-8", "invalid start character", "JSON error")):
        return f"has a damaged header (not a JSON object: {detail}): truncated or not a safetensors file"
    return f"is not a valid safetensors file ({detail})"


def _regular(path: Path) -> int:
    """The size of ``path``, refusing a missing path, a directory or a special file (a FIFO would block)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise TensorFileError("is missing") from None
    except OSError as e:
        raise TensorFileError(f"cannot be read ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise TensorFileError("is not a regular file (a directory or a special file)")
    return st.st_size


def _first_bytes(path: Path, limit: int = 1 << 16) -> bytes:
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
            return head + f.read(min(n, limit))
    except OSError as e:
        raise TensorFileError(f"cannot be read ({e.strerror or e})") from None


def _known(name: str, dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise TensorFileError(f"has tensor '{name}' of dtype {dtype}, which fedleak does not read (unknown dtype)")
    return DTYPES[dtype]


def read_header(path: str | Path) -> tuple[dict[str, Entry], dict[str, str], int]:
    """``({name: (dtype, shape, begin, end)}, metadata, data start)`` of a safetensors file, checked by the library
    against its length without reading the data (a truncated file is caught here)."""
    path = Path(path)
    size = _regular(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            specs = [(k, f.get_slice(k).get_dtype(), list(f.get_slice(k).get_shape())) for k in f.offset_keys()]
    except SafetensorError as e:
        raise TensorFileError(_reason(e, _first_bytes(path), size)) from None
    except OSError as e:
        raise TensorFileError(f"cannot be read ({e.strerror or e})") from None
    entries: dict[str, Entry] = {}
    pos = 0  # the library checked that the data tiles exactly in offset order, so offsets are running sums
    for name, dt, shape in specs:
        dtype = _known(name, dt)
        end = pos + math.prod(shape) * dtype.itemsize
        entries[name] = (dtype, shape, pos, end)
        pos = end
    (n,) = struct.unpack("<Q", _first_bytes(path, 0)[:8])
    return entries, dict(meta), 8 + n


def read_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor of a safetensors file and its metadata; a damaged file raises TensorFileError."""
    path = Path(path)
    entries, meta, start = read_header(path)  # refuses special files and unknown dtypes before reading the data
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise TensorFileError(f"cannot be read ({e.strerror or e})") from None
    if len(raw) != start + max((end for *_, end in entries.values()), default=0):
        raise TensorFileError("changed while it was read; read it again once it is complete")
    try:
        tensors = _st_load(raw)
    except SafetensorError as e:  # the file changed between the header check and this read
        raise TensorFileError(_reason(e, raw[: 1 << 16], len(raw))) from None
    for name, t in tensors.items():
        _known(name, NAMES.get(t.dtype, str(t.dtype)))
    return tensors, meta
