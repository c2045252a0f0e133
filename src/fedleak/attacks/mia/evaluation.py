"""The typed result of a whole membership-inference evaluation (:class:`Evaluation`), read and written as
``RUN/attack[/<subset>]/metrics.json``; one attack's part is :class:`fedleak.attacks.mia.result.AttackResult`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import numpy as np

from fedleak.attacks.mia.result import (
    AttackResult,
    Oracle,
    as_float,
    rank_key,
    rotating_rank_key,
    same_fpr,
)
from fedleak.errors import FedleakError
from fedleak.metrics.roc import HEADLINE_FPR


@dataclass(frozen=True)
class Rotation:
    """Whether every client was evaluated as the target: the targets and the round each was read at, or why not."""

    done: bool
    reason: str = ""
    targets: tuple[int, ...] = ()
    rounds: Mapping[int, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        if not self.done:
            return {"done": False, "reason": self.reason}
        return {"done": True, "targets": list(self.targets), "rounds": {str(k): v for k, v in self.rounds.items()}}

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> "Rotation":
        return Rotation(bool(d.get("done")), str(d.get("reason", "")), tuple(int(t) for t in d.get("targets", [])),
                        {int(k): int(v) for k, v in (d.get("rounds") or {}).items()})


#: metrics.json keys of an evaluation read into typed fields; any other key is kept in ``extra``, in order
_KNOWN = ("target", "round", "recorded_rounds", "num_clients", "n_candidates", "n_members", "n_nonmembers",
          "fpr_targets", "headline_fpr", "fpr_convention", "fpr_resolution", "protocol", "fedmia_options", "rotation",
          "attacks", "run_dir", "seconds", "figures")


@dataclass(frozen=True)
class Evaluation:
    """Every attack's result on one run: what ``fedleak attack`` writes to ``metrics.json`` (and the arrays)."""

    target: int
    round: int  # the fixed round of the single-round attacks
    recorded_rounds: tuple[int, ...]
    num_clients: int
    n_members: int
    n_nonmembers: int
    fprs: tuple[float, ...]  # the FPR targets every TPR is computed at (the headline is one of them)
    attacks: Mapping[str, AttackResult]  # in evaluation order; :meth:`ranked` gives the rank order
    headline_fpr: float = HEADLINE_FPR
    n_candidates: int | None = None
    fpr_convention: str = "<="
    fpr_resolution: float | None = None
    protocol: str | None = None
    fedmia_options: Mapping[str, Any] | None = None
    rotation: Rotation = field(default_factory=lambda: Rotation(False))
    run_dir: str | None = None
    seconds: Mapping[str, float] | None = None
    figures: Mapping[str, str] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    labels: np.ndarray | None = field(default=None, compare=False, repr=False)  # [N] members of the target

    # ------------------------------------------------------------------ reading

    @property
    def strict(self) -> bool:
        return self.fpr_convention == "<"

    def ranked(self, fpr: float | None = None) -> list[AttackResult]:
        """The attacks, strongest first at ``fpr`` (default: the headline FPR)."""
        f = self.headline_fpr if fpr is None else fpr
        return sorted(self.attacks.values(), key=lambda a: rank_key(a, f))

    def rotating_ranked(self) -> list[AttackResult]:
        return sorted(self.attacks.values(), key=lambda a: rotating_rank_key(a, self.headline_fpr))

    def notes(self) -> list[str]:
        """Caveats of this evaluation in words (NaN scores, an FPR resolution coarser than the headline)."""
        out = [f"{a.label}: {a.n_nan_scores} NaN scores ranked as least member-like"
               for a in self.attacks.values() if a.n_nan_scores]
        if self.n_nonmembers and 1.0 / self.n_nonmembers > self.headline_fpr:
            out.append(f"with {self.n_nonmembers} non-members one false positive is {100 / self.n_nonmembers:.3g}% "
                       f"FPR: TPR at {100 * self.headline_fpr:g}% is the TPR with zero false positives")
        return out

    def with_headline(self, fpr: float) -> "Evaluation":
        """The same results headlined at ``fpr`` (one of the FPR targets); the oracle rounds are re-read at it."""
        if not any(same_fpr(f, fpr) for f in self.fprs):
            raise FedleakError(f"TPR at {100 * fpr:g}% FPR was not computed (FPR targets "
                               f"{', '.join(f'{100 * f:g}%' for f in self.fprs)}); re-run `fedleak attack` "
                               f"with --headline-fpr {fpr:g}")
        attacks = {n: replace(a, oracle=Oracle.best(a.per_round, fpr) if a.oracle and a.per_round else a.oracle)
                   for n, a in self.attacks.items()}
        return replace(self, headline_fpr=float(fpr), attacks=attacks)

    # arrays of a fresh evaluation, by attack name
    @property
    def scores(self) -> dict[str, np.ndarray]:
        return {n: a.scores for n, a in self.attacks.items() if a.scores is not None}

    @property
    def curves(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {n: a.roc for n, a in self.attacks.items() if a.roc is not None}

    @property
    def fedmia_per_round(self) -> dict[str, np.ndarray]:
        return {n: a.fedmia_per_round for n, a in self.attacks.items() if a.fedmia_per_round is not None}

    # ------------------------------------------------------------------ JSON

    @property
    def metrics(self) -> dict[str, Any]:
        """The metrics.json mapping (:meth:`to_json`)."""
        return self.to_json()

    def to_json(self) -> dict[str, Any]:
        """The ``metrics.json`` mapping, key for key as written before this type existed (+ ``headline_fpr``
        when it is not the default); non-finite floats stay floats (the writer spells them as strings)."""
        d: dict[str, Any] = {"target": self.target, "round": self.round, "recorded_rounds": list(self.recorded_rounds),
                             "num_clients": self.num_clients}
        if self.n_candidates is not None:
            d["n_candidates"] = self.n_candidates
        d.update(n_members=self.n_members, n_nonmembers=self.n_nonmembers, fpr_targets=list(self.fprs))
        if not same_fpr(self.headline_fpr, HEADLINE_FPR):
            d["headline_fpr"] = self.headline_fpr
        d["fpr_convention"] = self.fpr_convention
        for key in ("fpr_resolution", "protocol", "fedmia_options"):
            if getattr(self, key) is not None:
                d[key] = dict(self.fedmia_options or {}) if key == "fedmia_options" else getattr(self, key)
        d["rotation"] = self.rotation.to_json()
        d["attacks"] = {n: a.to_json() for n, a in self.attacks.items()}
        for key in ("run_dir", "seconds", "figures"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key) if key == "run_dir" else dict(getattr(self, key))
        d.update(self.extra)
        return d

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> "Evaluation":
        """Read a metrics.json mapping (KeyError/TypeError/ValueError when a key the readers need is unusable)."""
        fprs = tuple(as_float(f) for f in d["fpr_targets"])
        head = as_float(d.get("headline_fpr", HEADLINE_FPR))
        opt = lambda k, conv: None if d.get(k) is None else conv(d[k])  # noqa: E731
        return Evaluation(
            target=int(d["target"]), round=int(d["round"]), recorded_rounds=tuple(int(r) for r in d["recorded_rounds"]),
            num_clients=int(d["num_clients"]), n_members=int(d["n_members"]), n_nonmembers=int(d["n_nonmembers"]),
            fprs=fprs, attacks={str(n): AttackResult.from_json(str(n), a, fprs, head) for n, a in d["attacks"].items()},
            headline_fpr=head, n_candidates=opt("n_candidates", int),
            fpr_convention=str(d.get("fpr_convention", "<=")), fpr_resolution=opt("fpr_resolution", as_float),
            protocol=opt("protocol", str), fedmia_options=opt("fedmia_options", dict),
            rotation=Rotation.from_json(d.get("rotation") or {}), run_dir=opt("run_dir", str),
            seconds=opt("seconds", dict), figures=opt("figures", dict),
            extra={k: v for k, v in d.items() if k not in _KNOWN},
        )


__all__ = ["Evaluation", "Rotation"]
