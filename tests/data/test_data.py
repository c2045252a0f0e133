"""The dataset layer, checked against independent parses of the files (struct/gzip/pickletools/PIL)."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import os
import pickle
import pickletools
import shutil
import struct
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA, rounding_tol
from fedleak.config import DataConfig
from fedleak.data import (
    DataError,
    available_datasets,
    describe_datasets,
    load_dataset,
    resolve_data_dir,
)
from fedleak.data import download as dl
from fedleak.data.archive import safe_extract
from fedleak.data.idx import parse_idx, read_idx
from fedleak.data.safe_pickle import safe_loads
from fedleak.data.splits import stratified_split

SHARED = SHARED_DATA
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared test data {SHARED} is absent")
MNIST_RAW = SHARED / "MNIST" / "raw"
CIFAR10_DIR = SHARED / "cifar-10-subset"
CIFAR100_DIR = SHARED / "cifar-100-subset"
HAM_DIR = SHARED / "HAM10000-sample"


def cfg(**kw) -> DataConfig:
    return DataConfig(**kw)


# ------------------------------------------------------------------------------------ helpers


def write_idx(path: Path, arr: np.ndarray, code: int = 0x08, gz: bool = True, magic: bytes | None = None) -> Path:
    dt = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    head = magic if magic is not None else bytes([0, 0, code, arr.ndim])
    data = head + struct.pack(f">{arr.ndim}I", *arr.shape) + np.ascontiguousarray(arr, dtype=dt).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def raw_mnist(name: str) -> tuple[tuple[int, ...], bytes]:
    """Independent IDX parse: header dims via struct, payload bytes untouched."""
    with gzip.open(MNIST_RAW / name, "rb") as f:
        data = f.read()
    magic, n = struct.unpack(">II", data[:8])
    if magic == 0x803:
        rows, cols = struct.unpack(">II", data[8:16])
        return (n, rows, cols), data[16:]
    assert magic == 0x801
    return (n,), data[8:]


def write_ppm(path: Path, rgb: np.ndarray) -> None:
    h, w, _ = rgb.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(f"P6\n{w} {h}\n255\n".encode() + rgb.astype(np.uint8).tobytes())


def big_blobs(path: Path, size: int) -> list[bytes]:
    """Byte strings of exactly ``size`` bytes in a pickle, found with pickletools (nothing executed)."""
    out = []
    for op, arg, _ in pickletools.genops(path.read_bytes()):
        if isinstance(arg, str) and len(arg) == size:
            out.append(arg.encode("latin1"))
        elif isinstance(arg, (bytes, bytearray)) and len(arg) == size:
            out.append(bytes(arg))
    return out


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # noqa: D401 - silence the test server
        pass


@pytest.fixture
def http_root(tmp_path):
    """A loopback-only HTTP server serving tmp_path/www; yields (folder, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/files"
    finally:
        server.shutdown()
        server.server_close()


# ----------------------------------------------------------------------------------- registry


def test_unknown_dataset_lists_known_names():
    with pytest.raises(DataError) as e:
        load_dataset(cfg(name="imagenet"))
    msg = str(e.value)
    assert "imagenet" in msg and "\n" not in msg
    for name in ("digits", "synthetic", "mnist", "fashion-mnist", "cifar10", "cifar100", "ham10000", "imagefolder"):
        assert name in msg
    assert set(available_datasets()) >= {"digits", "mnist", "cifar10", "dermnet"}


def test_unknown_normalization_is_rejected():
    with pytest.raises(DataError, match="normalization"):
        load_dataset(cfg(name="synthetic", normalization="imagenet"))


def test_data_dir_resolution(monkeypatch, tmp_path):
    import platformdirs

    monkeypatch.setenv("FEDLEAK_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir(str(tmp_path / "explicit")) == tmp_path / "explicit"
    assert resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv("FEDLEAK_DATA_DIR")
    assert resolve_data_dir(None) == Path(platformdirs.user_cache_dir("fedleak")) / "data"


# ------------------------------------------------------------------------------------ digits


def test_digits_values_split_and_determinism():
    from sklearn.datasets import load_digits

    ref = load_digits()
    ds = load_dataset(cfg(), seed=3)
    assert ds.name == "digits" and ds.input_shape == (1, 8, 8) and ds.num_classes == 10
    assert ds.train.x.dtype == torch.float32 and ds.train.y.dtype == torch.int64
    assert len(ds.train) + len(ds.test) == 1797
    # every loaded (image, label) is an original row /16, and together they are all rows exactly once
    def rows(x: np.ndarray, y: np.ndarray) -> list[bytes]:  # label + the 64 pixel values 0..16, as bytes
        table = np.concatenate([y[:, None], x.reshape(len(y), 64)], axis=1).astype(np.uint8)
        return sorted(r.tobytes() for r in table)

    x_all = torch.cat([ds.train.x, ds.test.x]).numpy() * 16
    assert np.array_equal(x_all, np.round(x_all))
    y_all = torch.cat([ds.train.y, ds.test.y]).numpy()
    assert rows(x_all, y_all) == rows(ref.images, ref.target)
    assert float(ds.train.x.max()) == 1.0 and float(ds.train.x.min()) == 0.0
    # stratified: each class gives round(0.2 * n_c) test rows
    counts = np.bincount(ref.target, minlength=10)
    assert np.array_equal(np.bincount(ds.test.y.numpy(), minlength=10), np.round(0.2 * counts).astype(int))
    # default normalisation = statistics of the training split
    x = ds.train.x.numpy().astype(np.float64)
    assert ds.mean[0] == pytest.approx(x.mean(), abs=1e-9) and ds.std[0] == pytest.approx(x.std(), abs=1e-9)
    again, other = load_dataset(cfg(), seed=3), load_dataset(cfg(), seed=4)
    assert torch.equal(again.train.x, ds.train.x) and torch.equal(again.test.y, ds.test.y)
    assert not torch.equal(other.train.y, ds.train.y)


def test_stratified_split_keeps_groups_together():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 40)
    groups = np.arange(120) // 4  # 30 groups of 4 rows, each within one class
    tr, te = stratified_split(labels, 0.3, rng, groups)  # 12 of 40 rows per class = 3 groups
    assert np.intersect1d(tr, te).size == 0 and np.union1d(tr, te).size == 120
    assert not set(groups[tr]) & set(groups[te])
    assert np.array_equal(np.bincount(labels[te], minlength=3), [12, 12, 12])


# --------------------------------------------------------------------------------- synthetic


def test_synthetic_shapes_determinism_and_learnability():
    opts = {"n_train": 300, "n_test": 200, "num_classes": 4, "channels": 3, "size": 8}
    ds = load_dataset(cfg(name="synthetic", synthetic=opts), seed=1)
    assert ds.train.x.shape == (300, 3, 8, 8) and ds.test.x.shape == (200, 3, 8, 8) and ds.num_classes == 4
    assert 0.0 <= float(ds.train.x.min()) and float(ds.train.x.max()) <= 1.0
    assert torch.equal(ds.train.x, load_dataset(cfg(name="synthetic", synthetic=opts), seed=1).train.x)
    assert not torch.equal(ds.train.x, load_dataset(cfg(name="synthetic", synthetic=opts), seed=2).train.x)
    # nearest class mean (computed from train) classifies the test split
    xtr, ytr = ds.train.x.flatten(1).numpy(), ds.train.y.numpy()
    centroids = np.stack([xtr[ytr == k].mean(0) for k in range(4)])
    xte = ds.test.x.flatten(1).numpy()
    pred = np.argmin(((xte[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (pred == ds.test.y.numpy()).mean() > 0.95
    with pytest.raises(DataError, match="n_trian"):
        load_dataset(cfg(name="synthetic", synthetic={"n_trian": 3}))


# --------------------------------------------------------------------------------------- IDX


def test_idx_reader_against_handwritten_files(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a.gz", a)), a)
    b = np.array([[-300, 7], [2, 32000]], dtype=np.int16)
    got = read_idx(write_idx(tmp_path / "b", b, code=0x0B, gz=False))
    assert got.dtype == np.int16 and np.array_equal(got, b)
    c = np.array([0.5, -1.25, 3.0], dtype=np.float32)
    assert np.array_equal(read_idx(write_idx(tmp_path / "c.gz", c, code=0x0D)), c)
    raw = (tmp_path / "b").read_bytes()
    with pytest.raises(DataError, match="magic"):
        parse_idx(b"\x01\x00" + raw[2:])
    with pytest.raises(DataError, match="truncated"):
        parse_idx(raw[:-1])
    with pytest.raises(DataError, match="dimensions"):
        parse_idx(raw, ndim=3)
    with pytest.raises(DataError, match="type code"):
        parse_idx(raw, dtype=0x08)
    with pytest.raises(DataError, match="type code 0x07"):
        parse_idx(bytes([0, 0, 7, 1, 0, 0, 0, 0]))
    (tmp_path / "bad.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="bad.gz"):
        read_idx(tmp_path / "bad.gz")


# ------------------------------------------------------------------------------------- MNIST


@needs_shared
def test_mnist_pixels_equal_official_bytes():
    ds = load_dataset(cfg(name="mnist", data_dir=str(SHARED)))
    (n, h, w), pix = raw_mnist("train-images-idx3-ubyte.gz")
    (_,), lab = raw_mnist("train-labels-idx1-ubyte.gz")
    assert (n, h, w) == (60000, 28, 28) and ds.train.x.shape == (60000, 1, 28, 28)
    raw = np.frombuffer(pix, dtype=np.uint8).reshape(n, h, w)
    rows = np.r_[0, 1, 12345, 59999, np.random.default_rng(0).integers(0, n, 50)]
    assert torch.equal(torch.round(ds.train.x[rows, 0] * 255).to(torch.uint8), torch.from_numpy(raw[rows]))
    assert np.array_equal(ds.train.y.numpy(), np.frombuffer(lab, dtype=np.uint8))
    (nt, _, _), tpix = raw_mnist("t10k-images-idx3-ubyte.gz")
    assert nt == 10000 and len(ds.test) == 10000
    assert torch.equal(torch.round(ds.test.x[-1, 0] * 255).to(torch.uint8), torch.from_numpy(
        np.frombuffer(tpix, dtype=np.uint8)[-784:].reshape(28, 28).copy()))
    assert ds.mean == (0.1307,) and ds.std == (0.3081,)
    # the md5 constants of the download table are those of the official files
    for rf in dl.MNIST_FILES:
        assert dl.md5_of(MNIST_RAW / rf.name) == rf.md5


@needs_shared
def test_mnist_layouts_limits_and_missing(tmp_path):
    for sub in ("mnist", ""):
        d = tmp_path / (sub or "bare")
        (d / sub).mkdir(parents=True, exist_ok=True)
        for rf in dl.MNIST_FILES:
            os.symlink(MNIST_RAW / rf.name, d / sub / rf.name)
        ds = load_dataset(cfg(name="mnist", data_dir=str(d), max_train=100, max_test=7))
        assert ds.train.x.shape == (100, 1, 28, 28) and ds.test.x.shape == (7, 1, 28, 28)
        assert ds.train.y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    # MNIST files where Fashion-MNIST is asked for: refused by content, not silently used
    with pytest.raises(DataError, match="are mnist, not fashion-mnist"):
        load_dataset(cfg(name="fashion-mnist", data_dir=str(tmp_path / "bare")))
    empty = tmp_path / "empty"
    (empty / "MNIST" / "raw").mkdir(parents=True)
    os.symlink(MNIST_RAW / "train-images-idx3-ubyte.gz", empty / "MNIST" / "raw" / "train-images-idx3-ubyte.gz")
    with pytest.raises(DataError) as e:
        load_dataset(cfg(name="mnist", data_dir=str(empty)))
    msg = str(e.value)
    assert "--set data.download=true" in msg and "t10k-labels-idx1-ubyte.gz" in msg and "lacks" in msg and "\n" not in msg
    with pytest.raises(DataError, match=r"not found in .*nowhere: put the official files .* or download them: fedleak train .* --set data.download=true"):
        load_dataset(cfg(name="mnist", data_dir=str(tmp_path / "nowhere")))


def test_fashion_mnist_layout_and_checks(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labs = np.array([9, 0, 3, 2, 7], dtype=np.uint8)
    raw = tmp_path / "FashionMNIST" / "raw"
    write_idx(raw / "train-images-idx3-ubyte.gz", imgs)
    write_idx(raw / "train-labels-idx1-ubyte.gz", labs)
    write_idx(raw / "t10k-images-idx3-ubyte", imgs[:2], gz=False)  # decompressed files are accepted too
    write_idx(raw / "t10k-labels-idx1-ubyte.gz", labs[:2])
    ds = load_dataset(cfg(name="fashion-mnist", data_dir=str(tmp_path), normalization="none"))
    assert torch.equal(ds.train.x[:, 0], torch.from_numpy(imgs).float() / 255)
    assert ds.train.y.tolist() == [9, 0, 3, 2, 7] and ds.test.y.tolist() == [9, 0]
    assert ds.class_names[9] == "Ankle boot" and ds.mean == (0.0,) and ds.std == (1.0,)
    assert load_dataset(cfg(name="fmnist", data_dir=str(tmp_path))).mean == (0.2860,)
    write_idx(raw / "t10k-labels-idx1-ubyte.gz", labs[:3])
    with pytest.raises(DataError, match="2 images but 3 labels"):
        load_dataset(cfg(name="fashion-mnist", data_dir=str(tmp_path)))
    write_idx(raw / "t10k-labels-idx1-ubyte.gz", labs[:2])
    write_idx(raw / "train-images-idx3-ubyte.gz", imgs[:, :14])
    with pytest.raises(DataError, match="expected 28x28"):
        load_dataset(cfg(name="fashion-mnist", data_dir=str(tmp_path)))
    write_idx(raw / "train-images-idx3-ubyte.gz", imgs, magic=b"\x00\x00\x08\x02")
    with pytest.raises(DataError, match="dimensions"):
        load_dataset(cfg(name="fashion-mnist", data_dir=str(tmp_path)))


# ------------------------------------------------------------------------------------- CIFAR


@needs_shared
def test_cifar10_subset_against_raw_pickle_bytes():
    ds = load_dataset(cfg(name="cifar10", data_dir=str(CIFAR10_DIR)))
    batches = CIFAR10_DIR / "cifar-10-batches-py"
    assert ds.train.x.shape == (5 * 1017, 3, 32, 32) and ds.test.x.shape == (1017, 3, 32, 32)
    assert ds.class_names == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert ds.train.y[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]  # the official data_batch_1 starts so
    assert ds.test.y[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    as_u8 = lambda t: torch.round(t * 255).to(torch.uint8).reshape(t.shape[0], -1).numpy()  # noqa: E731
    for b in (1, 3):  # rows of batch b start at (b-1)*1017, channel-major 3x32x32
        (blob,) = big_blobs(batches / f"data_batch_{b}", 1017 * 3072)
        raw = np.frombuffer(blob, dtype=np.uint8).reshape(1017, 3072)
        assert np.array_equal(as_u8(ds.train.x[(b - 1) * 1017 : b * 1017]), raw)
    (blob,) = big_blobs(batches / "test_batch", 1017 * 3072)
    assert np.array_equal(as_u8(ds.test.x), np.frombuffer(blob, dtype=np.uint8).reshape(1017, 3072))
    assert ds.mean == (0.4914, 0.4822, 0.4465) and ds.std == (0.2023, 0.1994, 0.2010)


@needs_shared
def test_cifar100_fine_labels_and_normalisation_choices():
    ds = load_dataset(cfg(name="cifar100", data_dir=str(CIFAR100_DIR)))
    assert ds.num_classes == 100 and len(ds.class_names) == 100 and ds.class_names[:2] == ["apple", "aquarium_fish"]
    assert ds.train.x.shape == (1117, 3, 32, 32) and ds.test.x.shape == (916, 3, 32, 32)
    assert ds.train.y[:10].tolist() == [19, 29, 0, 11, 1, 86, 90, 28, 23, 31]
    assert ds.test.y[:10].tolist() == [49, 33, 72, 51, 71, 92, 15, 14, 23, 0]
    (blob,) = big_blobs(CIFAR100_DIR / "cifar-100-python" / "train", 1117 * 3072)
    first = np.frombuffer(blob, dtype=np.uint8)[:3072].reshape(3, 32, 32)
    assert torch.equal(torch.round(ds.train.x[0] * 255).to(torch.uint8), torch.from_numpy(first.copy()))
    assert ds.mean == (0.4914, 0.4822, 0.4465)  # default: CIFAR-10 constants, as the original
    true = load_dataset(cfg(name="cifar100", data_dir=str(CIFAR100_DIR), normalization="cifar100", max_train=10))
    assert true.mean == (0.5071, 0.4865, 0.4409) and true.std == (0.2673, 0.2564, 0.2762)


def _tar_of(folder: Path, arc_top: str, out: Path, extra: list[tarfile.TarInfo] | None = None) -> Path:
    with tarfile.open(out, "w:gz", compresslevel=1) as tar:
        tar.add(folder, arcname=arc_top)
        for info in extra or []:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return out


@pytest.fixture(scope="module")
def cifar10_tar(tmp_path_factory) -> Path:
    """The shared CIFAR-10 subset packed like the official archive (built once per module)."""
    out = tmp_path_factory.mktemp("cifar-tar") / "cifar-10-python.tar.gz"
    return _tar_of(CIFAR10_DIR / "cifar-10-batches-py", "cifar-10-batches-py", out)


@needs_shared
def test_cifar10_from_tar_gz_matches_folder(tmp_path, cifar10_tar):
    os.symlink(cifar10_tar, tmp_path / "cifar-10-python.tar.gz")
    (tmp_path / "cifar-10-batches-py").mkdir()  # an incomplete earlier copy is replaced
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"partial")
    ds = load_dataset(cfg(name="cifar10", data_dir=str(tmp_path), max_train=50, max_test=20))
    ref = load_dataset(cfg(name="cifar10", data_dir=str(CIFAR10_DIR), max_train=50, max_test=20))
    assert torch.equal(ds.train.x, ref.train.x) and torch.equal(ds.test.y, ref.test.y)
    assert (tmp_path / "cifar-10-batches-py" / "data_batch_5").is_file()  # extracted once, reused next time
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".extract")]


@needs_shared
def test_download_cifar10_over_http_then_extract(http_root, tmp_path, monkeypatch, cifar10_tar):
    import dataclasses

    from fedleak.data import vision

    root, base = http_root
    (root / "files").mkdir()
    arch = root / "files" / "cifar-10-python.tar.gz"
    os.symlink(cifar10_tar, arch)
    # the official md5 cannot match a repacked subset: point the spec at this archive's md5
    fake = dataclasses.replace(vision.CIFAR10, archive=dl.RemoteFile(arch.name, dl.md5_of(arch), dl.CIFAR_URL))
    monkeypatch.setattr(vision, "CIFAR10", fake)
    data_dir = tmp_path / "d"
    ds = load_dataset(cfg(name="cifar10", data_dir=str(data_dir), download=True, mirror=base, max_train=3, max_test=3))
    assert ds.train.y.tolist() == [6, 9, 9]
    assert dl.md5_of(data_dir / arch.name) == dl.md5_of(arch)
    assert (data_dir / "cifar-10-batches-py" / "test_batch").is_file()


def test_tar_extraction_refuses_traversal_and_links(tmp_path):
    inner = tmp_path / "src"
    (inner / "a").mkdir(parents=True)
    (inner / "a" / "ok.txt").write_text("ok")
    evil = tarfile.TarInfo("cifar-10-batches-py/../../evil.txt")
    evil.size = 3
    link = tarfile.TarInfo("cifar-10-batches-py/link")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    absolute = tarfile.TarInfo("/tmp/abs.txt")
    absolute.size = 1
    other = tarfile.TarInfo("elsewhere/x.txt")
    other.size = 1
    for bad, what in ((evil, "outside"), (link, "link"), (absolute, "outside"), (other, "outside")):
        arch = _tar_of(inner, "cifar-10-batches-py", tmp_path / f"bad-{what}.tar.gz", [bad])
        dest = tmp_path / f"dest-{bad.name.replace('/', '_')}"
        with pytest.raises(DataError, match=what):
            safe_extract(arch, dest, "cifar-10-batches-py")
        assert not (tmp_path / "evil.txt").exists() and not (dest / "cifar-10-batches-py").exists()
    good = _tar_of(inner, "cifar-10-batches-py", tmp_path / "good.tar.gz")
    out = safe_extract(good, tmp_path / "dest", "cifar-10-batches-py")
    assert (out / "a" / "ok.txt").read_text() == "ok"


# -------------------------------------------------------------------------- restricted pickle


class _Evil:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.remove, (self.target,))


def test_restricted_unpickler(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("still here")
    for proto in (0, 2, 4):
        with pytest.raises(DataError, match="refusing to unpickle"):
            safe_loads(pickle.dumps({b"data": _Evil(str(victim))}, protocol=proto))
    assert victim.read_text() == "still here"
    with pytest.raises(DataError, match="builtins.eval"):
        safe_loads(b"cbuiltins\neval\n(S'1+1'\ntR.")
    with pytest.raises(DataError, match="object"):
        safe_loads(pickle.dumps(np.array([1, "a"], dtype=object), protocol=2))
    direct = pickle.dumps(np.zeros(2), protocol=2).replace(b"X\x01\x00\x00\x00bq", b"X\x01\x00\x00\x00Oq")  # _reconstruct(ndarray, (0,), b"O")
    assert direct != pickle.dumps(np.zeros(2), protocol=2)
    with pytest.raises(DataError, match="object"):
        safe_loads(direct)
    with pytest.raises(DataError, match="cannot read"):
        safe_loads(b"\x80\x02}q\x00(")  # truncated
    good = {b"data": np.arange(12, dtype=np.uint8).reshape(3, 4), b"labels": [1, 2, 3], b"name": b"x"}
    for proto in (2, 4, 5):
        back = safe_loads(pickle.dumps(good, protocol=proto))
        assert np.array_equal(back[b"data"], good[b"data"]) and back[b"labels"] == [1, 2, 3] and back[b"name"] == b"x"
    # the pre-numpy-2 module name (as in the official Python 2 CIFAR files) resolves too
    p2 = pickle.dumps(good, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray\n_reconstruct" in p2
    assert np.array_equal(safe_loads(p2)[b"data"], good[b"data"])


def test_cifar_pickle_with_foreign_object_is_refused(tmp_path):
    batches = tmp_path / "cifar-10-batches-py"
    batches.mkdir()
    ok = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}
    for f in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "test_batch"):
        (batches / f).write_bytes(pickle.dumps(ok, protocol=2))
    (batches / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]}, protocol=2))
    (batches / "data_batch_5").write_bytes(pickle.dumps({b"data": _Evil(str(tmp_path / "x")), b"labels": []}, protocol=2))
    with pytest.raises(DataError, match="data_batch_5"):
        load_dataset(cfg(name="cifar10", data_dir=str(tmp_path)))
    (batches / "data_batch_5").write_bytes(pickle.dumps(ok, protocol=2))
    ds = load_dataset(cfg(name="cifar10", data_dir=str(tmp_path)))
    assert len(ds.train) == 10 and ds.class_names[3] == "c3"
    (batches / "data_batch_5").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}))
    with pytest.raises(DataError, match="labels outside"):
        load_dataset(cfg(name="cifar10", data_dir=str(tmp_path)))
    shutil.rmtree(batches)
    with pytest.raises(DataError) as e:
        load_dataset(cfg(name="cifar10", data_dir=str(tmp_path)))
    assert "cifar-10-python.tar.gz" in str(e.value) and "cifar-10-batches-py/" in str(e.value)
    assert "--set data.download=true" in str(e.value)


