"""``fedleak attack``: score a run directory and write metrics, scores and figures.

All attacks (the default) go to ``RUN/attack/``, which ``fedleak report`` reads; a subset
(``--attacks a,b``) goes to its own folder ``RUN/attack/<names, sorted, joined by '+'>/`` (e.g.
``RUN/attack/fedmia-ii+loss-series/``) with the same files, so it never replaces the full result::

    metrics.json        all metrics (per attack: AUC, log-AUC, TPR@FPR, balanced accuracy, per-round
                        curves, the labelled oracle round, rotating-target mean ± std) + settings
    metrics.csv         one row per attack (the headline numbers)
    scores.npz          ids, owner, member [N] and one [N] score array per attack (default target)
    scores.csv          the same as a table
    audit.json          empirical ε of every attack beside the accountant's ε (report/audit_outputs.py); with
                        canaries, scores.npz also holds canary_ids, canary_inserted, canary_label, canary_<attack>
    roc.pdf/png         log-log ROC curves of all attacks
    tpr_per_round.pdf/png   TPR at the headline FPR (--headline-fpr, default 0.1%) against the round
    fedmia_scores.pdf/png   member / non-member distributions of the FedMIA scores
    utility.pdf/png     accuracy per round (from metrics.jsonl)
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from fedleak.attacks.mia.evaluate import evaluate
from fedleak.attacks.mia.evaluation import Evaluation
from fedleak.attacks.mia.names import ATTACKS, resolve_names, runnable_names
from fedleak.attacks.mia.result import AttackResult, same_fpr
from fedleak.metrics.roc import HEADLINE_FPR, fpr_key
from fedleak.report import figures
from fedleak.report.audit_outputs import write_audit
from fedleak.signals.loading import load_signals
from fedleak.signals.store import (
    StoreError,
    atomic_write_text,
    make_dirs,
    read_metrics,
    recorded_rounds,
    round_path,
)

ATTACK_DIR = "attack"
FIGURE_STEMS = ("roc", "tpr_per_round", "fedmia_scores", "utility")


def attack_dir(run_dir: str | Path, names: Iterable[str] | str | None = None) -> Path:
    """Where ``fedleak attack`` writes: ``RUN/attack/`` for all attacks, a sub-folder for a subset."""
    base = Path(run_dir) / ATTACK_DIR
    if names is None:
        return base
    sel = resolve_names(names)
    return base if set(sel) == set(ATTACKS) else base / "+".join(sorted(sel))


def is_full(ev: Evaluation) -> bool:
    """True when the evaluation covers every attack fedleak implements (or could run on this run's arrays)."""
    return set(ev.attacks) | set(ev.extra.get("attacks_not_recorded", [])) >= set(ATTACKS)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))


def _finite(x: Any) -> Any:
    """JSON has no inf/NaN: write them as strings."""
    if isinstance(x, float) and not np.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def metrics_csv(ev: Evaluation) -> str:
    fprs, head = ev.fprs, ev.headline_fpr
    rot_fprs = list({fpr_key(f): f for f in (0.01, head)}.values())
    header = ["attack", "label", "kind", "round", "auc", "log_auc", *[fpr_key(f) for f in fprs], "balanced_accuracy"]
    if ev.rotation.done:
        for k in ("auc", *[fpr_key(f) for f in rot_fprs]):
            header += [f"rotating_{k}_mean", f"rotating_{k}_std"]
    header += ["oracle_round", f"oracle_{fpr_key(head)}"]
    header += _ci_head(fprs)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for name, m in ev.attacks.items():
        row = [name, m.label, m.kind, "" if m.round is None else m.round, m.auc, m.log_auc]
        row += [m.tpr_at(f) for f in fprs] + [m.balanced_accuracy]
        if ev.rotation.done and m.rotating:
            for sp in (m.rotating.auc, *[m.rotating_tpr(f) for f in rot_fprs]):
                row += [sp.mean, sp.std]
        o = m.oracle
        row += [o.round, o.tpr] if o else ["", ""]
        w.writerow(row + _ci_row(m, fprs))
    return buf.getvalue()


def _ci_head(fprs: tuple[float, ...]) -> list[str]:
    """Interval columns (last, so the earlier columns keep their positions): AUC's DeLong interval, then per
    FPR the members flagged and the Clopper–Pearson interval of the TPR."""
    head = ["auc_ci95_low", "auc_ci95_high"]
    for f in fprs:
        head += [f"{fpr_key(f)}_members_flagged", f"{fpr_key(f)}_ci95_low", f"{fpr_key(f)}_ci95_high"]
    return head


