"""The client-level canary audit of a finished run: ``RUN/audit/clients.json`` from the engine's canary cosines.

The engine inserts the canary clients and records each one's cosine with the final model change
(:mod:`fedleak.fl.canary_clients`, ``audit/client_canaries.json``); this module turns them into the one-shot ε of
Andrew et al. 2024 (:mod:`fedleak.metrics.client_canaries`) and writes it, beside the accountant's ε of the same
run, as a JSON list of one entry::

    {"level": "client", "method": "one-shot canary clients (Andrew et al. 2024)", "attack": null,
     "epsilon": <lower limit at `confidence`>, "confidence": <audit.confidence>, "delta": <δ>,
     "valid_dp_bound": false, "note": "...", "details": {...}}

``epsilon`` is the lower one-sided limit of the one-shot estimate at ``audit.confidence`` (sampling error of the
Gaussian fit only), ``details.epsilon_estimate`` the paper's point estimate. It is not a valid DP lower bound
(``valid_dp_bound: false``): the estimate assumes the cosines are Gaussian with equal variances, which holds for
the Gaussian mechanism in high dimension but is not proven for the run. ``details`` holds the fit, the cosines,
and the accountant's ε and its label from the last ``privacy`` record of ``metrics.jsonl``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from fedleak.config import ExperimentConfig
from fedleak.errors import StoreError
from fedleak.fl.canary_clients import EVIDENCE
from fedleak.signals import store

CLIENTS_JSON = Path("audit") / "clients.json"
METHOD = "one-shot canary clients (Andrew et al. 2024)"


def audit_delta(cfg: ExperimentConfig) -> float:
    """δ of the audit: ``audit.delta``, else the defense's ``delta`` parameter, else 1e-5."""
    if cfg.audit.delta is not None:
        return float(cfg.audit.delta)
    return float(cfg.defense.params.get("delta", 1e-5))


def _read_evidence(run_dir: Path) -> dict[str, Any]:
    path = run_dir / EVIDENCE
    try:
        doc = json.loads(path.read_text())
        cos = np.array([np.nan if c is None else c for c in doc["cosine"]], dtype=np.float64)
        inserted = np.array(doc["inserted"], dtype=bool)
        if cos.shape != inserted.shape:
            raise ValueError("cosine and inserted differ in length")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StoreError(f"{path}: cannot read the canary clients' cosines ({e}); run `fedleak train` with the "
                         "same --out again to rewrite it") from None
    return {**doc, "cos": cos, "mask": inserted}


def _accountant(run_dir: Path) -> dict[str, Any]:
    rows = [r for r in store.read_metrics(run_dir) if isinstance(r.get("privacy"), dict)]
    return rows[-1]["privacy"] if rows else {}


def client_audit_entry(cfg: ExperimentConfig, run_dir: str | Path) -> dict[str, Any]:
    """The ``audit/clients.json`` entry of a finished run with canary clients (module docstring)."""
    # here, not at the top: metrics.client_canaries loads scipy (~0.6 s), which a run without canary clients
    # (every `fedleak train`) does not need
    from fedleak.metrics.client_canaries import one_shot_epsilon, one_shot_interval

    run_dir = Path(run_dir)
    ev = _read_evidence(run_dir)
    delta, conf = audit_delta(cfg), cfg.audit.confidence
    cos_in, cos_out = ev["cos"][ev["mask"]], ev["cos"][~ev["mask"]]
    est = one_shot_epsilon(cos_in, cos_out, delta)
    lo, hi = one_shot_interval(est, conf)
    acc = _accountant(run_dir)
    acc_eps = acc.get("epsilon")
    note = (f"one-shot estimate from {est.n_in} inserted vs {est.n_out} held-out canary clients (cosine with the "
            f"final model change); epsilon is its lower {conf:g} limit (sampling error only), not a DP bound: "
            "it assumes Gaussian cosines (the Gaussian mechanism in high dimension)")
    if acc_eps is not None:
        note += f"; the accountant's epsilon is {acc_eps:.4g} ({acc.get('accountant', 'accountant')})"
    return {
        "level": "client",
        "method": METHOD,
        "attack": None,
        "epsilon": float(lo),
        "confidence": float(conf),
        "delta": delta,
        "valid_dp_bound": False,
        "note": note,
        "details": {
            **est.as_dict(),
            "epsilon_estimate": est.epsilon,
            "epsilon_upper": float(hi),
            "accountant_epsilon": acc_eps,
            "accountant": acc.get("accountant"),
            "accountant_epsilon_aggregate": acc.get("epsilon_aggregate"),
            "canary_clients": int(ev["mask"].size),
            "clip": ev.get("clip"),
            "rounds": ev.get("rounds"),
            "rounds_taken_part": ev.get("rounds_taken_part"),
            "cosines_inserted": cos_in.tolist(),
            "cosines_held_out": cos_out.tolist(),
        },
    }


def write_client_audit(cfg: ExperimentConfig, run_dir: str | Path) -> Path | None:
    """Write ``RUN/audit/clients.json`` when the run has canary clients and is finished; its path, else None."""
    run_dir = Path(run_dir)
    if not cfg.audit.canary_clients or not (run_dir / EVIDENCE).is_file():
        return None
    entry = client_audit_entry(cfg, run_dir)
    path = run_dir / CLIENTS_JSON
    store.atomic_write_text(path, json.dumps([entry], indent=1) + "\n")
    return path


def train_audited(cfg: ExperimentConfig, run_dir: str | Path, quiet: bool = True) -> tuple[Path, Path | None]:
    """Train (or resume) the run, then write its client-level canary audit: ``(run dir, clients.json or None)``.

    The one sequence behind ``fedleak train``, ``fedleak run``, the sweep runner and ``fedleak.api.train``: the
    engine cannot compute the estimate itself (the estimator sits a layer above it)."""
    from fedleak.fl.simulation import train

    out = Path(train(cfg, run_dir, quiet=quiet))
    return out, write_client_audit(cfg, out)


__all__ = ["CLIENTS_JSON", "METHOD", "audit_delta", "client_audit_entry", "train_audited", "write_client_audit"]
