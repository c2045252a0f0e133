"""fedleak's safetensors reader/writer against the format written out by hand (8-byte length, JSON header, raw
little-endian data), against the `safetensors` library where it is installed, and on damaged files."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from fedleak.signals.tensorfile import TensorFileError, encode_tensors, read_tensors


def _by_hand(tensors: dict[str, tuple[str, list[int], bytes]], meta: dict[str, str] | None = None) -> bytes:
    header: dict = {"__metadata__": meta} if meta else {}
    off, blob = 0, b""
    for name, (dt, shape, raw) in tensors.items():
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(raw)]}
        off += len(raw)
        blob += raw
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + blob


def test_reads_a_hand_made_file(tmp_path):
    raw = _by_hand({
        "w": ("F32", [2, 2], struct.pack("<4f", 1.0, -2.0, 0.5, 3.25)),
        "n": ("I64", [3], struct.pack("<3q", 7, -1, 2**40)),
        "flag": ("BOOL", [], b"\x01"),
        "empty": ("F64", [0, 4], b""),
    }, {"client": "3", "examples": "90"})
    p = tmp_path / "x.safetensors"
    p.write_bytes(raw)
    t, meta = read_tensors(p)
    assert meta == {"client": "3", "examples": "90"}
    assert torch.equal(t["w"], torch.tensor([[1.0, -2.0], [0.5, 3.25]]))
    assert torch.equal(t["n"], torch.tensor([7, -1, 2**40])) and t["n"].dtype == torch.int64
    assert t["flag"].shape == () and bool(t["flag"]) and t["empty"].shape == (0, 4)


def test_round_trip_every_dtype(tmp_path):
    g = torch.Generator().manual_seed(0)
    src = {"a.weight": torch.randn(3, 5, generator=g), "b": torch.randn(4, generator=g).double(),
           "c": torch.randn(2, 2, generator=g).half(), "d": torch.randn(3, generator=g).bfloat16(),
           "e": torch.arange(-3, 3, dtype=torch.int8), "f": torch.tensor([True, False]), "g": torch.zeros(0)}
    p = tmp_path / "r.safetensors"
    p.write_bytes(encode_tensors(src, {"round": "4"}))
    assert (len(p.read_bytes()) - 8 - struct.unpack("<Q", p.read_bytes()[:8])[0]) == sum(
        t.numel() * t.element_size() for t in src.values())
    got, meta = read_tensors(p)
    assert meta == {"round": "4"} and set(got) == set(src)
    for k, v in src.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k
    # non-contiguous input is written as its values
    p.write_bytes(encode_tensors({"t": torch.arange(6.0).reshape(2, 3).T}))
    assert torch.equal(read_tensors(p)[0]["t"], torch.arange(6.0).reshape(2, 3).T)


def test_interoperates_with_the_safetensors_library(tmp_path):
    st = pytest.importorskip("safetensors.torch")  # not a dependency; checked where it is installed
    src = {"x": torch.randn(4, 3), "y": torch.arange(5)}
    (tmp_path / "ours.safetensors").write_bytes(encode_tensors(src, {"k": "v"}))
    theirs = st.load_file(str(tmp_path / "ours.safetensors"))
    assert all(torch.equal(theirs[k], src[k]) for k in src)
    st.save_file(src, str(tmp_path / "theirs.safetensors"), metadata={"k": "v"})
    got, meta = read_tensors(tmp_path / "theirs.safetensors")
    assert meta == {"k": "v"} and all(torch.equal(got[k], src[k]) for k in src)


@pytest.mark.parametrize("damage,why", [
    (lambda b: b[:-1], "is truncated"),
    (lambda b: b[:5], "is truncated"),
    (lambda b: b[:30], "header length exceeds the file"),
    (lambda b: b + b"\0", "trailing bytes"),
    (lambda b: b"", "is empty"),
    (lambda b: b"\x80\x04\x95" + b"\0" * 40, "header length exceeds the file"),  # a pickle is not read
    (lambda b: struct.pack("<Q", 2) + b"[]", "not a JSON object"),
    (lambda b: b[:8] + b"}" + b[9:], "not JSON"),
])
def test_damaged_files(tmp_path, damage, why):
    good = encode_tensors({"a": torch.ones(3), "b": torch.zeros(2, 2)})
    p = tmp_path / "d.safetensors"
    p.write_bytes(damage(good))
    with pytest.raises(TensorFileError, match=why):
        read_tensors(p)


def test_inconsistent_headers(tmp_path):
    p = tmp_path / "h.safetensors"
    for tensors, why in (
        ({"a": ("F32", [3], b"\0" * 8)}, "8 bytes for 'a'"),
        ({"a": ("Q7", [1], b"\0")}, "unknown dtype"),
        ({"a": ("F32", [-1], b"")}, "malformed shape"),
    ):
        p.write_bytes(_by_hand(tensors))
        with pytest.raises(TensorFileError, match=why):
            read_tensors(p)
    text = json.dumps({"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
                       "b": {"dtype": "U8", "shape": [2], "data_offsets": [1, 3]}}).encode()
    p.write_bytes(struct.pack("<Q", len(text)) + text + b"\0\0\0")
    with pytest.raises(TensorFileError, match="overlap or leave gaps"):
        read_tensors(p)
    with pytest.raises(TensorFileError, match="is missing"):
        read_tensors(tmp_path / "nope.safetensors")
