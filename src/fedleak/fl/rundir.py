"""The run directory's fixed files as the engine writes and checks them: config.yaml, meta.json (with the
config fingerprint), split.npz and candidates.npz -- written for a new run, checked and completed on resume."""

from __future__ import annotations

import json
import platform
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from fedleak.config import ConfigError, ExperimentConfig, dump_config, parse_config
from fedleak.signals import store
from fedleak.signals.canaries import CANARY_FILE, write_canaries
from fedleak.signals.candidates import candidate_counts
from fedleak.signals.runconfig import config_record, read_run_config

if TYPE_CHECKING:
    from fedleak.fl.federation import Federation


def _git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("fedleak", "torch", "numpy", "scipy", "scikit-learn", "pydantic"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def check_same_config(run_dir: Path, cfg: ExperimentConfig) -> None:
    old = parse_config(read_run_config(run_dir), str(run_dir / "config.yaml"))  # damaged/edited: StoreError
    a, b = old.model_dump(mode="json"), cfg.model_dump(mode="json")
    for d in (a, b):  # where outputs go, thread counts, the engine and the device (to rounding) do not change results
        d.pop("output", None)
        d.pop("device", None)
        d["fl"].pop("threads", None)
        d["fl"].pop("vectorize", None)
    if a != b:
        diff = [f"{s}.{k}" for s in a if isinstance(a[s], dict) for k in a[s] if a[s].get(k) != b.get(s, {}).get(k)]
        diff += [s for s in a if not isinstance(a[s], dict) and a[s] != b.get(s)]
        raise ConfigError(
            f"{run_dir} already holds a run with a different config (differs at: {', '.join(diff)}); "
            "use another --out, or delete that directory to start over"
        )


def _not_this_run(path: Path, why: str) -> store.StoreError:
    return store.StoreError(
        f"{path} {why}: it does not belong to this run; the recorded rounds are intact — delete it and "
        f"{store.retrain_hint(path.parent)} to recompute it from the seed"
    )


def saved_split(run_dir: Path, num_clients: int, n_train: int) -> list[np.ndarray]:
    clients = store.read_split(run_dir)
    if len(clients) != num_clients:
        raise _not_this_run(run_dir / "split.npz", f"splits the data among {len(clients)} clients, not {num_clients}")
    if any(len(c) and int(c.max()) >= n_train for c in clients):
        raise _not_this_run(run_dir / "split.npz", f"names training rows beyond the dataset's {n_train}")
    return clients


def saved_candidates(run_dir: Path, num_clients: int, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    c = store.read_candidates(run_dir)
    if len(c.ids) and (int(c.ids.min()) < 0 or int(c.ids.max()) >= n_rows):
        raise _not_this_run(run_dir / "candidates.npz", f"names rows outside the dataset's {n_rows}")
    if len(c.owner) and (int(c.owner.min()) < -1 or int(c.owner.max()) >= num_clients):
        raise _not_this_run(run_dir / "candidates.npz", f"has owners outside -1..{num_clients - 1}")
    return c.ids, c.owner


def _write_split_and_candidates(run_dir: Path, cfg: ExperimentConfig, fed: Federation, *, only_missing: bool) -> None:
    if not (only_missing and (run_dir / "split.npz").is_file()):
        store.write_split(run_dir, fed.clients)
    if not (only_missing and (run_dir / "candidates.npz").is_file()):
        labels = torch.cat([fed.data.train.y, fed.data.test.y]).numpy()[fed.cand_ids]
        store.write_candidates(run_dir, fed.cand_ids, fed.cand_owner, cfg.candidates.target_client, labels)
    if fed.canaries is not None and not (only_missing and (run_dir / CANARY_FILE).is_file()):
        write_canaries(run_dir, fed.canaries)


def _write_meta(run_dir: Path, cfg: ExperimentConfig, fed: Federation, recorded: list[int], config_yaml: str) -> None:
    n_params = sum(p.numel() for p in fed.model.parameters() if p.requires_grad)
    meta = {
        "seed": cfg.seed,
        "versions": _versions(),
        "git_revision": _git_revision(),
        "dataset": {
            "name": fed.data.name,
            "n_train": len(fed.data.train),
            "n_test": len(fed.data.test),
            "num_classes": fed.data.num_classes,
            "input_shape": list(fed.data.input_shape),
            "mean": list(fed.data.mean),
            "std": list(fed.data.std),
        },
        "model": {"name": cfg.model.name, "trainable_parameters": n_params},
        "client_sizes": [len(c) for c in fed.clients],
        "n_candidates": int(len(fed.cand_ids)),
        "n_members": int((fed.cand_owner == cfg.candidates.target_client).sum()),
        "candidates_used": candidate_counts(cfg.candidates, fed.cand_owner),
        "recorded_rounds": recorded,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **config_record(config_yaml),  # config_sha256 + a copy: readers refuse a config.yaml edited later
    }
    store.atomic_write_text(run_dir / "meta.json", json.dumps(meta, indent=2))


def init_run_dir(run_dir: Path, cfg: ExperimentConfig, fed: Federation, recorded: list[int]) -> None:
    """Write a new run's fixed files; config.yaml last, so a directory with config.yaml is a complete run."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise store.write_failed(run_dir, e) from None
    config_yaml = dump_config(cfg)
    _write_split_and_candidates(run_dir, cfg, fed, only_missing=False)
    _write_meta(run_dir, cfg, fed, recorded, config_yaml)
    store.atomic_write_text(run_dir / "config.yaml", config_yaml)


def complete_run_dir(run_dir: Path, cfg: ExperimentConfig, fed: Federation, recorded: list[int]) -> None:
    """On resume: recompute split.npz, candidates.npz or meta.json when they were deleted (they follow from the
    seed; meta.json then pins the config.yaml on disk, which ``check_same_config`` just compared)."""
    _write_split_and_candidates(run_dir, cfg, fed, only_missing=True)
    if not (run_dir / "meta.json").is_file():
        _write_meta(run_dir, cfg, fed, recorded, (run_dir / "config.yaml").read_text())


def refuse_orphaned_results(run_dir: Path) -> None:
    """A directory with training results but no config.yaml must not be continued under some other config."""
    found = [n for n in ("checkpoint.pt", "metrics.jsonl") if (run_dir / n).is_file()] + (
        ["signals/"] if store.recorded_rounds(run_dir) else []
    )
    if found:
        raise store.StoreError(
            f"{run_dir / 'config.yaml'} is missing but {run_dir} holds training results ({', '.join(found)}); "
            "restore config.yaml (meta.json keeps the trained config under 'config') or use another --out"
        )