def _ci_row(m: AttackResult, fprs: tuple[float, ...]) -> list[Any]:
    row: list[Any] = list(m.auc_ci or ["", ""])
    for f in fprs:
        r = m.rate(f)
        row += [r.k if r.k is not None else "", *(r.ci or ["", ""])]
    return row


def _scores_csv(ids: np.ndarray, owner: np.ndarray, member: np.ndarray, scores: dict[str, np.ndarray]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    names = list(scores)
    w.writerow(["id", "owner", "member", *names])
    cols = [scores[n] for n in names]
    for i in range(len(ids)):
        w.writerow([int(ids[i]), int(owner[i]), int(member[i]), *(f"{c[i]:.9g}" for c in cols)])
    return buf.getvalue()


def write_figures(ev: Evaluation, out: Path, metrics_rows: list[dict[str, Any]] | None = None) -> dict[str, str]:
    """Write every figure of an evaluation; returns {figure: png file name}."""
    made: dict[str, str] = {}
    fig = figures.roc_figure(ev.curves, ev, title=f"ROC curves, target client {ev.target} (log-log)")
    figures.save(fig, out / "roc")
    made["roc"] = "roc.png"
    if any(a.per_round or a.kind == "temporal" for a in ev.attacks.values()):
        fig = figures.tpr_per_round_figure(
            ev, title=f"TPR@{100 * ev.headline_fpr:g}% per round, target client {ev.target}")
        figures.save(fig, out / "tpr_per_round")
        made["tpr_per_round"] = "tpr_per_round.png"
    fed = [n for n in ev.scores if ATTACKS[n].kind == "fedmia"]
    if fed:
        fig = figures.score_hist_figure(ev.scores, ev.labels, ev, fed)
        figures.save(fig, out / "fedmia_scores")
        made["fedmia_scores"] = "fedmia_scores.png"
    if metrics_rows:
        fig = figures.utility_figure(metrics_rows, ev.target)
        if fig is not None:
            figures.save(fig, out / "utility")
            made["utility"] = "utility.png"
    return made


def attack_run(
    run_dir: str | Path,
    names: Iterable[str] | str | None = None,
    *,
    round: int | None = None,
    target: int | None = None,
    rotate: bool | None = None,
    strict: bool = False,
    make_figures: bool = True,
    headline_fpr: float = HEADLINE_FPR,
    **fedmia_options: Any,
) -> tuple[Path, Evaluation]:
    """Evaluate the attacks on a run directory and write all outputs to :func:`attack_dir`."""
    run_dir = Path(run_dir)
    asked = resolve_names(names)  # an unknown name is reported before the signals are read
    t0 = time.time()
    sig = load_signals(run_dir)
    t_load = time.time() - t0
    names = runnable_names(sig, names)  # every attack on an old run: none on arrays it lacks (margin)
    left_out = [n for n in asked if n not in names]
    ev = evaluate(sig, names, round=round, target=target, rotate=rotate, strict=strict, headline_fpr=headline_fpr,
                  **fedmia_options)
    ev = replace(ev, run_dir=str(run_dir), extra={**ev.extra, "attacks_not_recorded": left_out} if left_out else ev.extra,
                 seconds={"load": round_(t_load), "attacks": round_(time.time() - t0 - t_load)})
    names = names + left_out
    out = attack_dir(run_dir, names)
    make_dirs(out)
    # audit.json first (report/audit_outputs.py): a damaged canary file stops here, before any other output changes
    _, canary_arrays = write_audit(run_dir, out, sig, ev, fedmia_options)
    if make_figures:
        ev = replace(ev, figures=write_figures(ev, out, read_metrics(run_dir)))
    else:  # never leave figures of an earlier evaluation next to these metrics
        for stem in FIGURE_STEMS:
            for ext in ("pdf", "png"):
                (out / f"{stem}.{ext}").unlink(missing_ok=True)
    atomic_write_text(out / "metrics.json", json.dumps(_finite(ev.to_json()), indent=2, default=_json_default))
    atomic_write_text(out / "metrics.csv", metrics_csv(ev))
    tmp = out / "scores.npz.tmp"
    with open(tmp, "wb") as f:
        np.savez(
            f, ids=sig.cand_ids, owner=sig.owner, member=ev.labels, target=np.int64(ev.target),
            **{k.replace("-", "_"): v for k, v in ev.scores.items()}, **canary_arrays,
        )
    tmp.replace(out / "scores.npz")
    atomic_write_text(out / "scores.csv", _scores_csv(sig.cand_ids, sig.owner, ev.labels, ev.scores))
    return out, ev


def settings_of(ev: Evaluation) -> dict[str, Any]:
    """The ``attack_run`` / ``evaluate`` keyword arguments that reproduce ``ev`` (attacks, round, target, rotation,
    FPR convention, FedMIA options, headline FPR)."""
    fo = ev.fedmia_options or {}
    return {"names": list(ev.attacks), "round": ev.round, "target": ev.target, "rotate": ev.rotation.done,
            "strict": ev.strict, "headline_fpr": ev.headline_fpr,
            **{k: fo[k] for k in ("aggregation", "ddof", "eps", "outlier_filter", "robust") if k in fo}}


def at_headline(run_dir: str | Path, ev: Evaluation, fpr: float | None) -> Evaluation:
    """``ev`` headlined at ``fpr`` (None: as it is): re-read when ``fpr`` is one of its FPR targets, else the run is
    evaluated again in memory with the same settings (nothing is written)."""
    if fpr is None or same_fpr(fpr, ev.headline_fpr):
        return ev
    if any(same_fpr(f, fpr) for f in ev.fprs):
        return ev.with_headline(fpr)
    kw = {**settings_of(ev), "headline_fpr": fpr}
    return evaluate(load_signals(run_dir), kw.pop("names"), per_round=False, **kw)


def round_(x: float) -> float:
    return float(f"{x:.3g}")


def is_stale(run_dir: str | Path) -> bool:
    """True when there are no attack metrics, or signals were recorded after them."""
    p = attack_dir(run_dir) / "metrics.json"
    if not p.is_file():
        return True
    rounds = recorded_rounds(Path(run_dir))
    if not rounds:
        return False
    newest = max(round_path(Path(run_dir), r).stat().st_mtime for r in rounds)
    return newest > p.stat().st_mtime


_INT_KEYS = ("target", "round", "num_clients", "n_members", "n_nonmembers")


def _is_number(x: Any) -> bool:
    """A JSON number, or one of the strings _finite writes for inf/NaN."""
    return (isinstance(x, (int, float)) and not isinstance(x, bool)) or x in ("nan", "inf", "-inf")


def _metrics_problem(m: Any) -> str | None:
    """What makes a parsed metrics.json unusable by report/summarize (None: it has the shape they read)."""
    if not isinstance(m, dict):
        return "not a JSON object"
    for key in _INT_KEYS:
        if not isinstance(m.get(key), int) or isinstance(m.get(key), bool):
            return f"'{key}' is missing or not an integer"
    for key, ok in (("fpr_targets", _is_number), ("recorded_rounds", lambda r: isinstance(r, int))):
        if not isinstance(m.get(key), list) or not all(ok(v) for v in m[key]):
            return f"'{key}' is missing or not a list of numbers"
    head = m.get("headline_fpr", 0.5)
    if not _is_number(head) or not 0 < float(head) < 1:
        return "'headline_fpr' is not a number between 0 and 1"
    if not isinstance(m.get("attacks"), dict):
        return "'attacks' is missing or not a mapping of attack results"
    for name, a in m["attacks"].items():
        if not isinstance(a, dict):
            return f"attack '{name}' is not a mapping"
        bad = [k for k, v in a.items() if (k in ("auc", "log_auc", "balanced_accuracy") or k.startswith("tpr@"))
               and not _is_number(v)]
        if bad:
            return f"attack '{name}': {bad[0]} is not a number"
    return None


def load_attack_metrics(run_dir: str | Path) -> Evaluation:
    """RUN/attack/metrics.json as an :class:`Evaluation`, checked to have the shape its readers use (else a
    StoreError naming it)."""
    p = attack_dir(run_dir) / "metrics.json"
    try:
        m: Any = json.loads(p.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        m = e
    except FileNotFoundError:
        raise
    except OSError as e:
        raise StoreError(f"cannot read {p}: {e.strerror or e}; re-run `fedleak attack {run_dir}`") from None
    why = f"not JSON ({type(m).__name__})" if isinstance(m, Exception) else _metrics_problem(m)
    if not why:
        try:
            return Evaluation.from_json(m)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            why = f"unreadable entry {e}"
    raise StoreError(f"{p} is damaged ({why}); re-run `fedleak attack {run_dir}` to rewrite it")
