"""Client-level one-shot privacy estimate from random canary clients.

Reference: Andrew, Kairouz, Oh, Oprea, McMahan & Suriyakumar, "One-shot Empirical Privacy Estimation for
Federated Learning", ICLR 2024.

**Canaries.** Canary ``i`` is a client whose update is a fixed random direction: ``c_i = C · g_i / ‖g_i‖₂`` with
``g_i ~ N(0, I_P)`` (P = number of model parameters, C = the clip norm, so a canary is a maximal-norm clipped
update). Its direction is drawn from ``np.random.default_rng(SeedSequence([seed, i, TAG]))``, so any canary can be
regenerated from ``(seed, i)`` alone and never has to be stored (:func:`canary_direction`, defined with the
engine's canary clients in :mod:`fedleak.fl.canary_clients` and re-exported here).

**Statistic.** With Δ the final model delta (θ_final − θ_initial, flattened), the statistic of canary ``i`` is the
cosine ``cos(Δ, c_i) = <Δ, c_i> / (‖Δ‖ ‖c_i‖)`` (:func:`canary_cosines`). *Inserted* canaries took part in
training; *held-out* canaries were drawn the same way and never inserted. In high dimension a held-out cosine is
≈ N(0, 1/P), and under the Gaussian mechanism an inserted one is ≈ N(μ, σ²) with μ/σ the mechanism's
sensitivity-to-noise ratio (the paper's analysis of the Gaussian mechanism in high dimension).

**Estimate** (:func:`one_shot_epsilon`). Fit ``N(μ_in, s_in²)`` to the inserted cosines and ``N(μ_out, s_out²)``
to the held-out ones (sample mean, sample variance with ddof = 1); with the pooled variance
``σ² = ((n_in − 1) s_in² + (n_out − 1) s_out²) / (n_in + n_out − 2)`` the estimate is the ε at δ of the Gaussian
mechanism that separates ``N(μ_out, σ²)`` from ``N(μ_in, σ²)``, i.e. of μ-GDP with ``μ = |μ_in − μ_out| / σ``
(:func:`fedleak.metrics.epsilon.gdp_epsilon`). The paper compares the inserted fit with a null of mean 0; here the
null mean is the held-out sample's, which also absorbs any bias of the model delta towards random directions.

This is an *estimate*, not a bound: it is exact only when the cosines are Gaussian with equal variances (the
Gaussian mechanism in high dimension). It measures client-level privacy of the final model against an adversary
who sees only Δ. :func:`one_shot_interval` adds the sampling error of the fit: one-sided limits at a confidence
level from the normal approximation of the standardised mean gap, ``SE(μ̂)² = 1/n_in + 1/n_out + μ̂²/(2(n_in +
n_out))`` (Hedges & Olkin 1985), mapped through the increasing ``μ ↦ ε``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable

import numpy as np
from scipy.stats import norm

from fedleak.errors import FedleakError
from fedleak.fl.canary_clients import canary_cosines, canary_direction
from fedleak.metrics.epsilon import gdp_epsilon


def canary_directions(seed: int, indices: Iterable[int], dim: int, clip_norm: float = 1.0) -> np.ndarray:
    """Stacked canaries, shape ``(len(indices), dim)`` (for small P; use :func:`canary_cosines` otherwise)."""
    rows = [canary_direction(seed, i, dim, clip_norm) for i in indices]
    return np.stack(rows) if rows else np.zeros((0, dim))


@dataclass(frozen=True)
class OneShotEstimate:
    epsilon: float
    delta: float
    mu_in: float
    mu_out: float
    sigma: float  # pooled standard deviation
    gdp_mu: float  # |mu_in − mu_out| / sigma
    n_in: int
    n_out: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def one_shot_epsilon(cos_in: np.ndarray, cos_out: np.ndarray, delta: float) -> OneShotEstimate:
    """ε at δ of the Gaussian mechanism fitted to inserted vs held-out canary cosines (module docstring)."""
    a = np.asarray(cos_in, dtype=np.float64).ravel()
    b = np.asarray(cos_out, dtype=np.float64).ravel()
    if a.size < 2 or b.size < 2:
        raise FedleakError(f"need at least 2 inserted and 2 held-out canary cosines (got {a.size} and {b.size})")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise FedleakError("canary cosines must be finite numbers")
    pooled = ((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1)) / (a.size + b.size - 2)
    sigma = float(np.sqrt(pooled))
    gap = abs(float(a.mean()) - float(b.mean()))
    if sigma == 0.0:
        mu = 0.0 if gap == 0.0 else np.inf
    else:
        mu = gap / sigma
    return OneShotEstimate(gdp_epsilon(mu, delta), float(delta), float(a.mean()), float(b.mean()), sigma,
                           float(mu), int(a.size), int(b.size))


def one_shot_interval(est: OneShotEstimate, confidence: float) -> tuple[float, float]:
    """(lower, upper) one-sided limits on the one-shot ε at ``confidence`` each (module docstring)."""
    if not 0.0 < confidence < 1.0:
        raise FedleakError(f"confidence must lie in (0, 1), got {confidence}")
    mu, n = est.gdp_mu, est.n_in + est.n_out
    if not np.isfinite(mu):
        return float(gdp_epsilon(mu, est.delta)), float("inf")
    se = float(np.sqrt(1 / est.n_in + 1 / est.n_out + mu * mu / (2 * n)))
    z = float(norm.ppf(confidence))
    return gdp_epsilon(max(0.0, mu - z * se), est.delta), gdp_epsilon(mu + z * se, est.delta)


__all__ = [
    "OneShotEstimate",
    "one_shot_interval",
    "canary_cosines",
    "canary_direction",
    "canary_directions",
    "one_shot_epsilon",
]
