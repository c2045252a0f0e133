"""Safe extraction of the official ``.tar.gz`` archives.

Only regular files and directories below one expected top-level folder are extracted; an
absolute name, a ``..`` component, a link, a device or a member outside that folder aborts the
whole extraction with a DataError before anything is written. Members are extracted into a
temporary folder next to the destination and moved into place at the end, so an interrupted
extraction never leaves a half-written dataset folder behind.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from fedleak.data.base import DataError
from fedleak.data.download import DOWNLOAD_HINT


def _checked_members(tar: tarfile.TarFile, archive: Path, top: str) -> list[tuple[tarfile.TarInfo, PurePosixPath]]:
    out = []
    for m in tar.getmembers():
        raw = m.name.replace("\\", "/")
        p = PurePosixPath(raw)
        parts = [q for q in p.parts if q not in ("", ".")]
        bad = (
            p.is_absolute()
            or raw.startswith("/")
            or ".." in parts
            or (parts and ":" in parts[0])  # drive letters
            or not parts
            or parts[0] != top
        )
        if bad:
            raise DataError(
                f"refusing to extract {archive.name}: member {m.name!r} lies outside {top}/; "
                f"the archive is not the official one - delete it and download again ({DOWNLOAD_HINT})"
            )
        if not (m.isfile() or m.isdir()):
            raise DataError(
                f"refusing to extract {archive.name}: member {m.name!r} is a link or special file; "
                f"the archive is not the official one - delete it and download again ({DOWNLOAD_HINT})"
            )
        out.append((m, PurePosixPath(*parts)))
    return out


def safe_extract(archive: str | os.PathLike[str], dest: str | os.PathLike[str], top: str) -> Path:
    """Extract ``archive`` (tar, optionally gzip) so that ``dest/top`` exists; return that path."""
    archive, dest = Path(archive), Path(dest)
    final = dest / top
    try:
        tar = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"cannot read {archive}: {e}; delete it and download again ({DOWNLOAD_HINT})") from e
    with tar:
        members = _checked_members(tar, archive, top)
        dest.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{top}.", suffix=".extract", dir=dest))
        try:
            for m, rel in members:
                target = tmp.joinpath(*rel.parts)
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(m)
                if src is None:  # pragma: no cover - isfile() members always have data
                    raise DataError(f"cannot read member {m.name!r} of {archive.name}")
                with src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
            if final.exists():  # an incomplete earlier copy: move it aside, it is deleted with tmp
                os.replace(final, tmp / ".previous")
            try:
                os.replace(tmp / top, final)
            except OSError:
                if not final.is_dir():  # else a concurrent extraction finished first: use its copy
                    raise
        except (tarfile.TarError, EOFError, OSError) as e:
            raise DataError(f"extracting {archive} failed: {e}; delete it and download again ({DOWNLOAD_HINT})") from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final