# ---------------------------------------------------------------------------------- download


def test_download_file_success_and_md5_mismatch(http_root, tmp_path):
    root, base = http_root
    (root / "files").mkdir()
    payload = os.urandom(3000)
    (root / "files" / "blob.bin").write_bytes(payload)
    md5 = hashlib.md5(payload).hexdigest()
    dest = tmp_path / "out" / "blob.bin"
    dl.download_file(f"{base}/blob.bin", dest, md5)
    assert dest.read_bytes() == payload
    bad = tmp_path / "out2" / "blob.bin"
    with pytest.raises(DataError) as e:
        dl.download_file(f"{base}/blob.bin", bad, "0" * 32)
    msg = str(e.value)
    assert "blob.bin" in msg and "0" * 32 in msg and md5 in msg and "\n" not in msg
    assert not bad.exists() and list(bad.parent.iterdir()) == []  # no partial file left
    with pytest.raises(DataError, match="could not download"):
        dl.download_file(f"{base}/missing.bin", tmp_path / "out3" / "m.bin", md5)
    assert list((tmp_path / "out3").iterdir()) == []
    with pytest.raises(DataError, match="scheme"):
        dl.download_file("gopher://x/y", tmp_path / "y", md5)
    assert dl.RemoteFile("a.gz", md5, "https://host/path/").url("http://mirror/x/") == "http://mirror/x/a.gz"
    assert dl.CIFAR10_ARCHIVE.url() == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


