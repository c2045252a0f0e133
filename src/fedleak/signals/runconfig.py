"""The config a run was trained with, and the check that ``RUN/config.yaml`` still says the same.

At training time ``meta.json`` gets ``config_sha256`` (SHA-256 of the canonical JSON of the resolved config:
the YAML parsed, keys sorted, no whitespace -- so comments, layout and key order do not count) and
``config`` (a copy of the resolved config). Every reader of a run's config goes through
:func:`read_run_config`, which refuses a ``config.yaml`` edited after training and says which keys differ.
Runs written before the hash existed load with a one-line warning.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from fedleak.signals.store import StoreError, read_meta, retrain_hint

HASH_KEY, COPY_KEY = "config_sha256", "config"
_WARNED: set[str] = set()

__all__ = ["config_fingerprint", "config_record", "read_run_config", "verify_run_config", "HASH_KEY", "COPY_KEY"]


def config_fingerprint(raw: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON form of a parsed config."""
    canon = json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canon.encode()).hexdigest()


def config_record(config_yaml: str) -> dict[str, Any]:
    """The meta.json entries that pin a run's config: its fingerprint and a copy."""
    raw = yaml.safe_load(config_yaml) or {}
    return {HASH_KEY: config_fingerprint(raw), COPY_KEY: raw}


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def differing_keys(trained: dict[str, Any], now: dict[str, Any], limit: int = 4) -> str:
    """'fl.lr: 0.1 -> 0.5, ...' for the dotted keys whose values differ."""
    a, b = _flat(trained), _flat(now)
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k, "<absent>") != b.get(k, "<absent>"))
    parts = [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in keys[:limit]]
    return ", ".join(parts) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _parse(path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    restore = (
        "meta.json keeps the trained config under 'config': restore config.yaml from it"
        if isinstance(meta.get(COPY_KEY), dict) else "restore it from your copy of the experiment config"
    )
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise StoreError(f"{path} is damaged (not valid YAML: {why}); the signals are intact — {restore}") from None
    if not isinstance(raw, dict):
        raise StoreError(f"{path} is damaged (not a YAML mapping); the signals are intact — {restore}")
    return raw


def _warn_once(run_dir: Path, message: str) -> None:
    key = str(run_dir.resolve())
    if key not in _WARNED:
        _WARNED.add(key)
        print(f"warning: {message}", file=sys.stderr)


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """``RUN/config.yaml`` as a dict ({} when there is none), checked against the fingerprint in meta.json.

    Raises StoreError when the file is damaged or was edited after training (naming the keys that differ)."""
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not path.exists():
        return {}
    if not path.is_file():
        raise StoreError(f"{path} is not a regular file (a directory or a special file); the signals are intact — "
                         "put the run's config.yaml back in its place")
    meta = read_meta(run_dir)
    raw = _parse(path, meta)
    want = meta.get(HASH_KEY)
    if want is None and not meta and (run_dir / "meta.json").exists():
        raise StoreError(f"{path} cannot be checked against the trained run: {run_dir / 'meta.json'} is an empty "
                         f"object (blanked?); {retrain_hint(run_dir)} to rewrite it")
    if want is None:
        if meta and not meta.get("synthetic"):
            _warn_once(run_dir, f"{path} cannot be checked (the run predates config fingerprints); using it as it is")
        return raw
    if config_fingerprint(raw) != want:
        trained = meta.get(COPY_KEY)
        what = f" (differs at {differing_keys(trained, raw)})" if isinstance(trained, dict) else ""
        raise StoreError(
            f"{path} was edited after training{what}; results would not match the trained run — restore it "
            "(meta.json keeps the trained config under 'config'), or train a new run with the edited config"
        )
    return raw


def verify_run_config(run_dir: str | Path) -> None:
    """Raise StoreError when ``RUN/config.yaml`` is damaged or edited after training (see read_run_config)."""
    read_run_config(run_dir)
