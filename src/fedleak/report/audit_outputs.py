"""``RUN/attack[/<subset>]/audit.json``: every empirical ε of an attacked run beside the accountant's ε.

Written by ``fedleak attack`` (and ``fedleak run``) next to ``metrics.json``::

    {"level": "sample", "confidence": 0.95, "delta": 1e-5, "delta_source": "...", "target": 0,
     "accountant": {"epsilon", "delta", "accountant", "defense", "round", "level"} | null,
     "canaries": {"m", "kind", "inserted", "target", "k_choices"} | null,
     "notes": [...],
     "entries": [{"level": "sample", "method", "attack", "epsilon", "confidence", "delta", "valid_dp_bound",
                  "note", "details"}, ...]}

The entries are those of :func:`fedleak.attacks.mia.audit.sample_audit`; ``scores.npz`` gains the canaries'
rows as additive arrays (``canary_ids``, ``canary_inserted``, ``canary_label``, ``canary_<attack>``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from fedleak.attacks.mia.audit import k_choices, resolve_delta, sample_audit
from fedleak.attacks.mia.evaluate import Evaluation
from fedleak.signals.canaries import load_canary_signals
from fedleak.signals.loading import Signals
from fedleak.signals.runconfig import read_run_config
from fedleak.signals.store import StoreError, atomic_write_text, read_metrics

AUDIT_FILE = "audit.json"
CLIENTS_FILE = Path("audit") / "clients.json"


def last_privacy(run_dir: Path) -> tuple[int, dict[str, Any]] | None:
    """The round and ``privacy`` record of the last metrics.jsonl line that has one (None: no accountant)."""
    for rec in reversed(read_metrics(run_dir)):
        if isinstance(rec.get("privacy"), dict):
            return int(rec["round"]), rec["privacy"]
    return None


def accountant_entry(run_dir: Path, cfg: dict[str, Any]) -> dict[str, Any] | None:
    last = last_privacy(run_dir)
    if last is None:
        return None
    rnd, p = last
    eps = p.get("epsilon")
    return {
        "epsilon": float(eps) if isinstance(eps, (int, float)) else None,
        "delta": p.get("delta"),
        "level": p.get("level", "sample"),
        "accountant": p.get("accountant", "rdp"),
        "defense": (cfg.get("defense") or {}).get("name", "?"),
        "round": rnd,
    }


def _json(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x


def write_audit(
    run_dir: Path, out: Path, sig: Signals, ev: Evaluation, fedmia_options: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Compute and write ``out/audit.json``; returns it and the canary arrays to add to ``scores.npz``."""
    doc, arrays = audit_document(run_dir, sig, ev, fedmia_options)
    atomic_write_text(out / AUDIT_FILE, json.dumps(_json(doc), indent=2))
    return doc, arrays


def audit_document(
    run_dir: Path, sig: Signals, ev: Evaluation, fedmia_options: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The ``audit.json`` mapping of an evaluated run (``ev``: its scores at the default target and round) and the
    canary arrays for ``scores.npz``; nothing is written."""
    cfg = read_run_config(run_dir)
    audit_cfg = cfg.get("audit") or {}
    acc = accountant_entry(run_dir, cfg)
    last = last_privacy(run_dir)
    delta, source = resolve_delta(audit_cfg.get("delta"), last[1] if last else None)
    confidence = float(audit_cfg.get("confidence", 0.95))
    target, rnd = int(ev.target), int(ev.round)
    canaries = load_canary_signals(run_dir, sig)
    notes = []
    if canaries is not None and canaries[0].target != target:
        notes.append(f"the canaries are in client {canaries[0].target}'s data, not in the attacked target {target}'s: "
                     f"no one-run audit (attack with --target {canaries[0].target})")
    entries, c_scores = sample_audit(
        sig, ev.labels, ev.scores, round=rnd, target=target, confidence=confidence, delta=delta,
        seed=int(cfg.get("seed", 0)), canaries=canaries, kind=audit_cfg.get("kind", "mislabeled"), **fedmia_options,
    )
    can = None
    if canaries is not None:
        c = canaries[0]
        can = {"m": c.m, "kind": audit_cfg.get("kind", "mislabeled"), "inserted": int(c.inserted.sum()),
               "target": c.target, "k_choices": k_choices(c.m)}
    doc = {"level": "sample", "confidence": confidence, "delta": delta, "delta_source": source, "target": target,
           "accountant": acc, "canaries": can, "notes": notes, "entries": entries}
    arrays: dict[str, np.ndarray] = {}
    if c_scores and canaries is not None:
        c = canaries[0]
        arrays = {"canary_ids": c.ids, "canary_inserted": c.inserted, "canary_label": c.label,
                  **{f"canary_{k.replace('-', '_')}": v for k, v in c_scores.items()}}
    return doc, arrays


def read_audit_entries(path: Path) -> dict[str, Any] | list[Any] | None:
    """A parsed ``audit.json`` (an object) or ``clients.json`` (a list); None when absent; StoreError when
    damaged."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        data = None
    entries = data.get("entries") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "method" in e for e in entries):
        raise StoreError(f"{path} is damaged (not a list of audit entries with a 'method'); delete it and re-run "
                         "the command that wrote it (`fedleak attack` for attack/audit.json)")
    return data


__all__ = ["AUDIT_FILE", "CLIENTS_FILE", "accountant_entry", "last_privacy", "read_audit_entries", "write_audit"]