@needs_shared
def test_download_mnist_from_file_mirror(tmp_path):
    data_dir = tmp_path / "cache"
    c = cfg(name="mnist", data_dir=str(data_dir), download=True, mirror=MNIST_RAW.as_uri(), max_train=20, max_test=5)
    ds = load_dataset(c)
    for rf in dl.MNIST_FILES:
        assert dl.md5_of(data_dir / "MNIST" / "raw" / rf.name) == rf.md5
    assert ds.train.y[:4].tolist() == [5, 0, 4, 1] and len(ds.test) == 5
    # without data.download a missing dataset says what to do
    with pytest.raises(DataError, match="--set data.download=true"):
        load_dataset(cfg(name="mnist", data_dir=str(tmp_path)))


def test_download_cifar_checksum_mismatch_names_the_file(http_root, tmp_path):
    root, base = http_root
    (root / "files").mkdir()
    (root / "files" / "cifar-10-python.tar.gz").write_bytes(b"not the real archive")
    c = cfg(name="cifar10", data_dir=str(tmp_path / "d"), download=True, mirror=base)
    with pytest.raises(DataError) as e:
        load_dataset(c)
    msg = str(e.value)
    assert "cifar-10-python.tar.gz" in msg and dl.CIFAR10_ARCHIVE.md5 in msg
    assert hashlib.md5(b"not the real archive").hexdigest() in msg
    assert not (tmp_path / "d" / "cifar-10-python.tar.gz").exists()


