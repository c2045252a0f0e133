"""The open layout of a recorded federation (``fedleak export`` writes it, ``fedleak import`` reads it; docs/import.md)::

    SRC/manifest.json                    format, version, config (an ExperimentConfig-like mapping: model and data
                                         required), num_clients, upload ("model" | "delta"), tensor_format
                                         ("safetensors" | "npz"), clients (optional: each client's training rows),
                                         candidates {ids, owner, target, labels?}, rounds [{round, lr?, clients:
                                         [{id, examples}]}]
    SRC/round_RRRR/global.<ext>          the global model the server sent in round RRRR (0-based)
    SRC/round_RRRR/client_KKKK.<ext>     what client KKKK returned: its model, or with upload "delta" the
                                         change θ_client − θ_global

Every tensor file holds one tensor per ``named_parameters()`` and ``named_buffers()`` name (BatchNorm running
statistics) of the model the config builds, with that
parameter's shape and dtype. This module checks the manifest (:func:`read_manifest`) and each file
(:func:`check_file`, :func:`load_params`); every problem is one :class:`~fedleak.errors.StoreError` /
:class:`~fedleak.errors.ConfigError` line naming the file (and the key) and saying what to do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedleak.errors import ConfigError, StoreError
from fedleak.signals import store
from fedleak.signals.tensorfile import TensorFileError, read_header, read_tensors

FORMAT, VERSION = "fedleak-federation", 1
MANIFEST = "manifest.json"
NOTHING = "nothing was imported"

__all__ = ["FORMAT", "VERSION", "MANIFEST", "Manifest", "read_manifest", "tensor_path", "check_file", "load_params"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClientUpload(_Strict):
    id: int = Field(ge=0)
    examples: int = Field(ge=1, description="Training examples behind the upload (its FedAvg weight).")


class RoundEntry(_Strict):
    round: int = Field(ge=0)
    lr: float | None = Field(None, description="The clients' learning rate in this round (informational).")
    clients: list[ClientUpload] = Field(min_length=1)


class CandidateList(_Strict):
    ids: list[int] = Field(description="Row i of the training split is i, row j of the test split n_train + j.")
    owner: list[int] = Field(description="Client holding each candidate in its training data; -1: nobody.")
    target: int = Field(ge=0)
    labels: list[int] | None = Field(None, description="Class of each candidate, checked against the dataset.")


class Manifest(_Strict):
    format: Literal["fedleak-federation"]
    version: Literal[1]
    config: dict[str, Any]
    num_clients: int = Field(ge=1)
    upload: Literal["model", "delta"] = "model"
    tensor_format: Literal["safetensors", "npz"] = "safetensors"
    clients: list[list[int]] | None = None
    candidates: CandidateList
    rounds: list[RoundEntry] = Field(min_length=1)


def _where(err: ValidationError) -> str:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
    return f"'{loc}': {e['msg']}"


def _check_rounds(path: Path, m: Manifest) -> None:
    nums = [r.round for r in m.rounds]
    if nums != sorted(set(nums)):
        raise ConfigError(f"{path}: 'rounds' must list each round once, in increasing order (got {nums})")
    for r in m.rounds:
        ids = [c.id for c in r.clients]
        bad = [k for k in ids if k >= m.num_clients]
        if bad or len(set(ids)) != len(ids):
            why = f"client ids {bad} outside 0..{m.num_clients - 1}" if bad else "a client listed twice"
            raise ConfigError(f"{path}: round {r.round} has {why}; fix the manifest — {NOTHING}")


def read_manifest(src: Path) -> Manifest:
    """SRC/manifest.json, parsed and checked for structure (the data-dependent checks come in the importer)."""
    path = Path(src) / MANIFEST
    if not Path(src).is_dir():
        raise StoreError(f"{src} is not a folder; give the folder holding {MANIFEST} and the round_RRRR folders")
    if path.exists() and not path.is_file():  # never open a FIFO (it blocks) or a device
        raise StoreError(f"{path} is not a regular file (a directory or a special file); give the manifest there")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StoreError(f"{path} is missing; an import folder needs it (see docs/import.md)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise StoreError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); fix it — "
                          f"{NOTHING}") from None
    if isinstance(raw, dict) and raw.get("format") == FORMAT and raw.get("version") not in (None, VERSION):
        raise ConfigError(f"{path} has format version {raw.get('version')!r}; this fedleak reads version {VERSION}")
    try:
        m = Manifest.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"{path}: bad or missing key {_where(err)}; see docs/import.md — {NOTHING}") from None
    for key in ("model", "data"):
        if not isinstance(m.config.get(key), dict):
            raise ConfigError(f"{path}: 'config.{key}' is missing (a mapping as in an experiment config) — {NOTHING}")
    _check_rounds(path, m)
    c = m.candidates
    if len(c.owner) != len(c.ids) or (c.labels is not None and len(c.labels) != len(c.ids)):
        raise ConfigError(f"{path}: 'candidates' ids, owner and labels differ in length — {NOTHING}")
    if m.clients is not None and len(m.clients) != m.num_clients:
        raise ConfigError(f"{path}: 'clients' lists {len(m.clients)} clients, num_clients is {m.num_clients}")
    return m


def tensor_path(src: Path, m: Manifest, rnd: int, client: int | None) -> Path:
    """SRC/round_RRRR/global.<ext> (client None) or SRC/round_RRRR/client_KKKK.<ext>."""
    ext = "safetensors" if m.tensor_format == "safetensors" else "npz"
    name = f"global.{ext}" if client is None else store.client_file(client, ext)
    return Path(src) / store.round_folder(rnd) / name


Spec = dict[str, tuple[tuple[int, ...], torch.dtype]]


def _compare(path: Path, have: Spec, want: Spec) -> None:
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing or extra:
        what = f"lacks {missing[:3]}" if missing else f"has tensors the model does not: {extra[:3]}"
        raise StoreError(f"{path} {what}; its tensors must be the model's parameters and buffers (get_params) — {NOTHING}")
    for n, (shape, dt) in want.items():
        if have[n] != (shape, dt):
            raise StoreError(f"{path} has '{n}' of shape {list(have[n][0])} {have[n][1]}, the model's is "
                             f"{list(shape)} {dt} (another model or config?) — {NOTHING}")


def _npz_tensors(path: Path) -> dict[str, torch.Tensor]:
    arrays = store.read_npz(path, f"re-export it — {NOTHING}")
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}


def check_file(path: Path, m: Manifest, want: Spec, client: int | None, rnd: int, examples: int | None) -> None:
    """Check one tensor file against the model (names, shapes, dtypes) and its metadata against the manifest,
    without keeping its data (a safetensors file: only its header and length are read)."""
    if m.tensor_format == "npz":
        _compare(path, {n: (tuple(t.shape), t.dtype) for n, t in _npz_tensors(path).items()}, want)
        return
    if not path.is_file():
        what = "is not a regular file" if path.exists() else "is missing"
        listed = f"client {client}" if client is not None else "its global model"
        raise StoreError(f"{path} {what} (round {rnd} lists {listed}); add it or drop it from the manifest — {NOTHING}")
    try:
        entries, meta, _ = read_header(path)
    except TensorFileError as e:
        raise StoreError(f"{path} {e}; re-export it — {NOTHING}") from None
    _compare(path, {n: (tuple(s), dt) for n, (dt, s, _, _) in entries.items()}, want)
    for key, value in (("round", rnd), ("client", client), ("examples", examples)):
        if value is not None and key in meta and meta[key] != str(value):
            raise StoreError(f"{path} says {key} {meta[key]} in its metadata, the manifest {value}; "
                             f"fix whichever is wrong — {NOTHING}")


def load_params(path: Path, m: Manifest) -> dict[str, torch.Tensor]:
    """The tensors of one file (already checked by :func:`check_file`)."""
    if m.tensor_format == "npz":
        return _npz_tensors(path)
    try:
        return read_tensors(path)[0]
    except TensorFileError as e:
        raise StoreError(f"{path} {e}; re-export it — {NOTHING}") from None
