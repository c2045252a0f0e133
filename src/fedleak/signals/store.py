"""The run directory: the one on-disk contract between training and everything downstream.

Layout (all open formats: numpy ``.npz``/``.npy``, JSON, YAML; readable without fedleak)::

    RUN/config.yaml             resolved experiment config (written last: a directory with it is initialised)
    RUN/meta.json               seed, package versions, git revision, dataset/model facts, recorded rounds,
                                config_sha256 + config (the trained config; see signals/runconfig.py)
    RUN/split.npz               client_ptr [K+1], client_idx [sum n_k]: client k owns train rows
                                client_idx[client_ptr[k]:client_ptr[k+1]]
    RUN/candidates.npz          ids [N] (train row i -> i, test row j -> n_train + j), owner [N] (client, -1 =
                                held-out test), target (int), label [N] (class)
    RUN/signals/round_RRRR.npz  one file per recorded (0-based) round, written atomically:
                                loss [K,N] CE of candidate n under client k's uploaded model
                                margin [K,N] logit margin φ = logit_y − logsumexp(other logits) under the
                                same model, from the same forward (recorded since issue #13; older runs
                                lack it and load without it)
                                dot [K,N] <g(x), Δ_k>;  cos [K,N];  diff [K,N] = 2<g,Δ_k> - ||g||²
                                gnorm2 [K,N] ||g(x)||² (g at the round's global model; identical rows
                                in the aligned protocol);  ids [K,N] candidate ids actually scored
                                (rows differ only under protocol official-compat)
                                dnorm2 [K] ||Δ_k||²;  participated [K] bool;  client_test_acc [K];
                                lr (scalar);  round (scalar)
    RUN/canaries.npz            only with audit.canaries: the sample canaries, and canary_* [K, m] arrays in
                                every round file (the format is in fedleak/signals/canaries.py)
    RUN/metrics.jsonl           one JSON line per finished round (utility, lr, time)
    RUN/models/round_RRRR/      only with ``signals.keep_models: true``: the round's global model
                                (global.safetensors) and every participant's upload (client_KKKK.safetensors),
                                the layout of ``fedleak export`` (docs/import.md; signals/tensorfile.py)
    RUN/checkpoint.pt           resumable state (tensors only; loaded with weights_only=True)
    RUN/audit/client_canaries.json  audit.canary_clients only: each canary client's index, inserted flag, rounds
                                taken part in and cosine with θ_final − θ_initial (fedleak.fl.canary_clients)
    RUN/audit/clients.json      the client-level one-shot ε from it (fedleak.attacks.client_audit)
    RUN/.lock                   held while a process writes the run (fedleak.runlock)

Every reader checks what it reads and raises StoreError naming the damaged file, saying what is still
intact and how to get the file back; every writer turns an OSError (full disk, read-only directory) into a
one-line StoreError naming the path and leaves no ``.tmp`` file behind. Nothing here unpickles.

Δ_k = θ_global - θ_k (old minus new), flattened over trainable parameters in named_parameters() order.
Clients that did not take part in a round have NaN rows.
"""

from __future__ import annotations

import errno
import json
import os
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from fedleak.errors import StoreError  # noqa: F401  (re-exported: its historical home)

SIGNAL_KEYS_KN = ("loss", "dot", "cos", "diff", "gnorm2")
REQUIRED_ROUND_KEYS = (*SIGNAL_KEYS_KN, "ids", "dnorm2")
OPTIONAL_KEYS_KN = ("margin",)  # [K, N] arrays added later: read when every loaded round has them


def retrain_hint(run_dir: Path) -> str:
    """The command that completes a run directory from its own config (recomputes missing files)."""
    return f"re-run `fedleak train {Path(run_dir) / 'config.yaml'} --out {run_dir}`"


# --------------------------------------------------------------------------- writing


def write_failed(path: Path, e: OSError) -> StoreError:
    """One-line StoreError for an OSError while writing ``path``."""
    why = e.strerror or str(e)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        why += " (the disk is full)"
    elif e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        why += " (the run directory is not writable)"
    return StoreError(f"cannot write {path}: {why}")


