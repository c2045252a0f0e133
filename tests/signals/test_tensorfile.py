"""fedleak's safetensors layer (a thin layer over the `safetensors` library) against the format written out by
hand (8-byte length, JSON header, raw little-endian data), against the hand-written reference codec
(tests/signals/safetensors_reference.py, fedleak's own codec before) both ways, against the library's own
load_file/save_file, and on damaged files: each is one TensorFileError reason, never the library's exception."""

from __future__ import annotations

import json
import os
import struct

import pytest
import safetensors.torch as st
import torch

import safetensors_reference as ref
from fedleak.signals.tensorfile import TensorFileError, encode_tensors, read_header, read_tensors


def _by_hand(tensors: dict[str, tuple[str, list[int], bytes]], meta: object = None) -> bytes:
    header: dict = {"__metadata__": meta} if meta else {}
    off, blob = 0, b""
    for name, (dt, shape, raw) in tensors.items():
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(raw)]}
        off += len(raw)
        blob += raw
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + blob


def _every_dtype() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(3, 5, generator=g), "b": torch.randn(4, generator=g).double(),
            "c": torch.randn(2, 2, generator=g).half(), "d": torch.randn(3, generator=g).bfloat16(),
            "e": torch.arange(-3, 3, dtype=torch.int8), "f": torch.tensor([True, False]), "g": torch.zeros(0),
            "h": torch.tensor([2**40, -5]), "i": torch.arange(7, dtype=torch.int32).reshape(7, 1),
            "j": torch.tensor([-300, 7], dtype=torch.int16), "k": torch.arange(250, 256, dtype=torch.uint8),
            "scalar": torch.tensor(1.5)}


