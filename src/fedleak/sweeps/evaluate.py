"""What the sweep records per run: utility, privacy accounting and every attack's TPR@0.1%, TPR@1% and AUC, and the
members found at 0.1% FPR (``tpr@0.1%_members``: k of n) from which the sweep tables draw an exact interval.

The attacks and ROC metrics are those of :mod:`fedleak.attacks.mia` (``evaluate``); this module is the one place
the sweep touches that API.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedleak.metrics.roc import HEADLINE_FPR, HEADLINE_KEY, fpr_key
from fedleak.signals.loading import load_signals
from fedleak.signals.store import read_metrics

FPRS = (HEADLINE_FPR, 0.01)
METRIC_KEYS = (HEADLINE_KEY, fpr_key(0.01), "auc")


def check_attack_names(names: Any) -> list[str]:
    from fedleak.attacks.mia import resolve_names

    return resolve_names(names)


def attack_metrics(run_dir: str | Path, settings: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """{attack: {label, tpr@0.1%, tpr@1%, auc, rotated}} for a finished run.

    With a rotating target (every client evaluated as the target, ``settings['rotate']`` true or null when the
    candidates allow it), the values are the means over targets; otherwise those of the configured target.
    """
    from fedleak.attacks.mia import evaluate

    s = dict(settings or {})
    sig = load_signals(run_dir)
    ev = evaluate(
        sig,
        s.get("names", "all"),
        rotate=s.get("rotate"),
        strict=bool(s.get("strict", False)),
        fprs=FPRS,
        per_round=False,
        **dict(s.get("options") or {}),
    )
    out: dict[str, dict[str, Any]] = {}
    members = [int(sig.members(t).sum()) for t in ev.metrics["rotation"].get("targets", [])]
    for name, entry in ev.metrics["attacks"].items():
        rot = entry.get("rotating")
        src = {k: v["mean"] for k, v in rot.items()} if rot else entry
        out[name] = {"label": entry.get("label", name), **{k: float(src[k]) for k in METRIC_KEYS},
                     "rotated": bool(rot), HEADLINE_COUNT: headline_count(entry, members)}
    return out


#: result key of the members found at the headline FPR, ``[k, n]`` (pooled over targets when rotated)
HEADLINE_COUNT = f"{HEADLINE_KEY}_members"


def headline_count(entry: dict[str, Any], members: list[int]) -> list[int]:
    """``[k, n]``: members found at the headline FPR of the default target, or, with a rotating target, summed
    over the targets (each target's TPR times its ``members`` count), matching the mean the sweep reports."""
    rot = entry.get("rotating")
    if not rot:
        return [int(v) for v in entry["counts"][HEADLINE_KEY]]
    tprs = rot[HEADLINE_KEY]["values"]
    return [sum(int(round(v * n)) for v, n in zip(tprs, members)), sum(members)]


def utility(run_dir: str | Path) -> dict[str, Any]:
    """Final global-model utility and the last privacy record of a run."""
    rows = read_metrics(run_dir)
    if not rows:
        return {}
    last = rows[-1]
    out: dict[str, Any] = {
        "final_round": int(last["round"]),
        "test_acc": float(last["test_acc"]),
        "test_error": 1.0 - float(last["test_acc"]),
        "test_loss": float(last.get("test_loss", float("nan"))),
    }
    train_rows = [r for r in rows if "train_acc" in r]
    if train_rows:
        out["train_acc"] = float(train_rows[-1]["train_acc"])
    priv = last.get("privacy")
    if priv:
        out["epsilon"] = float(priv.get("epsilon", float("nan")))
        out["delta"] = float(priv.get("delta", float("nan")))
        out["privacy"] = priv
    return out


__all__ = ["attack_metrics", "headline_count", "utility", "check_attack_names", "HEADLINE_COUNT", "METRIC_KEYS", "FPRS"]