def make_dirs(path: Path) -> Path:
    """``mkdir -p path``; a file in the way or an unwritable parent is a one-line StoreError naming the path."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise StoreError(f"cannot create folder {path}: a file is in the way (at that path or above it); "
                         "give another path") from None
    except OSError as e:
        raise write_failed(Path(path), e) from None
    return Path(path)


def _discard(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def _atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through ``path.tmp`` + rename: readers see the old file or the whole new one, never a part;
    a failed write (full disk, read-only directory) leaves no ``.tmp`` behind and raises StoreError."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        try:
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            _discard(tmp)
            raise
    except OSError as e:
        raise write_failed(path, e) from None


def _atomic_savez(path: Path, **arrays: Any) -> None:
    _atomic(path, lambda f: np.savez(f, **arrays))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic(Path(path), lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_candidates(run_dir: Path, ids: np.ndarray, owner: np.ndarray, target: int, label: np.ndarray) -> None:
    _atomic_savez(
        Path(run_dir) / "candidates.npz",
        ids=np.asarray(ids, np.int64),
        owner=np.asarray(owner, np.int64),
        target=np.int64(target),
        label=np.asarray(label, np.int64),
    )


def write_split(run_dir: Path, client_indices: list[np.ndarray]) -> None:
    ptr = np.cumsum([0] + [len(c) for c in client_indices]).astype(np.int64)
    idx = np.concatenate([np.asarray(c, np.int64) for c in client_indices]) if client_indices else np.zeros(0, np.int64)
    _atomic_savez(Path(run_dir) / "split.npz", client_ptr=ptr, client_idx=idx)


def round_path(run_dir: Path, rnd: int) -> Path:
    return Path(run_dir) / "signals" / f"round_{rnd:04d}.npz"


MODELS_DIR = "models"  # RUN/models/round_RRRR/{global,client_KKKK}.safetensors (signals.keep_models)


def round_folder(rnd: int) -> str:
    """The per-round folder name of kept models and of the import/export layout."""
    return f"round_{rnd:04d}"


def client_file(k: int, ext: str = "safetensors") -> str:
    return f"client_{k:04d}.{ext}"


def write_round(run_dir: Path, rnd: int, arrays: dict[str, Any]) -> Path:
    """Write one recorded round atomically (a killed process never leaves a half-written file)."""
    missing = [k for k in REQUIRED_ROUND_KEYS if k not in arrays]
    if missing:
        raise StoreError(f"round {rnd}: missing signal arrays {missing}")
    p = round_path(run_dir, rnd)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_failed(p.parent, e) from None
    out = {k: np.asarray(v) for k, v in arrays.items()}
    out["round"] = np.int64(rnd)
    _atomic_savez(p, **out)
    return p


def append_metrics(run_dir: str | Path, record: dict[str, Any]) -> None:
    """Append one line to metrics.jsonl; on failure the file is cut back to its previous end."""
    p = Path(run_dir) / "metrics.jsonl"
    line = (json.dumps(record) + "\n").encode()
    end = None
    try:
        with open(p, "ab") as f:
            end = f.seek(0, os.SEEK_END)
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        if end is not None:
            try:
                os.truncate(p, end)
            except OSError:
                pass
        raise write_failed(p, e) from None


# --------------------------------------------------------------------------- reading


class _Damaged(Exception):
    """Why a file cannot be used (the reason only; the caller names the file and says what is still usable)."""


def _unreadable(head: bytes) -> str:
    """Why np.load refused a file, from its first bytes."""
    if head == b"PK\x03\x04":
        return "is truncated or corrupt (not a valid .npz)"
    if head.startswith(b"\x93NUM"):
        return "is a .npy array, not a .npz archive"
    if head.startswith(b"\x80"):
        return "is a Python pickle, not a .npz archive (not loaded: fedleak never unpickles run files)"
    return "is not a .npz archive (garbage or a foreign format)"


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz (never unpickles), or _Damaged saying why not."""
    if path.exists() and not path.is_file():  # never open a FIFO (it blocks) or a device
        raise _Damaged("is not a regular file (a directory or a special file)")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except FileNotFoundError:
        raise _Damaged("is missing") from None
    except OSError as e:
        raise _Damaged(f"cannot be read ({e.strerror or e})") from None
    if not head:
        raise _Damaged("is empty (not a valid .npz)")
    try:
        obj = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        raise _Damaged(_unreadable(head)) from None
    if not isinstance(obj, np.lib.npyio.NpzFile):
        raise _Damaged("is a .npy array, not a .npz archive")
    try:
        with obj as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as e:
        if "allow_pickle" in str(e):  # an object array
            raise _Damaged("holds pickled Python objects (not loaded: fedleak never unpickles run files)") from None
        raise _Damaged(f"is truncated or corrupt (not a valid .npz: {type(e).__name__})") from None


def read_npz(path: Path, fix: str) -> dict[str, np.ndarray]:
    """Every array of an .npz (never unpickles); a damaged file raises StoreError naming it, then ``fix``."""
    try:
        return _read_npz(Path(path))
    except _Damaged as e:
        raise StoreError(f"{path} {e}; {fix}") from None


def _is_int(a: np.ndarray) -> bool:
    return a.dtype.kind in "iu"


