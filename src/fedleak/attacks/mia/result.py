"""Typed results of a membership-inference evaluation: one :class:`AttackResult` per attack, one :class:`Evaluation`.

``evaluate`` (``attacks/mia/evaluate.py``) builds them; the report (verdict, tables, figures, summaries) and the
sweeps read them. ``Evaluation.to_json()`` is exactly the ``RUN/attack[/<subset>]/metrics.json`` mapping the
evaluation has always written (plus ``headline_fpr`` when it is not the default 0.001), and
``Evaluation.from_json()`` reads every such file, including those written before the interval keys
(``counts``, ``ci95``) existed. Rates are keyed by the FPR target (a float); the JSON keys are
``fpr_key(fpr)`` (``'tpr@0.1%'``).

The *headline* FPR (``--headline-fpr``, default :data:`fedleak.metrics.roc.HEADLINE_FPR`) is the one the verdict,
the ranking, the oracle round and the summary tables read; it is always one of the evaluation's FPR targets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from fedleak.errors import FedleakError
from fedleak.metrics.roc import fpr_key

ORACLE_NOTE = "best round chosen with the membership labels (optimistic; what the original reports)"
Interval = tuple[float, float]


def as_float(x: Any) -> float:
    """A JSON number (metrics.json writes inf/NaN as strings) as a float."""
    return float(x)


def same_fpr(a: float, b: float) -> bool:
    """Two FPR targets name the same metric (the same ``tpr@x%`` key)."""
    return fpr_key(a) == fpr_key(b)


def with_fpr(fprs: tuple[float, ...], fpr: float) -> tuple[float, ...]:
    """``fprs`` with ``fpr`` added (kept in descending order) when no target of that key is in it yet."""
    if any(same_fpr(f, fpr) for f in fprs):
        return fprs
    return tuple(sorted((*fprs, float(fpr)), reverse=True))


@dataclass(frozen=True)
class Spread:
    """Mean ± sample std (ddof 1) of one metric over the rotating targets, and the per-target values."""

    mean: float
    std: float
    values: tuple[float, ...]

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "values": list(self.values)}

    @staticmethod
    def of(values: list[float]) -> "Spread":
        a = np.asarray(values, float)
        return Spread(float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0, tuple(float(v) for v in a))

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> "Spread":
        return Spread(as_float(d["mean"]), as_float(d["std"]), tuple(as_float(v) for v in d.get("values", [])))


@dataclass(frozen=True)
class Rotating:
    """An attack's metrics with every client as the target in turn."""

    auc: Spread
    log_auc: Spread
    tpr: Mapping[float, Spread]
    balanced_accuracy: Spread

    def to_json(self) -> dict[str, Any]:
        return {"auc": self.auc.to_json(), "log_auc": self.log_auc.to_json(),
                **{fpr_key(f): s.to_json() for f, s in self.tpr.items()},
                "balanced_accuracy": self.balanced_accuracy.to_json()}

    @staticmethod
    def from_json(d: Mapping[str, Any], fprs: tuple[float, ...]) -> "Rotating":
        return Rotating(Spread.from_json(d["auc"]), Spread.from_json(d["log_auc"]),
                        {f: Spread.from_json(d[fpr_key(f)]) for f in fprs if fpr_key(f) in d},
                        Spread.from_json(d["balanced_accuracy"]))


@dataclass(frozen=True)
class PerRound:
    """Per-round TPR at every FPR target and AUC (a single-round attack, or FedMIA's per-round score)."""

    rounds: tuple[int, ...]
    auc: tuple[float, ...]
    tpr: Mapping[float, tuple[float, ...]]

    def to_json(self) -> dict[str, Any]:
        return {"rounds": list(self.rounds), "auc": list(self.auc),
                **{fpr_key(f): list(v) for f, v in self.tpr.items()}}

    @staticmethod
    def from_json(d: Mapping[str, Any], fprs: tuple[float, ...]) -> "PerRound":
        return PerRound(tuple(int(r) for r in d["rounds"]), tuple(as_float(v) for v in d["auc"]),
                        {f: tuple(as_float(v) for v in d[fpr_key(f)]) for f in fprs if fpr_key(f) in d})


