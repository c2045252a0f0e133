"""Score a run with several attacks and summarise them with ROC metrics.

* Single-round attacks are reported at **one fixed round** (``round``; default the last recorded
  round the target took part in). Their best round chosen *with the labels* (what the original
  code reports) is kept as a separate, clearly labelled ``oracle`` entry.
* Per-round metrics (TPR at the headline FPR, AUC) are computed for the single-round attacks and for
  FedMIA's per-round score Λ̂_r — the data of the paper's TPR-per-round figure.
* **Rotating target**: when the candidates hold samples of every client and the rows are aligned
  (the same candidate in every client's and round's row), every client is evaluated as the target in
  turn and each metric is reported as mean ± sample std (ddof = 1) over targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from fedleak.attacks.mia.attacks import (
    ATTACKS,
    fedmia_rounds,
    resolve_names,
    runnable_names,
    resolve_target,
    round_index,
    run_attacks,
)
from fedleak.errors import FedleakError
from fedleak.metrics.intervals import delong_interval, tpr_intervals
from fedleak.metrics.roc import (
    DEFAULT_FPRS,
    HEADLINE_FPR,
    auc_from_curve,
    fpr_key,
    roc_curve,
    roc_metrics,
    tpr_at_fpr,
)
from fedleak.signals.loading import Signals

#: confidence level of the intervals written next to every rate (``ci95``)
CONFIDENCE = 0.95

def is_aligned(signals: Signals) -> bool:
    """True when every client and round scored the same candidate in every row (protocol 'aligned')."""
    return bool((np.asarray(signals.ids) == np.asarray(signals.cand_ids)[None, None, :]).all())


def rotation_targets(signals: Signals) -> list[int]:
    """Clients that can be evaluated as the target (all of them when every client owns candidates)."""
    owners = set(np.unique(signals.owner).tolist())
    return [k for k in range(signals.num_clients) if k in owners]


def can_rotate(signals: Signals) -> tuple[bool, str]:
    targets = rotation_targets(signals)
    if len(targets) < signals.num_clients:
        return False, (
            f"candidates cover {len(targets)} of {signals.num_clients} clients; train with "
            "candidates.rotating_target=true to evaluate every client as the target"
        )
    if not is_aligned(signals):
        return False, "candidate rows are not aligned (protocol official-compat); rotation needs aligned rows"
    return True, ""


def _clean(scores: np.ndarray) -> tuple[np.ndarray, int]:
    """NaN scores (e.g. a diverged model) rank as least member-like; return the count."""
    bad = np.isnan(scores)
    if bad.any():
        scores = np.where(bad, -np.inf, scores)
    return scores, int(bad.sum())


@dataclass
class Evaluation:
    """Everything ``fedleak attack`` writes: metrics (JSON-ready), scores and curves for figures."""

    metrics: dict[str, Any]
    scores: dict[str, np.ndarray]  # attack -> [N] scores for the default target
    labels: np.ndarray  # [N] bool, members of the default target
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # attack -> (fpr, tpr)
    fedmia_per_round: dict[str, np.ndarray] = field(default_factory=dict)  # attack -> [R', N] Λ̂_r


def _summary(values: list[float]) -> dict[str, Any]:
    a = np.asarray(values, float)
    return {
        "mean": float(a.mean()),
        "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
        "values": [float(v) for v in a],
    }


def evaluate(
    signals: Signals,
    names: Iterable[str] | str | None = None,
    *,
    round: int | None = None,
    target: int | None = None,
    rotate: bool | None = None,
    strict: bool = False,
    fprs: Iterable[float] = DEFAULT_FPRS,
    per_round: bool = True,
    **fedmia_options: Any,
) -> Evaluation:
    """Run the attacks, compute their metrics, per-round curves, oracle rounds and rotation.

    ``rotate``: None = whenever possible, True = required (error if impossible), False = never.
    """
    names = runnable_names(signals, names)  # every attack: those on arrays this run recorded
    fprs = tuple(float(f) for f in fprs)
    t = resolve_target(signals, target)
    ri = round_index(signals, round, t)
    fixed_round = int(signals.rounds[ri])
    labels = signals.members(t)
    if not labels.any() or labels.all():
        raise FedleakError(
            f"target client {t} has {int(labels.sum())} member candidates of {labels.size}; "
            "pick a target that owns candidates (see candidates.npz 'owner')"
        )
    scores = run_attacks(signals, names, round=fixed_round, target=t, **fedmia_options)

    ok_rot, why_not = can_rotate(signals)
    if rotate and not ok_rot:
        raise FedleakError(f"cannot rotate the target: {why_not}")
    do_rotate = ok_rot if rotate is None else bool(rotate)

    ev = Evaluation(metrics={}, scores={}, labels=labels)
    out_attacks: dict[str, Any] = {}
    for name in names:
        s, n_nan = _clean(scores[name])
        ev.scores[name] = s
        fpr, tpr, _ = roc_curve(labels, s)
        ev.curves[name] = (fpr, tpr)
        out_attacks[name] = _attack_entry(
            signals, name, s, n_nan, labels, fixed_round, t, fprs, strict, per_round, fedmia_options, ev
        )
    rot_info: dict[str, Any] = {"done": False, "reason": why_not if not do_rotate else ""}
    if do_rotate:
        rot_info = _rotate(signals, names, scores, t, ri, fixed_round, fprs, strict, fedmia_options, out_attacks)
    ev.metrics = {
        "target": t,
        "round": fixed_round,
        "recorded_rounds": [int(r) for r in signals.rounds],
        "num_clients": signals.num_clients,
        "n_candidates": int(labels.size),
        "n_members": int(labels.sum()),
        "n_nonmembers": int((~labels).sum()),
        "fpr_targets": list(fprs),
        "fpr_convention": "<" if strict else "<=",
        "fpr_resolution": 1.0 / int((~labels).sum()),
        "protocol": "aligned" if is_aligned(signals) else "official-compat",
        "fedmia_options": {
            "aggregation": fedmia_options.get("aggregation", "mean"),
            "ddof": fedmia_options.get("ddof", 0),
            "eps": fedmia_options.get("eps", 1e-8),
            "outlier_filter": bool(fedmia_options.get("outlier_filter", False)),
            "robust": bool(fedmia_options.get("robust", False)),
        },
        "rotation": rot_info,
        "attacks": out_attacks,
    }
    return ev


def _attack_entry(
    signals: Signals, name: str, s: np.ndarray, n_nan: int, labels: np.ndarray, fixed_round: int, t: int,
    fprs: tuple[float, ...], strict: bool, per_round: bool, fedmia_options: dict[str, Any], ev: Evaluation,
) -> dict[str, Any]:
    """One attack's metrics entry: ROC metrics, per-round curves and the oracle round (single-round attacks)."""
    info = ATTACKS[name]
    entry: dict[str, Any] = {
        "label": info.label,
        "kind": info.kind,
        "measure": info.measure,
        "round": fixed_round if info.kind == "single" else None,
        **roc_metrics(labels, s, fprs, strict).as_dict(),
        **interval_entries(labels, s, fprs, strict),
    }
    if n_nan:
        entry["n_nan_scores"] = n_nan
    if per_round and info.kind in ("single", "fedmia"):
        entry["per_round"] = _per_round(signals, name, t, labels, fprs, strict, fedmia_options, ev)
        pr = entry["per_round"]
        key = fpr_key(HEADLINE_FPR)
        if pr["rounds"] and info.kind == "single":
            j = int(np.argmax(pr[key]))
            entry["oracle"] = {
                "note": "best round chosen with the membership labels (optimistic; what the original reports)",
                "round": pr["rounds"][j],
                key: pr[key][j],
                "auc": pr["auc"][j],
            }
    return entry