def read_split(run_dir: Path) -> list[np.ndarray]:
    p = Path(run_dir) / "split.npz"
    fix = f"the recorded rounds are intact — delete it and {retrain_hint(run_dir)} to recompute it from the seed"
    try:
        z = _read_npz(p)
        ptr, idx = z.get("client_ptr"), z.get("client_idx")
        if ptr is None or idx is None:
            raise _Damaged("lacks client_ptr/client_idx (not written by fedleak?)")
        ok = ptr.ndim == 1 and idx.ndim == 1 and _is_int(ptr) and _is_int(idx) and len(ptr) >= 1
        ok = ok and ptr[0] == 0 and ptr[-1] == len(idx) and bool(np.all(np.diff(ptr) >= 0)) and bool(np.all(idx >= 0))
        if not ok:
            raise _Damaged("holds an inconsistent client split")
    except _Damaged as e:
        raise StoreError(f"{p} {e}; {fix}") from None
    return [idx[ptr[k] : ptr[k + 1]] for k in range(len(ptr) - 1)]


@dataclass
class Candidates:
    ids: np.ndarray  # [N]
    owner: np.ndarray  # [N]
    target: int


def read_candidates(run_dir: Path) -> Candidates:
    p = Path(run_dir) / "candidates.npz"
    fix = f"the recorded rounds are intact — delete it and {retrain_hint(run_dir)} to recompute it from the seed"
    try:
        z = _read_npz(p)
        missing = [k for k in ("ids", "owner", "target") if k not in z]
        if missing:
            raise _Damaged(f"lacks arrays {missing} (not written by fedleak?)")
        ids, owner, target = z["ids"], z["owner"], z["target"]
        if not (ids.ndim == owner.ndim == 1 and len(ids) == len(owner) and _is_int(ids) and _is_int(owner)):
            raise _Damaged(f"has ids {ids.shape} and owner {owner.shape}: expected two integer [N] arrays")
        if target.shape != () or not _is_int(target):
            raise _Damaged("has a non-integer target")
    except _Damaged as e:
        raise StoreError(f"{p} {e}; {fix}") from None
    return Candidates(ids, owner, int(target))


def recorded_rounds(run_dir: Path) -> list[int]:
    d = Path(run_dir) / "signals"
    if not d.is_dir():
        return []
    out = []
    for p in d.glob("round_*.npz"):
        num = p.stem.split("_", 1)[1]
        if num.isdigit():  # ignore stray files such as round_old.npz
            out.append(int(num))
    return sorted(out)


_METRIC_NUMBERS = ("lr", "test_acc", "test_loss", "train_acc", "train_loss", "time")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_round_record(rec: Any) -> bool:
    """A metrics.jsonl record: a round number >= 0 and numbers (or null) where its readers expect numbers."""
    if not isinstance(rec, dict) or not isinstance(rec.get("round"), int) or rec["round"] < 0:
        return False
    cta = rec.get("client_test_acc")
    return all(rec.get(k) is None or _is_number(rec[k]) for k in _METRIC_NUMBERS) and (
        cta is None or isinstance(cta, list) and all(v is None or _is_number(v) for v in cta))


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-round records of metrics.jsonl. A last line cut by a crash mid-write (no newline) is skipped;
    any other unreadable line raises StoreError naming it."""
    p = Path(run_dir) / "metrics.jsonl"
    if not p.exists():
        return []
    if not p.is_file():
        raise StoreError(f"{p} is not a regular file (a directory or a special file); remove it and "
                         f"{retrain_hint(Path(run_dir))} to rewrite it")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise StoreError(f"cannot read {p}: {getattr(e, 'strerror', None) or e}") from None
    lines = text.split("\n")
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # no newline after it: the round being written when the process died
                continue
            rec = None
        if not _is_round_record(rec):
            raise StoreError(
                f"{p} line {i + 1} is damaged (not a JSON record of a round); the signals and the other lines are "
                "intact — delete that line (only that round's utility numbers are lost)"
            )
        out.append(rec)
    return out


def read_meta(run_dir: str | Path) -> dict[str, Any]:
    p = Path(run_dir) / "meta.json"
    if not p.exists():
        return {}
    meta: Any = None
    try:
        meta = json.loads(p.read_text()) if p.is_file() else None  # never open a FIFO: it blocks
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        pass
    why = "not a JSON object" if not isinstance(meta, dict) else _meta_problem(meta)
    if why:
        raise StoreError(
            f"{p} is damaged ({why}); the signals, split and config.yaml are intact — delete it and "
            f"{retrain_hint(Path(run_dir))} to rewrite it"
        )
    return meta


def _meta_problem(meta: dict[str, Any]) -> str | None:
    """What in a parsed meta.json has the wrong type for its readers (None: nothing)."""
    sizes = meta.get("client_sizes")
    if sizes is not None and not (isinstance(sizes, list) and all(isinstance(n, int) for n in sizes)):
        return "'client_sizes' is not a list of sample counts"
    for key in ("config", "dataset", "model", "toy"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            return f"'{key}' is not a mapping"
    if meta.get("config_sha256") is not None and not isinstance(meta["config_sha256"], str):
        return "'config_sha256' is not a hash"
    return None