# --------------------------------------------------------------------------- post-processing


@pytest.mark.numerics  # antialiased resize: torch float32 kernels vs Pillow
@needs_shared
def test_resize_channels_and_normalisation_options():
    from PIL import Image

    base = load_dataset(cfg(name="cifar10", data_dir=str(CIFAR10_DIR), max_train=16, max_test=4))
    small = load_dataset(cfg(name="cifar10", data_dir=str(CIFAR10_DIR), max_train=16, max_test=4, image_size=20))
    assert small.train.x.shape == (16, 3, 20, 20) and small.test.x.shape == (4, 3, 20, 20)
    # PIL's (independent) antialiased bilinear resize of each channel gives the same pixels
    for c in range(3):
        ch = base.train.x[5, c].numpy()
        ref = np.asarray(Image.fromarray(ch).resize((20, 20), Image.BILINEAR))  # float32 -> mode F
        # a convex combination of ≤ 5×5 [0, 1] pixels (32 -> 20 antialiased) in float32 by both libraries
        assert np.abs(small.train.x[5, c].numpy() - ref).max() < rounding_tol(25, 1.0)
    grey = load_dataset(cfg(name="cifar10", data_dir=str(CIFAR10_DIR), max_train=16, max_test=4, channels=1))
    lum = 0.299 * base.train.x[:, 0] + 0.587 * base.train.x[:, 1] + 0.114 * base.train.x[:, 2]
    assert torch.allclose(grey.train.x[:, 0], lum, rtol=0, atol=rounding_tol(3, 1.0))  # 3-term float32 sum
    x = grey.train.x.numpy().astype(np.float64)  # 3-channel constants do not apply: dataset statistics
    assert grey.mean == pytest.approx((x.mean(),)) and grey.std == pytest.approx((x.std(),))
    with pytest.raises(DataError, match="3-channel"):
        load_dataset(cfg(name="cifar10", data_dir=str(CIFAR10_DIR), max_train=4, channels=1, normalization="cifar10"))
    rgb = load_dataset(cfg(name="mnist", data_dir=str(SHARED), max_train=8, max_test=2, channels=3, image_size=32))
    assert rgb.train.x.shape == (8, 3, 32, 32) and rgb.mean == (0.1307,) * 3 and rgb.std == (0.3081,) * 3
    assert torch.equal(rgb.train.x[:, 0], rgb.train.x[:, 2])
    dstat = load_dataset(cfg(name="cifar10", data_dir=str(CIFAR10_DIR), max_train=16, max_test=4, normalization="dataset"))
    xs = base.train.x.numpy().astype(np.float64)
    assert dstat.mean == pytest.approx(tuple(xs.mean(axis=(0, 2, 3)))) and dstat.std == pytest.approx(
        tuple(xs.std(axis=(0, 2, 3)))
    )
    none = load_dataset(cfg(name="cifar10", data_dir=str(CIFAR10_DIR), max_train=4, max_test=4, normalization="none"))
    assert torch.equal(none.normalize(none.train.x), none.train.x)
    z = dstat.normalize(dstat.train.x).numpy()
    assert np.abs(z.mean(axis=(0, 2, 3))).max() < 1e-5 and np.abs(z.std(axis=(0, 2, 3)) - 1).max() < 1e-4