def interval_entries(
    labels: np.ndarray, scores: np.ndarray, fprs: tuple[float, ...], strict: bool
) -> dict[str, dict[str, list]]:
    """``counts`` (members flagged k of n, per FPR key) and ``ci95``: the exact Clopper–Pearson interval of
    each TPR and DeLong's interval of the AUC (``None`` with fewer than 2 members or 2 non-members)."""
    counts: dict[str, list] = {}
    ci: dict[str, list | None] = {}
    y = np.asarray(labels).astype(bool)
    if min(int(y.sum()), int((~y).sum())) >= 2:
        d = delong_interval(y, scores, CONFIDENCE)
        ci["auc"] = [d.lower, d.upper]
    else:
        ci["auc"] = None
    for iv in tpr_intervals(y, scores, fprs, CONFIDENCE, strict):
        key = fpr_key(iv.fpr_target)
        counts[key] = [iv.k, iv.n]
        ci[key] = [iv.lower, iv.upper]
    return {"counts": counts, "ci95": ci}


def _rotate(
    signals: Signals, names: list[str], scores: dict[str, np.ndarray], t: int, ri: int, fixed_round: int,
    fprs: tuple[float, ...], strict: bool, fedmia_options: dict[str, Any], out_attacks: dict[str, Any],
) -> dict[str, Any]:
    """Every client as the target: adds each attack's ``rotating`` summary; returns the rotation record."""
    targets = rotation_targets(signals)
    per_target: dict[str, dict[str, list[float]]] = {n: {} for n in names}
    used_rounds: dict[int, int] = {}
    for tt in targets:
        lab = signals.members(tt)
        r_tt = fixed_round
        if not signals.participated[ri, tt]:
            r_tt = int(signals.rounds[round_index(signals, None, tt)])
        used_rounds[tt] = r_tt
        sc = scores if tt == t else run_attacks(signals, names, round=r_tt, target=tt, **fedmia_options)
        for name in names:
            d = roc_metrics(lab, _clean(sc[name])[0], fprs, strict).as_dict()
            for k in ("auc", "log_auc", *[fpr_key(f) for f in fprs], "balanced_accuracy"):
                per_target[name].setdefault(k, []).append(float(d[k]))
    for name in names:
        out_attacks[name]["rotating"] = {k: _summary(v) for k, v in per_target[name].items()}
    return {"done": True, "targets": targets, "rounds": {str(k): v for k, v in used_rounds.items()}}