def _same_bytes(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        assert got[k].reshape(-1).view(torch.uint8).numpy().tobytes() == \
            v.reshape(-1).view(torch.uint8).numpy().tobytes(), k


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
    entries, meta2, start = read_header(p)
    assert meta2 == meta and start == 8 + struct.unpack("<Q", raw[:8])[0]
    assert entries["w"] == (torch.float32, [2, 2], 0, 16) and entries["n"] == (torch.int64, [3], 16, 40)
    assert entries["flag"] == (torch.bool, [], 40, 41) and entries["empty"] == (torch.float64, [0, 4], 41, 41)


def test_round_trip_every_dtype(tmp_path):
    src = _every_dtype()
    p = tmp_path / "r.safetensors"
    p.write_bytes(encode_tensors(src, {"round": 4}))  # metadata values are written as strings
    assert (len(p.read_bytes()) - 8 - struct.unpack("<Q", p.read_bytes()[:8])[0]) == sum(
        t.numel() * t.element_size() for t in src.values())
    got, meta = read_tensors(p)
    assert meta == {"round": "4"}
    _same_bytes(got, src)
    # non-contiguous input and tensors sharing one storage (tied weights) are written as their values
    base = torch.arange(12.0)
    tied = {"t": torch.arange(6.0).reshape(2, 3).T, "u": base[:4], "v": base[4:].reshape(2, 4)}
    p.write_bytes(encode_tensors(tied))
    got, meta = read_tensors(p)
    assert meta == {}
    _same_bytes(got, {k: v.contiguous() for k, v in tied.items()})


def test_library_layer_against_the_reference_codec_both_ways(tmp_path):
    src, meta = _every_dtype(), {"round": "7", "client": "2", "examples": "90", "note": "ü, \"quoted\""}
    old = tmp_path / "old.safetensors"  # as the hand-written writer wrote keep_models files before
    old.write_bytes(ref.encode_tensors(src, meta))
    got, got_meta = read_tensors(old)
    assert got_meta == meta
    _same_bytes(got, src)
    assert read_header(old) == ref.read_header(old)  # same names, dtypes, shapes, offsets, metadata, data start

    new = tmp_path / "new.safetensors"
    new.write_bytes(encode_tensors(src, meta))
    back, back_meta = ref.read_tensors(new)  # the reference checks every byte of the layout the library wrote
    assert back_meta == meta
    _same_bytes(back, src)
    assert read_header(new) == ref.read_header(new)  # offsets differ from old's (the library orders by dtype)


def test_interoperates_with_the_library_api(tmp_path):
    src = {"x": torch.randn(4, 3), "y": torch.arange(5)}
    (tmp_path / "ours.safetensors").write_bytes(encode_tensors(src, {"k": "v"}))
    theirs = st.load_file(str(tmp_path / "ours.safetensors"))
    _same_bytes(theirs, src)
    st.save_file(src, str(tmp_path / "theirs.safetensors"), metadata={"k": "v"})
    got, meta = read_tensors(tmp_path / "theirs.safetensors")
    assert meta == {"k": "v"}
    _same_bytes(got, src)


@pytest.mark.parametrize("damage,why", [
    (lambda b: b[:-1], "is truncated"),
    (lambda b: b[:5], "is truncated .shorter than the 8-byte"),
    (lambda b: b[:30], "header length exceeds the file"),
    (lambda b: b + b"\0", "trailing bytes"),
    (lambda b: b"", "is empty"),
    (lambda b: b"\x80\x04\x95" + b"\0" * 40, "header length exceeds the file"),  # a pickle is not read
    (lambda b: struct.pack("<Q", 2) + b"[]", "not a JSON object"),
    (lambda b: b[:8] + b"}" + b[9:], "not a JSON object"),
    (lambda b: struct.pack("<Q", 4) + b"\xff\xfe{}", "not a JSON object"),
])
def test_damaged_files(tmp_path, damage, why):
    good = encode_tensors({"a": torch.ones(3), "b": torch.zeros(2, 2)})
    p = tmp_path / "d.safetensors"
    p.write_bytes(damage(good))
    for read in (read_tensors, read_header):
        with pytest.raises(TensorFileError, match=why) as e:
            read(p)
        assert "\n" not in str(e.value)
    with pytest.raises(ref.TensorFileError):  # the reference refuses the same file
        ref.read_tensors(p)


def test_truncated_says_how_long_it_should_be(tmp_path):
    good = encode_tensors({"a": torch.ones(3)})
    p = tmp_path / "t.safetensors"
    p.write_bytes(good[:-2])
    with pytest.raises(TensorFileError, match=f"is truncated .{len(good) - 2} bytes, its header describes "
                                              f"{len(good)}"):
        read_tensors(p)


def test_inconsistent_headers(tmp_path):
    p = tmp_path / "h.safetensors"
    for tensors, meta, why in (
        ({"a": ("F32", [3], b"\0" * 8)}, None, "byte count does not match its shape and dtype"),
        ({"a": ("Q7", [1], b"\0")}, None, "unknown dtype"),
        ({"a": ("F32", [-1], b"")}, None, "malformed shape"),
        # the library reads these dtypes; fedleak's models hold none of them, so it refuses them as it did before
        ({"a": ("U32", [1], b"\0" * 4)}, None, "dtype U32, which fedleak does not read"),
        ({"a": ("F8_E4M3", [2], b"\0" * 2)}, None, "dtype F8_E4M3, which fedleak does not read"),
        ({"a": ("U8", [1], b"\0")}, {"round": 3}, "__metadata__ that is not a mapping of strings"),
        ({"a": ("U8", [1], b"\0")}, ["x"], "__metadata__ that is not a mapping of strings"),
    ):
        p.write_bytes(_by_hand(tensors, meta))
        for read in (read_tensors, read_header):
            with pytest.raises(TensorFileError, match=why):
                read(p)
        with pytest.raises(ref.TensorFileError):
            ref.read_tensors(p)
    text = json.dumps({"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
                       "b": {"dtype": "U8", "shape": [2], "data_offsets": [1, 3]}}).encode()
    p.write_bytes(struct.pack("<Q", len(text)) + text + b"\0\0\0")
    with pytest.raises(TensorFileError, match="overlap or leave gaps"):
        read_tensors(p)


def test_not_a_file(tmp_path):
    with pytest.raises(TensorFileError, match="is missing"):
        read_tensors(tmp_path / "nope.safetensors")
    with pytest.raises(TensorFileError, match="is missing"):
        read_header(tmp_path / "nope.safetensors")
    (tmp_path / "dir.safetensors").mkdir()
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)  # nobody writes to it: opening it would block, so it must be refused before
    for p in (tmp_path / "dir.safetensors", fifo):
        for read in (read_tensors, read_header):
            with pytest.raises(TensorFileError, match="is not a regular file"):
                read(p)


def test_refuses_to_write_dtypes_it_does_not_read():
    with pytest.raises(TensorFileError, match="complex64"):
        encode_tensors({"z": torch.zeros(2, dtype=torch.complex64)})


def test_files_are_the_same_bytes_every_time_and_as_before():
    """The library keeps metadata in a hash map (its order changes between calls and processes); fedleak's layer
    puts it back in the caller's order, so a model file's bytes depend only on its tensors and metadata — and for
    tensors of one alignment class (every float32 model), they are the hand-written writer's bytes exactly."""
    g = torch.Generator().manual_seed(3)
    model = {"conv.weight": torch.randn(4, 1, 3, 3, generator=g), "conv.bias": torch.randn(4, generator=g),
             "fc.weight": torch.randn(10, 36, generator=g), "fc.bias": torch.randn(10, generator=g)}
    meta = {"round": "4", "client": "17", "examples": "600", "zeta": "z", "alpha": "ü \"q\""}
    files = {encode_tensors(model, meta) for _ in range(20)}
    assert len(files) == 1
    assert files.pop() == ref.encode_tensors(model, meta)
