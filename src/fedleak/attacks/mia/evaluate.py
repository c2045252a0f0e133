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

from dataclasses import dataclass, replace
from typing import Any, Iterable

import numpy as np

from fedleak.attacks.mia.attacks import fedmia_rounds, resolve_target, round_index, run_attacks
from fedleak.attacks.mia.evaluation import Evaluation, Rotation
from fedleak.attacks.mia.names import ATTACKS, check_fedmia_options, runnable_names
from fedleak.attacks.mia.result import AttackResult, Intervals, Oracle, PerRound, Rotating, Spread, with_fpr
from fedleak.errors import FedleakError
from fedleak.metrics.intervals import delong_interval, tpr_intervals
from fedleak.metrics.roc import (
    DEFAULT_FPRS,
    HEADLINE_FPR,
    auc_from_curve,
    check_headline_fpr,
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
    """Clients that can be evaluated as the target: they own candidates and took part in at least one recorded
    round (with partial participation a client may sit out every recorded round: nothing of it was observed)."""
    owners = set(np.unique(signals.owner).tolist())
    seen = np.asarray(signals.participated).any(axis=0)
    return [k for k in range(signals.num_clients) if k in owners and bool(seen[k])]


def can_rotate(signals: Signals) -> tuple[bool, str]:
    owners = set(np.unique(signals.owner).tolist())
    covered = [k for k in range(signals.num_clients) if k in owners]
    if len(covered) < signals.num_clients:
        return False, (
            f"candidates cover {len(covered)} of {signals.num_clients} clients; train with "
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
    headline_fpr: float = HEADLINE_FPR,
    **fedmia_options: Any,
) -> Evaluation:
    """Run the attacks, compute their metrics, per-round curves, oracle rounds and rotation.

    ``rotate``: None = whenever possible, True = required (error if impossible), False = never.
    ``headline_fpr`` (a number in (0, 1)) is added to ``fprs`` when it is not one of them; the oracle round and
    every headline of the result are read at it.
    """
    names = runnable_names(signals, names)  # every attack: those on arrays this run recorded
    check_fedmia_options(fedmia_options)
    headline_fpr = check_headline_fpr(headline_fpr)
    fprs = with_fpr(tuple(float(f) for f in fprs), headline_fpr)
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

    ctx = _Context(signals, labels, fixed_round, t, fprs, strict, headline_fpr, fedmia_options)
    attacks = {name: _attack_result(ctx, name, scores[name], per_round) for name in names}
    rotation = Rotation(False, why_not if not do_rotate else "")
    if do_rotate:
        rotation, rotating = _rotate(ctx, names, scores, ri)
        attacks = {n: replace(a, rotating=rotating[n]) for n, a in attacks.items()}
    return Evaluation(
        target=t, round=fixed_round, recorded_rounds=tuple(int(r) for r in signals.rounds),
        num_clients=signals.num_clients, n_members=int(labels.sum()), n_nonmembers=int((~labels).sum()),
        fprs=fprs, attacks=attacks, headline_fpr=headline_fpr, n_candidates=int(labels.size),
        fpr_convention="<" if strict else "<=", fpr_resolution=1.0 / int((~labels).sum()),
        protocol="aligned" if is_aligned(signals) else "official-compat",
        fedmia_options={
            "aggregation": fedmia_options.get("aggregation", "mean"),
            "ddof": fedmia_options.get("ddof", 0),
            "eps": fedmia_options.get("eps", 1e-8),
            "outlier_filter": bool(fedmia_options.get("outlier_filter", False)),
            "robust": bool(fedmia_options.get("robust", False)),
        },
        rotation=rotation, labels=labels,
    )


@dataclass(frozen=True)
class _Context:
    """What every attack of one evaluation is scored against."""

    signals: Signals
    labels: np.ndarray
    fixed_round: int
    target: int
    fprs: tuple[float, ...]
    strict: bool
    headline_fpr: float
    fedmia_options: dict[str, Any]


def _attack_result(ctx: _Context, name: str, raw: np.ndarray, per_round: bool) -> AttackResult:
    """One attack's result: ROC metrics, intervals, per-round curves and the oracle round (single-round attacks)."""
    info = ATTACKS[name]
    s, n_nan = _clean(raw)
    fpr, tpr, _ = roc_curve(ctx.labels, s)
    m = roc_metrics(ctx.labels, s, ctx.fprs, ctx.strict)
    pr, fed_rounds = (_per_round(ctx, name) if per_round and info.kind in ("single", "fedmia") else (None, None))
    oracle = Oracle.best(pr, ctx.headline_fpr) if pr is not None and info.kind == "single" else None
    return AttackResult(
        name=name, label=info.label, kind=info.kind, measure=info.measure,
        round=ctx.fixed_round if info.kind == "single" else None, auc=m.auc, log_auc=m.log_auc,
        tpr={f: m.tpr[f] for f in ctx.fprs}, balanced_accuracy=m.balanced_accuracy, best_threshold=m.threshold,
        n_members=m.n_pos, n_nonmembers=m.n_neg, fpr_convention="<" if ctx.strict else "<=",
        intervals=intervals(ctx.labels, s, ctx.fprs, ctx.strict), n_nan_scores=n_nan, per_round=pr, oracle=oracle,
        scores=s, roc=(fpr, tpr), fedmia_per_round=fed_rounds,
    )


def intervals(labels: np.ndarray, scores: np.ndarray, fprs: tuple[float, ...], strict: bool) -> Intervals:
    """Members flagged (k of n) per FPR target with the exact Clopper–Pearson interval of each TPR, and DeLong's
    interval of the AUC (``None`` with fewer than 2 members or 2 non-members)."""
    y = np.asarray(labels).astype(bool)
    auc = None
    if min(int(y.sum()), int((~y).sum())) >= 2:
        d = delong_interval(y, scores, CONFIDENCE)
        auc = (d.lower, d.upper)
    counts: dict[float, tuple[int, int]] = {}
    tpr: dict[float, tuple[float, float] | None] = {}
    for iv in tpr_intervals(y, scores, fprs, CONFIDENCE, strict):
        counts[iv.fpr_target] = (iv.k, iv.n)
        tpr[iv.fpr_target] = (iv.lower, iv.upper)
    return Intervals(counts, tpr, auc)


def interval_entries(
    labels: np.ndarray, scores: np.ndarray, fprs: tuple[float, ...], strict: bool
) -> dict[str, dict[str, list]]:
    """The ``counts`` and ``ci95`` entries of metrics.json (:func:`intervals` as JSON)."""
    return intervals(labels, scores, fprs, strict).to_json()


def _rotate(
    ctx: _Context, names: list[str], scores: dict[str, np.ndarray], ri: int
) -> tuple[Rotation, dict[str, Rotating]]:
    """Every client as the target: the rotation record and each attack's summary over the targets."""
    signals, fprs = ctx.signals, ctx.fprs
    targets = rotation_targets(signals)
    per_target: dict[str, dict[str, list[float]]] = {n: {} for n in names}
    used_rounds: dict[int, int] = {}
    for tt in targets:
        lab = signals.members(tt)
        r_tt = ctx.fixed_round
        if not signals.participated[ri, tt]:
            r_tt = int(signals.rounds[round_index(signals, None, tt)])
        used_rounds[tt] = r_tt
        sc = scores if tt == ctx.target else run_attacks(signals, names, round=r_tt, target=tt, **ctx.fedmia_options)
        for name in names:
            d = roc_metrics(lab, _clean(sc[name])[0], fprs, ctx.strict).as_dict()
            for k in ("auc", "log_auc", *[fpr_key(f) for f in fprs], "balanced_accuracy"):
                per_target[name].setdefault(k, []).append(float(d[k]))
    rotating = {
        name: Rotating(Spread.of(v["auc"]), Spread.of(v["log_auc"]), {f: Spread.of(v[fpr_key(f)]) for f in fprs},
                       Spread.of(v["balanced_accuracy"]))
        for name, v in per_target.items()
    }
    return Rotation(True, "", tuple(targets), used_rounds), rotating


def _per_round(ctx: _Context, name: str) -> tuple[PerRound, np.ndarray | None]:
    """Per-round TPR at each FPR target and AUC of a single-round attack or of FedMIA's Λ̂_r (also returned)."""
    signals, target = ctx.signals, ctx.target
    info = ATTACKS[name]
    rows: list[tuple[int, np.ndarray]] = []
    cdf = None
    if info.kind == "single":
        part = np.asarray(signals.participated, bool)[:, target]
        for i in np.flatnonzero(part):
            r = int(signals.rounds[i])
            rows.append((r, run_attacks(signals, name, round=r, target=target)[name]))
    else:
        opts = {k: v for k, v in ctx.fedmia_options.items() if k != "aggregation"}
        fr = fedmia_rounds(signals, info.measure, target=target, **opts)
        cdf = fr.cdf
        rows = [(int(r), fr.z[j]) for j, r in enumerate(fr.rounds)]  # Φ is monotone: z ranks the same
    rounds, aucs = [], []
    tprs: dict[float, list[float]] = {f: [] for f in ctx.fprs}
    for r, s in rows:
        s, _ = _clean(s)
        fpr, tpr, _ = roc_curve(ctx.labels, s)
        rounds.append(r)
        aucs.append(auc_from_curve(fpr, tpr))
        for f in ctx.fprs:
            tprs[f].append(tpr_at_fpr(fpr, tpr, f, ctx.strict))
    return PerRound(tuple(rounds), tuple(aucs), {f: tuple(v) for f, v in tprs.items()}), cdf