@dataclass(frozen=True)
class Oracle:
    """The round at which a single-round attack reads best at ``fpr``, chosen with the labels (optimistic)."""

    round: int
    fpr: float
    tpr: float
    auc: float
    note: str = ORACLE_NOTE

    def to_json(self) -> dict[str, Any]:
        return {"note": self.note, "round": self.round, fpr_key(self.fpr): self.tpr, "auc": self.auc}

    @staticmethod
    def best(per_round: PerRound, fpr: float) -> "Oracle | None":
        """The oracle entry at ``fpr``: the first round with the largest TPR (None without rounds)."""
        if not per_round.rounds:
            return None
        vals = next(v for f, v in per_round.tpr.items() if same_fpr(f, fpr))
        j = int(np.argmax(vals))
        return Oracle(per_round.rounds[j], fpr, vals[j], per_round.auc[j])

    @staticmethod
    def from_json(d: Mapping[str, Any], fprs: tuple[float, ...], headline: float) -> "Oracle":
        keys = [k for k in d if k.startswith("tpr@")]
        by_key = {fpr_key(f): f for f in (headline, *fprs)}
        key = keys[0] if keys else fpr_key(headline)
        fpr = by_key.get(key, float(key[4:-1]) / 100.0 if keys else headline)
        return Oracle(int(d["round"]), fpr, as_float(d[key]), as_float(d["auc"]), str(d.get("note", ORACLE_NOTE)))


@dataclass(frozen=True)
class Intervals:
    """Members flagged ``(k, n)`` and the exact Clopper–Pearson 95% interval per FPR target; DeLong's AUC interval."""

    counts: Mapping[float, tuple[int, int]]
    tpr: Mapping[float, Interval | None]
    auc: Interval | None

    def to_json(self) -> dict[str, Any]:
        ci: dict[str, Any] = {"auc": None if self.auc is None else list(self.auc)}
        ci.update({fpr_key(f): None if v is None else list(v) for f, v in self.tpr.items()})
        return {"counts": {fpr_key(f): list(c) for f, c in self.counts.items()}, "ci95": ci}

    @staticmethod
    def from_json(d: Mapping[str, Any], fprs: tuple[float, ...]) -> "Intervals | None":
        counts, ci = d.get("counts"), d.get("ci95")
        if not isinstance(counts, Mapping) or not isinstance(ci, Mapping):
            return None
        pair = lambda v: None if not v else (as_float(v[0]), as_float(v[1]))  # noqa: E731
        return Intervals({f: (int(counts[fpr_key(f)][0]), int(counts[fpr_key(f)][1]))
                          for f in fprs if counts.get(fpr_key(f))},
                         {f: pair(ci.get(fpr_key(f))) for f in fprs if fpr_key(f) in ci}, pair(ci.get("auc")))


@dataclass(frozen=True)
class Rate:
    """One TPR as the tables print it: the rate, the members flagged ``k`` of ``n`` and the 95% interval."""

    tpr: float
    k: int | None = None
    n: int | None = None
    ci: Interval | None = None


