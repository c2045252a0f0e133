"""What the sweep records per run: utility, privacy accounting and every attack's TPR at the headline FPR
(``attacks.headline_fpr`` of the sweep file or ``--headline-fpr``, default 0.1%), TPR at 1% (10% when the
headline is 1%) and AUC, and the members found at the headline FPR (``<key>_members``: k of n) from which the
sweep tables draw an exact interval.

The attacks and ROC metrics are those of :mod:`fedleak.attacks.mia` (``evaluate``, read through its typed
:class:`~fedleak.attacks.mia.evaluation.Evaluation`); this module is the one place the sweep touches that API.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedleak.metrics.roc import HEADLINE_FPR, check_headline_fpr, fpr_key, fpr_text
from fedleak.report.ranking import secondary_fprs
from fedleak.signals.loading import load_signals
from fedleak.signals.store import read_metrics


@dataclass(frozen=True)
class Headline:
    """The sweep's headline FPR and the result keys that follow from it."""

    fpr: float = HEADLINE_FPR

    @property
    def key(self) -> str:
        """'tpr@0.1%'"""
        return fpr_key(self.fpr)

    @property
    def text(self) -> str:
        """'0.1%'"""
        return fpr_text(self.fpr)

    @property
    def fprs(self) -> tuple[float, float]:
        """The FPRs a sweep evaluates: the headline and the other column (1%, or 10% when the headline is 1%)."""
        return (self.fpr, secondary_fprs(self.fpr)[0])

    @property
    def metric_keys(self) -> tuple[str, str, str]:
        """The result keys of each attack's numbers: headline TPR, the other TPR, AUC."""
        return (self.key, fpr_key(self.fprs[1]), "auc")

    @property
    def count_key(self) -> str:
        """Result key of the members found at the headline FPR, ``[k, n]`` (pooled over targets when rotated)."""
        return f"{self.key}_members"

    @property
    def ci_fields(self) -> list[str]:
        return [f"{self.key}_members_found", f"{self.key}_members", f"{self.key}_ci95_low", f"{self.key}_ci95_high"]

    @staticmethod
    def of(settings: dict[str, Any] | None) -> "Headline":
        """The headline of a run's attack settings (results written before the setting existed: the default)."""
        return Headline(check_headline_fpr((settings or {}).get("headline_fpr", HEADLINE_FPR), "attacks.headline_fpr"))


def check_attack_names(names: Any) -> list[str]:
    from fedleak.attacks.mia import resolve_names

    return resolve_names(names)


def evaluate_run(run_dir: str | Path, settings: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """``(signals, evaluation)`` of a finished run with the sweep's attack settings (no per-round curves)."""
    from fedleak.attacks.mia import evaluate

    s = dict(settings or {})
    head = Headline.of(s)
    sig = load_signals(run_dir)
    return sig, evaluate(
        sig,
        s.get("names", "all"),
        rotate=s.get("rotate"),
        strict=bool(s.get("strict", False)),
        fprs=head.fprs,
        per_round=False,
        headline_fpr=head.fpr,
        **dict(s.get("options") or {}),
    )


def attack_metrics(run_dir: str | Path, settings: dict[str, Any] | None = None,
                   evaluated: tuple[Any, Any] | None = None) -> dict[str, dict[str, Any]]:
    """{attack: {label, <headline TPR>, <other TPR>, auc, rotated, <headline>_members}} for a finished run.

    With a rotating target (every client evaluated as the target, ``settings['rotate']`` true or null when the
    candidates allow it), the values are the means over targets; otherwise those of the configured target.
    ``evaluated``: the run's :func:`evaluate_run` when the caller has it already.
    """
    head = Headline.of(settings)
    sig, ev = evaluated or evaluate_run(run_dir, settings)
    out: dict[str, dict[str, Any]] = {}
    members = [int(sig.members(t).sum()) for t in ev.rotation.targets]
    for name, a in ev.attacks.items():
        rot = a.rotating
        vals = [a.rotating_tpr(f).mean for f in head.fprs] + [rot.auc.mean] if rot else \
            [a.tpr_at(f) for f in head.fprs] + [a.auc]
        out[name] = {"label": a.label, **dict(zip(head.metric_keys, map(float, vals))), "rotated": rot is not None,
                     head.count_key: headline_count(a, head.fpr, members)}
    return out


def headline_count(a: Any, fpr: float, members: list[int]) -> list[int]:
    """``[k, n]``: members found at ``fpr`` by attack result ``a`` for the default target, or, with a rotating
    target, summed over the targets (each target's TPR times its ``members`` count), matching the mean the sweep
    reports."""
    rot = a.rotating_tpr(fpr)
    if rot is None:
        r = a.rate(fpr)
        return [int(r.k), int(r.n)]
    return [sum(int(round(v * n)) for v, n in zip(rot.values, members)), sum(members)]


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


__all__ = ["Headline", "attack_metrics", "headline_count", "utility", "check_attack_names"]
