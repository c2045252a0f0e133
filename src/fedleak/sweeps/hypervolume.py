"""Hypervolume of a privacy-utility trade-off, as in the FedMIA paper's Table 2 (spec §8.3).

Each run of a defense gives one point ``(a, e)``: ``a`` = the attack's TPR at the headline FPR (default 0.1%;
privacy leakage, in [0, 1]) and ``e`` = the global model's test error (utility loss, in [0, 1]). Both are "smaller
is better" for the defender. With reference point ``r = (1, 1)`` (leakage 1, utility loss 100%):

    HV(P) = area( ∪_{(a, e) ∈ P} [a, 1] × [e, 1] )

the area of the part of the unit square that some point of P dominates (weakly). Only the Pareto front of P
contributes; points outside the square are clipped to it. Sorting the front by ``a`` ascending (then ``e`` is
descending), ``HV = Σ_j (a_{j+1} − a_j)(1 − e_j)`` with ``a_{J+1} = 1``.

A larger HV means the defense reaches a better privacy-utility trade-off against that attack, so **for a fixed
defense, a smaller HV means a more effective attack** — the convention of the paper's Table 2 caption.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np


def pareto_front(points: Iterable[tuple[float, float]]) -> np.ndarray:
    """Non-dominated points (minimisation of both coordinates), sorted by the first coordinate."""
    p = np.asarray(list(points), dtype=np.float64).reshape(-1, 2)
    p = p[np.isfinite(p).all(1)]
    if len(p) == 0:
        return p
    order = np.lexsort((p[:, 1], p[:, 0]))  # by a, then e
    front, best_e = [], np.inf
    for a, e in p[order]:
        if e < best_e:
            front.append((a, e))
            best_e = e
    return np.asarray(front)


def hypervolume(points: Iterable[tuple[float, float]], ref: tuple[float, float] = (1.0, 1.0)) -> float:
    """Area dominated by ``points`` (both coordinates minimised) inside the box below ``ref``."""
    p = np.asarray(list(points), dtype=np.float64).reshape(-1, 2)
    p = p[np.isfinite(p).all(1)]
    if len(p) == 0:
        return 0.0
    p = np.minimum(np.maximum(p, 0.0), np.asarray(ref))
    front = pareto_front(p)
    a = np.append(front[:, 0], ref[0])
    return float(np.sum((a[1:] - a[:-1]) * (ref[1] - front[:, 1])))


__all__ = ["hypervolume", "pareto_front"]