def _per_round(
    signals: Signals,
    name: str,
    target: int,
    labels: np.ndarray,
    fprs: tuple[float, ...],
    strict: bool,
    fedmia_options: dict[str, Any],
    ev: Evaluation,
) -> dict[str, list]:
    """Per-round TPR at each FPR target and AUC of a single-round attack or of FedMIA's Λ̂_r."""
    info = ATTACKS[name]
    rows: list[tuple[int, np.ndarray]] = []
    if info.kind == "single":
        part = np.asarray(signals.participated, bool)[:, target]
        for i in np.flatnonzero(part):
            r = int(signals.rounds[i])
            rows.append((r, run_attacks(signals, name, round=r, target=target)[name]))
    else:
        opts = {k: v for k, v in fedmia_options.items() if k != "aggregation"}
        fr = fedmia_rounds(signals, info.measure, target=target, **opts)
        ev.fedmia_per_round[name] = fr.cdf
        rows = [(int(r), fr.z[j]) for j, r in enumerate(fr.rounds)]  # Φ is monotone: z ranks the same
    out: dict[str, list] = {"rounds": [], "auc": []}
    for f in fprs:
        out[fpr_key(f)] = []
    for r, s in rows:
        s, _ = _clean(s)
        fpr, tpr, _ = roc_curve(labels, s)
        out["rounds"].append(r)
        out["auc"].append(auc_from_curve(fpr, tpr))
        for f in fprs:
            out[fpr_key(f)].append(tpr_at_fpr(fpr, tpr, f, strict))
    return out
