"""``fedleak export RUN --out DIR``: a run directory into the open layout of :mod:`fedleak.fl.exchange`.

It needs the models of every recorded round, which a run keeps only when trained with ``signals.keep_models:
true`` (``RUN/models/round_RRRR/``, already in the layout's file format); the manifest comes from config.yaml,
candidates.npz, split.npz and the round files (who took part, the learning rate). DIR must be new or empty; every
file is written atomically and manifest.json last.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from fedleak.config import parse_config
from fedleak.fl.exchange import FORMAT, MANIFEST, VERSION
from fedleak.signals import store
from fedleak.signals.runconfig import read_run_config
from fedleak.signals.tensorfile import TensorFileError, read_header

__all__ = ["export_run"]


def _needs_models(path: Path, why: str) -> store.StoreError:
    return store.StoreError(
        f"{path} {why}; export needs the global model and every upload of each recorded round, which a run keeps "
        "only when trained with signals.keep_models=true — train it again with `--set signals.keep_models=true`")


def _kept(run_dir: Path, rnd: int, name: str) -> tuple[bytes, dict[str, str]]:
    """The bytes of one kept model file and its metadata (checked to be a whole safetensors file)."""
    path = run_dir / store.MODELS_DIR / store.round_folder(rnd) / name
    if not path.is_file():
        raise _needs_models(path, "is missing")
    try:
        _, meta, _ = read_header(path)
        return path.read_bytes(), meta
    except (TensorFileError, OSError) as e:
        raise store.StoreError(f"{path} {e}; the signals are intact, but this round's models cannot be exported "
                               "(re-train with signals.keep_models=true)") from None


def _round_entry(run_dir: Path, rnd: int, out: Path) -> dict[str, Any]:
    z = store.read_npz(store.round_path(run_dir, rnd), f"{store.retrain_hint(run_dir)} to recompute it")
    part = z.get("participated")
    ks = np.flatnonzero(part) if part is not None else np.flatnonzero(~np.isnan(z["dnorm2"]))
    folder = store.make_dirs(out / store.round_folder(rnd))
    data, _ = _kept(run_dir, rnd, "global.safetensors")
    store.atomic_write_bytes(folder / "global.safetensors", data)
    clients = []
    for k in ks:
        data, meta = _kept(run_dir, rnd, store.client_file(int(k)))
        store.atomic_write_bytes(folder / store.client_file(int(k)), data)
        clients.append({"id": int(k), "examples": int(meta.get("examples", 0)) or 1})
    lr = float(z["lr"]) if "lr" in z and np.isfinite(z["lr"]) else None
    return {"round": rnd, "lr": lr, "clients": clients}


def _prepare(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise store.StoreError(f"{out} already exists and is not empty; export into a new --out")
    store.make_dirs(out)


def export_run(run_dir: str | Path, out: str | Path) -> Path:
    """Write the layout for ``run_dir`` into ``out``; returns the manifest's path."""
    run_dir, out = Path(run_dir), Path(out)
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "candidates.npz").is_file():
        raise store.StoreError(f"{run_dir} is not a finished fedleak run directory (no config.yaml or candidates.npz)")
    config = read_run_config(run_dir)
    rounds = store.recorded_rounds(run_dir)
    if not rounds:
        raise store.StoreError(f"{run_dir} has no recorded rounds; nothing to export")
    if not (run_dir / store.MODELS_DIR).is_dir():
        raise _needs_models(run_dir / store.MODELS_DIR, "is missing")
    cand = store.read_candidates(run_dir)
    labels = store.read_npz(run_dir / "candidates.npz", "").get("label")
    split = store.read_split(run_dir) if (run_dir / "split.npz").is_file() else None
    _prepare(out)
    entries = [_round_entry(run_dir, r, out) for r in rounds]
    config.get("signals", {}).pop("keep_models", None)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "config": config,
        "num_clients": parse_config(config, str(run_dir / "config.yaml")).partition.num_clients,
        "upload": "model",
        "tensor_format": "safetensors",
        "clients": None if split is None else [c.tolist() for c in split],
        "candidates": {"ids": cand.ids.tolist(), "owner": cand.owner.tolist(), "target": cand.target,
                       "labels": None if labels is None else labels.tolist()},
        "rounds": entries,
    }
    path = out / MANIFEST
    store.atomic_write_text(path, json.dumps(manifest, indent=1))
    return path
