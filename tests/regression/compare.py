"""Compare a re-run of a regression case with the recorded fixture: bit-exact, or within float32 tolerances.

Exact mode (same torch, numpy, CPU model, vector ISA and ATen capability as ``manifest.json``): every array
hash, every stored array byte and every JSON value must be identical (NaN equals NaN).

Tolerance mode (anything else). Even with ``ATEN_CPU_CAPABILITY=default`` and one thread, another CPU makes
MKL/oneDNN pick other GEMM/convolution kernels (different blocking, FMA or not), so float32 sums are rounded
in another order and results differ in the last bits; training and optimisation then carry those differences
forward. The tolerances are derived from the values and the float32 unit roundoff, not tuned to one machine:

* float arrays: ``|a - b| <= rtol * max|ref|`` per array, with ``rtol = SAFETY * sqrt(P) * eps32`` where P is the
  case's model parameter count. The longest float32 reductions here run over all P parameters (per-sample
  gradient dot products and norms, cosine costs, GEMMs of the same width); summed in another order their
  rounding error is typically ``sqrt(P) * eps32`` relative to the magnitude of the terms, i.e. to the array's
  scale, not to each (possibly cancelled, near-zero) element. ``SAFETY = 4`` covers the carry-over through 3
  FL rounds / a few optimiser steps. Measured on the recording machine (ATen default vs avx2 vs avx512 kernels),
  the largest difference was 0.005 of this tolerance for the MIA cases, 0.06 for DLG (L-BFGS) and 0.015 for IG;
  a behaviour change moves values by far more (e.g. fl.lr 0.05 -> 0.05005, a 0.1 % change, moves the plain
  case's scores by 260 times the tolerance; exact mode catches any change at all).
* integer / boolean arrays (ids, owners, splits, membership): identical hashes always, they do not depend on
  float rounding.
* JSON numbers: ``|a - b| <= rtol * max(|ref|, 1)`` (metrics are O(1) or dimensionless, so their rounding
  floor is eps32 in absolute terms). Exceptions, all step functions of float values that a rounding-level change
  can push across a tie:
  - rank statistics (``auc``, ``log_auc``, ``tpr@*``, ``balanced_accuracy``, their rotation means/stds):
    one step of the resolution, ``1 / min members of any target`` (one member crossing a threshold);
  - accuracies (``*_acc``, ``label_accuracy``): one sample, ``1 / size of the smallest evaluated set``;
  - members flagged (``counts/tpr@*``, integers): one member, the same step in counts;
  - ``best_threshold`` (the score at the arg-max of near-tied balanced accuracies) is not compared; the scores
    it comes from are.
  Arrays named ``*_acc`` use the accuracy step as well.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)
SAFETY = 4.0
RANK_KEYS = ("auc", "log_auc", "balanced_accuracy")
ACC_KEYS = ("label_accuracy",)
SKIP_KEYS = ("best_threshold",)


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    rank_step: float = 0.0
    acc_step: float = 0.0


def float32_rtol(parameters: int) -> float:
    """Relative (to an array's scale) tolerance for results of float32 reductions over ``parameters`` terms."""
    return SAFETY * math.sqrt(parameters) * EPS32


def tolerance_for(ref: dict[str, Any], parameters: int) -> Tolerance:
    """The tolerances of one recorded case (model of ``parameters`` weights), steps derived from its counts."""
    doc = ref["json"]
    if "counts" in doc:  # MIA case
        rank = 1.0 / min(doc["counts"]["members_per_target"])
        ds = doc["meta"]["dataset"]
        acc = 1.0 / min(ds["n_test"], ds["n_train"])
    else:  # inversion case: label accuracy is per update of batch_size images
        rank = 0.0
        acc = 1.0 / doc["invert_metrics"]["spec"]["batch_size"]
    return Tolerance(float32_rtol(parameters), rank, acc)


def _is_rank(key: str) -> bool:
    return key in RANK_KEYS or key.startswith("tpr@")


def _is_acc(key: str) -> bool:
    return key in ACC_KEYS or key.endswith("_acc")


def _leaf_tol(path: tuple[str, ...], ref: float, tol: Tolerance) -> float | None:
    """Allowed |difference| of a JSON float at ``path``; None = not compared."""
    if any(k in SKIP_KEYS for k in path):
        return None
    if any(_is_rank(k) for k in path):
        return tol.rank_step + tol.rtol
    if any(_is_acc(k) for k in path):
        return tol.acc_step + tol.rtol
    return tol.rtol * max(abs(ref), 1.0)


def _same_float(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def compare_json(ref: Any, new: Any, tol: Tolerance | None, path: tuple[str, ...] = ()) -> list[str]:
    """Mismatches between two JSON documents (``tol=None``: exact)."""
    where = "/".join(path) or "<root>"
    if isinstance(ref, dict) and isinstance(new, dict):
        if set(ref) != set(new):
            return [f"{where}: keys differ: missing {sorted(set(ref) - set(new))}, new {sorted(set(new) - set(ref))}"]
        return [m for k in ref for m in compare_json(ref[k], new[k], tol, (*path, str(k)))]
    if isinstance(ref, list) and isinstance(new, list):
        if len(ref) != len(new):
            return [f"{where}: length {len(new)} != recorded {len(ref)}"]
        return [m for i, (a, b) in enumerate(zip(ref, new)) for m in compare_json(a, b, tol, (*path, str(i)))]
    if isinstance(ref, float) and isinstance(new, float):
        if _same_float(ref, new):
            return []
        allowed = None if tol is None else _leaf_tol(path, ref, tol)
        if tol is not None and (allowed is None or abs(new - ref) <= allowed):
            return []
        return [f"{where}: {new!r} != recorded {ref!r}" + ("" if tol is None else f" (allowed ±{allowed:.3g})")]
    if tol is not None and _is_member_count(path, ref, new):
        return []
    if type(ref) is not type(new) or ref != new:
        return [f"{where}: {new!r} != recorded {ref!r}"]
    return []


def _is_member_count(path: tuple[str, ...], ref: Any, new: Any) -> bool:
    """An attack's members flagged at an FPR (``counts/tpr@*/0``) one member off: the integer twin of the rank step."""
    if not (isinstance(ref, int) and isinstance(new, int)) or len(path) < 3:
        return False
    return path[-3] == "counts" and _is_rank(path[-2]) and path[-1] == "0" and abs(ref - new) <= 1


def _array_diff(name: str, ref: np.ndarray, new: np.ndarray, tol: Tolerance | None) -> list[str]:
    if ref.dtype != new.dtype or ref.shape != new.shape:
        return [f"array {name}: {new.dtype}{new.shape} != recorded {ref.dtype}{ref.shape}"]
    if tol is None:
        return [] if ref.tobytes() == new.tobytes() else [f"array {name}: not bit-identical ({_max_diff(ref, new)})"]
    r, n = ref.astype(np.float64), new.astype(np.float64)
    if not np.array_equal(np.isnan(r), np.isnan(n)):
        return [f"array {name}: NaN positions differ"]
    finite = ~np.isnan(r)
    scale = float(np.max(np.abs(r[finite]), initial=0.0))
    allowed = tol.acc_step + tol.rtol if name.endswith("_acc") else tol.rtol * scale
    worst = float(np.max(np.abs(r[finite] - n[finite]), initial=0.0))
    return [] if worst <= allowed else [f"array {name}: max |diff| {worst:.3g} > allowed {allowed:.3g}"]


def _max_diff(ref: np.ndarray, new: np.ndarray) -> str:
    if not np.issubdtype(ref.dtype, np.floating):
        return f"{int(np.sum(ref != new))} entries differ"
    d = np.abs(ref.astype(np.float64) - new.astype(np.float64))
    return f"max |diff| {np.nanmax(d):.3g}"


def compare_hashes(ref: dict[str, dict], new: dict[str, dict], exact: bool) -> list[str]:
    if set(ref) != set(new):
        return [f"arrays differ: missing {sorted(set(ref) - set(new))}, new {sorted(set(new) - set(ref))}"]
    out = []
    for name, r in ref.items():
        n = new[name]
        if (r["dtype"], r["shape"]) != (n["dtype"], n["shape"]):
            out.append(f"hash {name}: {n['dtype']}{n['shape']} != recorded {r['dtype']}{r['shape']}")
        elif r["sha256"] != n["sha256"] and (exact or not _is_float_dtype(r["dtype"])):
            out.append(f"hash {name}: full array differs from the recorded one")
    return out


def _is_float_dtype(dtype: str) -> bool:
    return np.dtype(dtype).kind in "fc"


def compare_case(ref: dict[str, Any], new: dict[str, Any], tol: Tolerance | None) -> list[str]:
    """Every mismatch between a recorded case and a re-run (``tol=None``: bit-identical)."""
    exact = tol is None
    out = compare_hashes(ref["hashes"], new["hashes"], exact)
    if set(ref["arrays"]) != set(new["arrays"]):
        out.append(f"stored arrays differ: {sorted(set(ref['arrays']) ^ set(new['arrays']))}")
    for name in sorted(set(ref["arrays"]) & set(new["arrays"])):
        out += _array_diff(name, ref["arrays"][name], new["arrays"][name], tol)
    return out + compare_json(ref["json"], new["json"], tol)


def max_differences(ref: dict[str, Any], new: dict[str, Any]) -> dict[str, float]:
    """Largest differences (for reports): arrays relative to their scale, JSON floats absolute."""
    arrays = 0.0
    for name, r in ref["arrays"].items():
        d = np.abs(r.astype(np.float64) - new["arrays"][name].astype(np.float64))
        scale = float(np.nanmax(np.abs(r), initial=0.0)) or 1.0
        arrays = max(arrays, float(np.nanmax(d, initial=0.0)) / scale)
    leaves: list[float] = []
    _float_diffs(ref["json"], new["json"], leaves)
    hashes = sum(r["sha256"] != new["hashes"][k]["sha256"] for k, r in ref["hashes"].items())
    return {"array_rel_to_scale": arrays, "json_abs": max(leaves, default=0.0), "hashes_differing": hashes}


def _float_diffs(ref: Any, new: Any, out: list[float]) -> None:
    if isinstance(ref, dict):
        for k in ref:
            _float_diffs(ref[k], new[k], out)
    elif isinstance(ref, list):
        for a, b in zip(ref, new):
            _float_diffs(a, b, out)
    elif isinstance(ref, float) and not _same_float(ref, new):
        out.append(abs(ref - new))