# ------------------------------------------------------------------------ image folders / HAM


def _make_tree(root: Path, counts: dict[str, int], start: int = 0) -> dict[bytes, str]:
    """Write 6x6 PPM images whose first pixel encodes a unique id; return {pixel bytes: class}."""
    out, k = {}, start
    for cls, n in counts.items():
        for i in range(n):
            rgb = np.full((6, 6, 3), k % 256, dtype=np.uint8)
            rgb[0, 0] = (k // 256, k % 256, 7)
            rgb[5, 5] = (len(cls), i, 200)
            write_ppm(root / cls / f"img{i:03d}.ppm", rgb)
            out[rgb.tobytes()] = cls
            k += 1
    (root / next(iter(counts)) / "notes.txt").write_text("not an image")
    return out


def _u8_hwc(x: torch.Tensor) -> bytes:
    return torch.round(x * 255).to(torch.uint8).permute(1, 2, 0).numpy().tobytes()


def test_imagefolder_pixels_labels_and_seeded_split(tmp_path):
    truth = _make_tree(tmp_path / "root", {"cat": 7, "dog": 5, "eel": 8})
    c = cfg(name="imagefolder", root=str(tmp_path / "root"), image_size=6, test_fraction=0.25)
    ds = load_dataset(c, seed=5)
    assert ds.class_names == ["cat", "dog", "eel"] and ds.input_shape == (3, 6, 6)
    assert len(ds.train) == 15 and len(ds.test) == 5
    seen = []
    for split in (ds.train, ds.test):
        for i in range(len(split)):
            key = _u8_hwc(split.x[i])
            assert ds.class_names[int(split.y[i])] == truth[key]  # exact pixels and the folder's label
            seen.append(key)
    assert sorted(seen) == sorted(truth)
    assert torch.equal(load_dataset(c, seed=5).test.x, ds.test.x)
    assert not torch.equal(load_dataset(c, seed=6).test.x, ds.test.x)
    assert load_dataset(c.model_copy(update={"image_size": None}), seed=5).input_shape == (3, 64, 64)
    (tmp_path / "root" / "dog" / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match="broken.png"):
        load_dataset(c)
    with pytest.raises(DataError, match="data.root"):
        load_dataset(cfg(name="imagefolder", data_dir=str(tmp_path)))
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(cfg(name="imagefolder", root=str(tmp_path / "nope")))


def test_dermnet_follows_the_fedmia_protocol(tmp_path):
    from PIL import Image

    root = tmp_path / "dermnet"
    tr = _make_tree(root / "train", {"acne": 9, "eczema": 11, "warts": 6})
    te = _make_tree(root / "test", {"acne": 4, "eczema": 3, "warts": 5}, start=100)
    # the listing order of torchvision's ImageFolder: train then test, classes and files sorted
    order = []
    for part, counts in (("train", {"acne": 9, "eczema": 11, "warts": 6}), ("test", {"acne": 4, "eczema": 3, "warts": 5})):
        for cls, n in counts.items():
            for i in range(n):
                with Image.open(root / part / cls / f"img{i:03d}.ppm") as im:
                    order.append(np.asarray(im).tobytes())
    n = len(order)  # 38 -> 38*15000//19000 = 30 train, 38*4000//19000 = 8 test
    torch.manual_seed(42)
    perm = torch.randperm(n).tolist()
    ds = load_dataset(cfg(name="dermnet", data_dir=str(tmp_path), image_size=6), seed=123)
    assert len(ds.train) == 30 and len(ds.test) == 8 and ds.class_names == ["acne", "eczema", "warts"]
    assert [_u8_hwc(x) for x in ds.train.x] == [order[i] for i in perm[:30]]
    assert [_u8_hwc(x) for x in ds.test.x] == [order[i] for i in perm[-8:]]
    truth = {**tr, **te}
    assert [ds.class_names[int(y)] for y in ds.test.y] == [truth[order[i]] for i in perm[-8:]]
    assert ds.mean == (0.4914, 0.4822, 0.4465)


@needs_shared
def test_ham10000_sample_labels_and_pixels():
    import csv

    from PIL import Image

    with open(HAM_DIR / "HAM10000_metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    classes = sorted({"akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"})
    ds = load_dataset(cfg(name="ham10000", data_dir=str(HAM_DIR)), seed=0)
    assert ds.class_names == classes and ds.input_shape == (3, 64, 64)
    assert len(ds.train) + len(ds.test) == len(rows) == 113
    got = np.bincount(torch.cat([ds.train.y, ds.test.y]).numpy(), minlength=7)
    assert got.tolist() == [sum(r["dx"] == c for r in rows) for c in classes]
    # identify each loaded image by its mean colour (a downscale preserves it) in full-resolution decodes
    means = {}
    for r in rows:
        with Image.open(HAM_DIR / "images" / f"{r['image_id']}.jpg") as im:
            means[r["image_id"]] = np.asarray(im.convert("RGB"), dtype=np.float64).mean(axis=(0, 1)) / 255
    ids = list(means)
    table = np.stack([means[i] for i in ids])
    dx = {r["image_id"]: r["dx"] for r in rows}
    lesion = {r["image_id"]: r["lesion_id"] for r in rows}
    split_lesions = []
    for split in (ds.train, ds.test):
        lesions = set()
        for x, y in zip(split.x, split.y):
            dist = np.abs(table - x.double().mean(dim=(1, 2)).numpy()).max(axis=1)
            j = int(np.argmin(dist))
            assert dist[j] < 0.01
            assert dx[ids[j]] == classes[int(y)]
            lesions.add(lesion[ids[j]])
        split_lesions.append(lesions)
    assert not split_lesions[0] & split_lesions[1]  # no lesion on both sides


@needs_shared
def test_ham10000_official_layout_and_errors(tmp_path):
    rows = (HAM_DIR / "HAM10000_metadata.csv").read_text().splitlines()
    keep = [rows[0]] + rows[1:11]
    d = tmp_path / "HAM10000"
    (d / "HAM10000_images_part_1").mkdir(parents=True)
    (d / "HAM10000_images_part_2").mkdir()
    for k, line in enumerate(keep[1:]):
        image_id = line.split(",")[1]
        part = "HAM10000_images_part_1" if k % 2 else "HAM10000_images_part_2"
        os.symlink(HAM_DIR / "images" / f"{image_id}.jpg", d / part / f"{image_id}.jpg")
    (d / "HAM10000_metadata.csv").write_text("\n".join(keep) + "\n")
    ds = load_dataset(cfg(name="ham10000", data_dir=str(tmp_path), image_size=16, max_train=5))
    assert len(ds.train) == 5 and ds.input_shape == (3, 16, 16)
    missing = keep + ["HAM_9999999,ISIC_9999999,nv,histo,50.0,male,back"]
    (d / "HAM10000_metadata.csv").write_text("\n".join(missing) + "\n")
    with pytest.raises(DataError, match="ISIC_9999999"):
        load_dataset(cfg(name="ham10000", data_dir=str(tmp_path)))
    bad = keep + [keep[1].replace(",bkl,", ",xyz,").replace(",nv,", ",xyz,")]
    (d / "HAM10000_metadata.csv").write_text("\n".join(bad) + "\n")
    with pytest.raises(DataError, match="unknown dx"):
        load_dataset(cfg(name="ham10000", data_dir=str(tmp_path)))
    with pytest.raises(DataError, match="HAM10000_metadata.csv"):
        load_dataset(cfg(name="ham10000", data_dir=str(tmp_path / "HAM10000" / "HAM10000_images_part_1")))


# ---------------------------------------------------------------------------- describe / CLI


@needs_shared
def test_describe_datasets_and_cli(tmp_path):
    import typer
    from typer.testing import CliRunner

    from fedleak.data.commands import datasets_command

    os.symlink(MNIST_RAW.parent, tmp_path / "MNIST")
    os.symlink(CIFAR100_DIR / "cifar-100-python", tmp_path / "cifar-100-python")
    rows = {r["name"]: r for r in describe_datasets(str(tmp_path))}
    assert set(rows) == set(available_datasets())
    for r in rows.values():
        assert {"name", "description", "files", "found", "downloadable", "source", "license"} <= set(r)
    assert rows["mnist"]["found"] is True and rows["mnist"]["location"] == str(tmp_path / "MNIST" / "raw")
    assert rows["cifar100"]["found"] is True and rows["cifar10"]["found"] is False
    assert rows["digits"]["found"] is True and rows["imagefolder"]["found"] is None
    assert rows["cifar10"]["downloadable"] and not rows["ham10000"]["downloadable"]
    app = typer.Typer()
    app.command("datasets")(datasets_command)
    app.command("other")(lambda: None)
    res = CliRunner().invoke(app, ["datasets", "--data-dir", str(tmp_path)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    for name in ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "ham10000", "dermnet"):
        assert name in res.output
    assert "cifar-10-python.tar.gz" in res.output
