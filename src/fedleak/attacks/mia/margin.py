"""Membership attacks on the logit margin, registered into :data:`~fedleak.attacks.mia.attacks.ATTACKS`.

``margin[r, k, n] = φ = logit_y − logsumexp(other logits)`` of candidate n under client k's uploaded model at
round r (LiRA's statistic, Carlini et al. 2022), recorded next to the loss from the same forward
(``signals/compute.py: per_sample_loss_margin``). It carries the same ordering information as the loss for one
sample (``CE = softplus(−φ)``, a decreasing function), but it does not saturate: a confidently fitted sample has
loss ≈ 0 whatever its confidence, while φ keeps growing. That matters where scores are *compared across models*
(FedMIA's Gaussian null over the other clients' values, averages over rounds), not for one model's ranking.

Higher φ = more confident = member, so no sign flip:

* ``blackbox-margin``     φ[r, t] at one round (ranks as ``blackbox-loss`` up to the float32 loss's ties)
* ``loss-series-margin``  mean over the target's recorded rounds of φ[r, t]
* ``fedmia-i-margin``     FedMIA-I's one-tailed test with m = φ instead of −loss (same options: aggregation, ddof,
  eps, outlier_filter, robust)

A run recorded before margins existed has no ``margin`` array: these attacks then raise a one-line StoreError
saying to re-record, and "all attacks" (``attacks.runnable_names``) leaves them out.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedleak.attacks.mia.attacks import ATTACKS, AttackInfo, fedmia, resolve_target, round_index
from fedleak.errors import StoreError
from fedleak.signals.loading import Signals

MEASURE = "margin"


def _margin_rows(signals: Signals, rows: np.ndarray | int, target: int) -> np.ndarray:
    return signals.measure(MEASURE)[rows, target].astype(np.float64)


def blackbox_margin(signals: Signals, *, round: int | None = None, target: int | None = None, **_: Any) -> np.ndarray:
    """φ of each candidate under the target's uploaded model at one round."""
    signals.measure(MEASURE)  # a run without margins says so before anything else
    t = resolve_target(signals, target)
    return _margin_rows(signals, round_index(signals, round, t), t)


def loss_series_margin(signals: Signals, *, target: int | None = None, **_: Any) -> np.ndarray:
    """Mean over the target's recorded rounds of φ under its model."""
    signals.measure(MEASURE)
    t = resolve_target(signals, target)
    idx = np.flatnonzero(np.asarray(signals.participated, bool)[:, t])
    if idx.size == 0:
        raise StoreError(f"target client {t} took part in none of the recorded rounds {list(signals.rounds)}")
    return _margin_rows(signals, idx, t).mean(axis=0)


def fedmia_i_margin(signals: Signals, **kw: Any) -> np.ndarray:
    """FedMIA-I on the margin: the one-tailed test of φ against the other clients' φ."""
    kw.pop("round", None)
    return fedmia(signals, MEASURE, **kw)


MARGIN_ATTACKS = (
    AttackInfo("blackbox-margin", "Blackbox-Margin", "single", MEASURE,
               "logit margin under the target's model, one round", blackbox_margin),
    AttackInfo("loss-series-margin", "Loss-Series-Margin", "temporal", MEASURE,
               "mean over rounds of the logit margin", loss_series_margin),
    AttackInfo("fedmia-i-margin", "FedMIA-I-Margin", "fedmia", MEASURE,
               "one-tailed test of the logit margin against the other clients", fedmia_i_margin),
)
for _info in MARGIN_ATTACKS:
    if _info.name not in ATTACKS:  # a module re-import (tests reloading) must not register twice
        ATTACKS.add(_info.name, _info)


__all__ = ["MARGIN_ATTACKS", "blackbox_margin", "fedmia_i_margin", "loss_series_margin"]