@dataclass(frozen=True)
class AttackResult:
    """One attack's result on the default target (and, with a rotating target, over all targets)."""

    name: str
    label: str
    kind: str  # single | temporal | fedmia
    measure: str
    round: int | None  # the fixed round of a single-round attack
    auc: float
    log_auc: float
    tpr: Mapping[float, float]  # FPR target -> TPR, in the evaluation's FPR order
    balanced_accuracy: float
    best_threshold: float
    n_members: int
    n_nonmembers: int
    fpr_convention: str
    intervals: Intervals | None = None
    n_nan_scores: int = 0
    per_round: PerRound | None = None
    oracle: Oracle | None = None
    rotating: Rotating | None = None
    # arrays of a fresh evaluation (not in metrics.json): [N] scores (NaN cleaned), the ROC curve (fpr, tpr),
    # and FedMIA's per-round score Λ̂_r [R', N]
    scores: np.ndarray | None = field(default=None, compare=False, repr=False)
    roc: tuple[np.ndarray, np.ndarray] | None = field(default=None, compare=False, repr=False)
    fedmia_per_round: np.ndarray | None = field(default=None, compare=False, repr=False)

    def tpr_at(self, fpr: float) -> float:
        for f, v in self.tpr.items():
            if same_fpr(f, fpr):
                return v
        raise FedleakError(f"attack '{self.name}' has no TPR at {100 * fpr:g}% FPR; re-run `fedleak attack` "
                           f"with --headline-fpr {fpr:g}")

    def rate(self, fpr: float) -> Rate:
        """The TPR at ``fpr`` with its count and interval where the metrics have them."""
        tpr = self.tpr_at(fpr)
        iv = self.intervals
        if iv is None:
            return Rate(tpr)
        c = next((v for f, v in iv.counts.items() if same_fpr(f, fpr)), None)
        ci = next((v for f, v in iv.tpr.items() if same_fpr(f, fpr)), None)
        return Rate(tpr, *(c if c else (None, None)), ci)

    @property
    def auc_ci(self) -> Interval | None:
        return self.intervals.auc if self.intervals else None

    def rotating_tpr(self, fpr: float) -> Spread | None:
        if self.rotating is None:
            return None
        return next((s for f, s in self.rotating.tpr.items() if same_fpr(f, fpr)), None)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"label": self.label, "kind": self.kind, "measure": self.measure, "round": self.round,
                             "auc": self.auc, "log_auc": self.log_auc,
                             **{fpr_key(f): v for f, v in self.tpr.items()},
                             "balanced_accuracy": self.balanced_accuracy, "best_threshold": self.best_threshold,
                             "n_members": self.n_members, "n_nonmembers": self.n_nonmembers,
                             "fpr_convention": self.fpr_convention}
        if self.intervals is not None:
            d.update(self.intervals.to_json())
        if self.n_nan_scores:
            d["n_nan_scores"] = self.n_nan_scores
        for key, part in (("per_round", self.per_round), ("oracle", self.oracle), ("rotating", self.rotating)):
            if part is not None:
                d[key] = part.to_json()
        return d

    @staticmethod
    def from_json(name: str, d: Mapping[str, Any], fprs: tuple[float, ...], headline: float) -> "AttackResult":
        ev_round = d.get("round")
        return AttackResult(
            name=name, label=str(d.get("label", name)), kind=str(d["kind"]), measure=str(d.get("measure", "")),
            round=None if ev_round is None else int(ev_round), auc=as_float(d["auc"]), log_auc=as_float(d.get("log_auc", "nan")),
            tpr={f: as_float(d[fpr_key(f)]) for f in fprs if fpr_key(f) in d},
            balanced_accuracy=as_float(d.get("balanced_accuracy", "nan")), best_threshold=as_float(d.get("best_threshold", "nan")),
            n_members=int(d.get("n_members", 0)), n_nonmembers=int(d.get("n_nonmembers", 0)),
            fpr_convention=str(d.get("fpr_convention", "<=")), intervals=Intervals.from_json(d, fprs),
            n_nan_scores=int(d.get("n_nan_scores", 0)),
            per_round=PerRound.from_json(d["per_round"], fprs) if d.get("per_round") else None,
            oracle=Oracle.from_json(d["oracle"], fprs, headline) if d.get("oracle") else None,
            rotating=Rotating.from_json(d["rotating"], fprs) if d.get("rotating") else None,
        )


def _metric(v: float) -> float:
    """NaN ranks last."""
    return -math.inf if math.isnan(v) else v


def rank_key(a: AttackResult, fpr: float) -> tuple[float, float, str]:
    """Sort key: TPR at ``fpr`` descending, then AUC descending, then the attack name."""
    return (-_metric(a.tpr_at(fpr)), -_metric(a.auc), a.name)


def rotating_rank_key(a: AttackResult, fpr: float) -> tuple[float, float, str]:
    """The same order for the every-client-as-target means."""
    r, s = a.rotating, a.rotating_tpr(fpr)
    return (-_metric(s.mean) if s else math.inf, -_metric(r.auc.mean) if r else math.inf, a.name)


__all__ = ["AttackResult", "Interval", "as_float", "Intervals", "Oracle", "PerRound", "Rate", "Rotating", "Spread", "rank_key",
           "rotating_rank_key", "same_fpr", "with_fpr"]
