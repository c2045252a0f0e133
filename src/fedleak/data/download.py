"""Downloading official dataset files with an md5 check.

A file is streamed to a temporary ``<name>.*.part`` file next to its destination, its md5 is
compared with the official one, and only then is it renamed into place, so a half-finished or
corrupt download never looks like a valid dataset file. ``mirror`` replaces the official base URL
(host and path prefix); the file name is kept: ``<mirror>/<file name>``. Supported URL schemes:
``https``, ``http``, ``ftp`` and ``file`` (a local mirror).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from fedleak.data.base import DataError

log = logging.getLogger(__name__)

MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"

_SCHEMES = ("https", "http", "ftp", "file")

#: How a user asks for a download (``data.download: true`` in an experiment config).
DOWNLOAD_HINT = "fedleak train CONFIG --set data.download=true"


@dataclass(frozen=True)
class RemoteFile:
    """One official file: its name, the md5 of the official bytes and the official base URL."""

    name: str
    md5: str
    base_url: str

    def url(self, mirror: str | None = None) -> str:
        base = mirror if mirror else self.base_url
        return base.rstrip("/") + "/" + self.name


MNIST_FILES = (
    RemoteFile("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873", MNIST_URL),
    RemoteFile("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432", MNIST_URL),
    RemoteFile("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3", MNIST_URL),
    RemoteFile("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c", MNIST_URL),
)
FASHION_MNIST_FILES = (
    RemoteFile("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", FASHION_MNIST_URL),
    RemoteFile("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe", FASHION_MNIST_URL),
    RemoteFile("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79", FASHION_MNIST_URL),
    RemoteFile("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310", FASHION_MNIST_URL),
)
CIFAR10_ARCHIVE = RemoteFile("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a", CIFAR_URL)
CIFAR100_ARCHIVE = RemoteFile("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85", CIFAR_URL)


def md5_of(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download_file(url: str, dest: str | os.PathLike[str], md5: str, *, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` (a file path) and verify its md5; DataError on any failure."""
    dest = Path(dest)
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in _SCHEMES:
        raise DataError(f"cannot download {url!r}: unsupported URL scheme {scheme!r}; use one of {', '.join(_SCHEMES)}")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    except OSError as e:
        raise DataError(f"cannot write to {dest.parent}: {e.strerror or e}; choose a writable --data-dir") from e
    tmp = Path(tmp_name)
    try:
        log.info("downloading %s -> %s", url, dest)
        h = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310
            while block := resp.read(1 << 20):
                h.update(block)
                out.write(block)
        actual = h.hexdigest()
        if actual != md5.lower():
            raise DataError(
                f"checksum mismatch for {dest.name} downloaded from {url}: expected md5 {md5.lower()}, got {actual}; "
                f"the download is corrupt or the mirror serves a different file - retry, use another data.mirror, "
                f"or download the official file by hand into {dest.parent}"
            )
        os.replace(tmp, dest)
        return dest
    except (OSError, http.client.HTTPException, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise DataError(
            f"could not download {url}: {reason}; check the connection or data.mirror, "
            f"or put {dest.name} into {dest.parent} by hand"
        ) from e
    finally:
        if tmp.exists():
            tmp.unlink()


def fetch(files: tuple[RemoteFile, ...] | list[RemoteFile], dest_dir: Path, mirror: str | None = None) -> list[Path]:
    """Download those of ``files`` that are missing from ``dest_dir``; return their paths."""
    out = []
    for rf in files:
        target = dest_dir / rf.name
        if not target.is_file():
            download_file(rf.url(mirror), target, rf.md5)
        out.append(target)
    return out
