"""``RUN/checkpoint.pt`` and ``RUN/final_model.pt``: tensors only, written atomically, read without unpickling.

A checkpoint holds ``{"round": int, "global": {name: tensor}, "opt_states": {client: optimizer state}}``; the
global state has every parameter and every buffer (BatchNorm running statistics). Under ``fl.bn: local`` it also
holds ``"local_bn": {client: {name: tensor}}``, each client's private BatchNorm state (FedBN).
It is read with ``torch.load(weights_only=True)``, which refuses anything but tensors and plain containers;
a damaged or malicious file becomes fedleak's own one-line StoreError (never torch's advice to load it with
``weights_only=False``, which would run whatever code the file carries).
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from fedleak.fl.local import ParamDict
from fedleak.signals.store import StoreError, atomic_write_bytes

CHECKPOINT, FINAL_MODEL = "checkpoint.pt", "final_model.pt"

__all__ = ["save_checkpoint", "load_checkpoint", "save_final_model", "CHECKPOINT", "FINAL_MODEL"]


def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def save_checkpoint(
    run_dir: Path, rnd: int, global_params: ParamDict, opt_states: dict[int, Any],
    local_bn: dict[int, ParamDict] | None = None,
) -> None:
    """Write the state after round ``rnd`` (atomic; a full disk raises StoreError and keeps the previous one)."""
    ck: dict[str, Any] = {"round": rnd, "global": global_params, "opt_states": opt_states}
    if local_bn:
        ck["local_bn"] = local_bn
    data = _torch_bytes(ck)
    atomic_write_bytes(Path(run_dir) / CHECKPOINT, data)


def save_final_model(run_dir: Path, params: ParamDict) -> None:
    atomic_write_bytes(Path(run_dir) / FINAL_MODEL, _torch_bytes(params))


def _damaged(path: Path, why: str) -> StoreError:
    return StoreError(
        f"{path} is {why}; the recorded rounds and metrics are intact — delete it to restart training from "
        "round 0 with the same --out (the recorded rounds are recomputed identically)"
    )


def _check_params(path: Path, params: Any, model: torch.nn.Module) -> None:
    want = {n: tuple(p.shape) for n, p in [*model.named_parameters(), *model.named_buffers()]}
    if not isinstance(params, dict) or not all(isinstance(v, torch.Tensor) for v in params.values()):
        raise _damaged(path, "not a fedleak checkpoint (no tensor dict under 'global')")
    got = {n: tuple(v.shape) for n, v in params.items()}
    if got.keys() != want.keys() or any(got[n] != want[n] for n in want):
        bad = sorted(n for n in want.keys() | got.keys() if got.get(n) != want.get(n))[:3]
        raise _damaged(path, f"a checkpoint of another model (parameters {bad} differ from the configured model)")


def _check_local_bn(path: Path, local_bn: Any, model: torch.nn.Module) -> dict[int, ParamDict]:
    """The clients' private BatchNorm states: ``{client: {name: tensor}}``, names and shapes of ``model``'s."""
    shapes = {n: tuple(v.shape) for n, v in [*model.named_parameters(), *model.named_buffers()]}
    ok = isinstance(local_bn, dict) and all(
        isinstance(k, int) and isinstance(st, dict)
        and all(isinstance(v, torch.Tensor) and shapes.get(n) == tuple(v.shape) for n, v in st.items())
        for k, st in local_bn.items()
    )
    if not ok:
        raise _damaged(path, "not a fedleak checkpoint of this model (its 'local_bn' client states do not fit)")
    return local_bn


def _read(path: Path) -> Any:
    """torch.load(weights_only=True), with every failure as fedleak's own message."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise _damaged(path, f"unreadable ({e.strerror or e})") from None
    if head != b"PK\x03\x04":  # torch checkpoints are zip archives
        raise _damaged(path, "empty" if not head else "not a torch checkpoint (garbage or a foreign format)")
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError:  # torch's message suggests weights_only=False: never pass that on
        raise _damaged(path, "not a fedleak checkpoint (it holds objects other than tensors; it was not loaded)") \
            from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, TypeError, AttributeError):
        raise _damaged(path, "truncated or corrupt (not a valid checkpoint)") from None


def load_checkpoint(
    run_dir: Path, model: torch.nn.Module, rounds: int
) -> tuple[int, ParamDict, dict[int, Any], dict[int, ParamDict]] | None:
    """(last finished round, global state, optimizer states, the clients' private BatchNorm states), or None when
    there is no checkpoint.

    Checks that the file is a fedleak checkpoint of ``model`` for a round below ``rounds``."""
    path = Path(run_dir) / CHECKPOINT
    if not path.exists() and not path.is_symlink():  # only a missing file means "no checkpoint"
        return None
    if not path.is_file():
        raise _damaged(path, "not a regular file (a directory or a special file)")
    ck = _read(path)
    if not isinstance(ck, dict) or not isinstance(ck.get("round"), int) or not isinstance(ck.get("opt_states", {}), dict):
        raise _damaged(path, "not a fedleak checkpoint (no round number)")
    if not 0 <= ck["round"] < rounds:
        raise _damaged(path, f"a checkpoint of round {ck['round']}, outside this run's {rounds} rounds")
    _check_params(path, ck.get("global"), model)
    local_bn = _check_local_bn(path, ck.get("local_bn", {}), model)
    return ck["round"], ck["global"], ck.get("opt_states", {}), local_bn
