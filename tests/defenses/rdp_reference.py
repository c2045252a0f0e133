"""A hand-written Rényi-DP accountant for the (sub)sampled Gaussian mechanism — the tests' cross-check reference.

fedleak accounts with Google's ``dp-accounting`` (:mod:`fedleak.defenses.dp_accounting`); this independent
implementation (once fedleak's own accountant) stays here only to check that library's numbers
(``tests/defenses/test_dp_accounting.py``) and is itself checked against Opacus and numerical integration
(``tests/defenses/test_defense_accountant.py``).

Mechanism: each step releases ``sum of clipped contributions + N(0, (σ·C)²)`` where every record (a sample for
DP-SGD, a whole client for client-level DP) is included independently with probability ``q`` and contributes at
most ``C`` in L2 norm. Its RDP of order α is ``ε(α) = log(A_α) / (α − 1)`` with

    A_α = E_{z ~ N(0, σ²)} [ ((1 − q) + q · exp((2z − 1) / (2σ²)))^α ]

(Mironov, Talwar & Zhang 2019, "Rényi Differential Privacy of the Sampled Gaussian Mechanism"):

* ``q = 1``: the plain Gaussian mechanism, ``ε(α) = α / (2σ²)``.
* integer α: the binomial expansion is finite,
  ``A_α = Σ_{k=0..α} C(α,k) (1−q)^{α−k} q^k exp((k² − k) / (2σ²))``.
* fractional α: split the integral at ``z₀ = σ² log(1/q − 1) + 1/2``, where ``q·r(z) = 1 − q`` (r the likelihood
  ratio); below ``z₀`` expand in powers of ``q r / (1−q)``, above it in powers of ``(1−q) / (q r)``. Each term is a
  Gaussian moment over a half line:

  ``A_α = Σ_k C(α,k) q^k (1−q)^{α−k} e^{(k²−k)/(2σ²)} Φ((z₀ − k)/σ)
        + Σ_k C(α,k) q^{α−k} (1−q)^k e^{((α−k)²−(α−k))/(2σ²)} Φ((α − k − z₀)/σ)``

  with generalised binomial coefficients (signs alternate once ``k > α``); both series converge geometrically.

RDP composes additively over steps. The conversion to (ε, δ) is the tighter bound of Balle et al. 2020
(Prop. 12; also Canonne, Kamath & Steinke 2020):
``ε = min_α [ ε_RDP(α) + log((α − 1)/α) − (log δ + log α)/(α − 1) ]``, over the same grid of orders Opacus uses by
default (so that both report the same number; ``tests/defenses/test_defense_accountant.py`` checks this).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.special import gammaln, log_ndtr

DEFAULT_ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))


def _log_binom_row(alpha: float, kmax: int) -> tuple[np.ndarray, np.ndarray]:
    """(log |C(α, k)|, sign C(α, k)) for k = 0..kmax, real α >= 0 (C(α,k) = α(α−1)…(α−k+1)/k!)."""
    k = np.arange(kmax + 1, dtype=np.float64)
    fac = alpha - k[:-1]  # factors α − j, j = 0..kmax−1
    with np.errstate(divide="ignore"):
        lg = np.concatenate([[0.0], np.cumsum(np.log(np.abs(fac)))]) - gammaln(k + 1)
    sign = np.concatenate([[1.0], np.cumprod(np.sign(fac))])
    return lg, sign


def _signed_logsumexp(logs: np.ndarray, signs: np.ndarray) -> float:
    keep = (signs != 0) & np.isfinite(logs)
    if not keep.any():
        return -math.inf
    lg, sg = logs[keep], signs[keep]
    m = float(lg.max())
    s = float(np.sum(sg * np.exp(lg - m)))
    return m + math.log(s) if s > 0 else -math.inf  # s <= 0 only from rounding of a ~0 value


def _log_a_int(q: float, sigma: float, alpha: int) -> float:
    lb, sg = _log_binom_row(alpha, alpha)
    k = np.arange(alpha + 1, dtype=np.float64)
    logs = lb + k * math.log(q) + (alpha - k) * math.log1p(-q) + (k * k - k) / (2 * sigma**2)
    return _signed_logsumexp(logs, sg)


def _log_a_frac(q: float, sigma: float, alpha: float, tol: float = 32.0) -> float:
    """Both series of the fractional case, truncated once a whole block of terms is below e^-tol of the largest.

    The terms of the second series decay only polynomially (like k^-(α+2)), with alternating signs, so the
    truncation error is below the first omitted term; blocks double in length until that term is negligible.
    """
    z0 = sigma**2 * math.log(1 / q - 1) + 0.5
    lq, l1q = math.log(q), math.log1p(-q)
    kmax = 256
    while True:
        lb, sg = _log_binom_row(alpha, kmax)
        k = np.arange(kmax + 1, dtype=np.float64)
        m = alpha - k
        t0 = lb + k * lq + m * l1q + (k * k - k) / (2 * sigma**2) + log_ndtr((z0 - k) / sigma)
        t1 = lb + m * lq + k * l1q + (m * m - m) / (2 * sigma**2) + log_ndtr((m - z0) / sigma)
        logs = np.concatenate([t0, t1])
        top = float(np.max(logs))
        tail = max(float(t0[-1]), float(t1[-1]))
        if tail < top - tol or kmax >= 2**22:
            return _signed_logsumexp(logs, np.concatenate([sg, sg]))
        kmax *= 4


def rdp_sampled_gaussian(q: float, sigma: float, orders: tuple[float, ...] | list[float] = DEFAULT_ORDERS) -> np.ndarray:
    """RDP ε(α) of one step of the sampled Gaussian mechanism, for every order in ``orders``."""
    if not 0 <= q <= 1:
        raise ValueError(f"sample rate q must lie in [0, 1], got {q}")
    if sigma < 0:
        raise ValueError(f"noise multiplier must be >= 0, got {sigma}")
    out = np.empty(len(orders))
    for i, a in enumerate(orders):
        if a <= 1:
            raise ValueError(f"RDP orders must be > 1, got {a}")
        if q == 0:
            out[i] = 0.0
        elif sigma == 0:
            out[i] = math.inf
        elif q == 1:
            out[i] = a / (2 * sigma**2)
        elif float(a).is_integer():
            out[i] = _log_a_int(q, sigma, int(a)) / (a - 1)
        else:
            out[i] = _log_a_frac(q, sigma, float(a)) / (a - 1)
    return out


def eps_from_rdp(
    rdp: np.ndarray, delta: float, orders: tuple[float, ...] | list[float] = DEFAULT_ORDERS
) -> tuple[float, float]:
    """(ε, best order) for a total RDP curve, with the conversion of Balle et al. 2020."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")
    a = np.asarray(orders, dtype=np.float64)
    r = np.asarray(rdp, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        eps = r + np.log((a - 1) / a) - (math.log(delta) + np.log(a)) / (a - 1)
    if np.all(~np.isfinite(eps)):
        return math.inf, math.nan
    i = int(np.nanargmin(np.where(np.isfinite(eps), eps, np.inf)))
    return max(0.0, float(eps[i])), float(a[i])


@dataclass
class RDPAccountant:
    """Accumulates steps ``(q, σ, count)`` and reports (ε, δ)."""

    orders: tuple[float, ...] = DEFAULT_ORDERS
    history: list[tuple[float, float, int]] = field(default_factory=list)

    def step(self, q: float, sigma: float, steps: int = 1) -> None:
        if steps > 0:
            self.history.append((float(q), float(sigma), int(steps)))

    def rdp(self) -> np.ndarray:
        total = np.zeros(len(self.orders))
        for q, s, n in self.history:
            total += n * rdp_sampled_gaussian(q, s, self.orders)
        return total

    def epsilon(self, delta: float) -> float:
        if not self.history:
            return 0.0
        return eps_from_rdp(self.rdp(), delta, self.orders)[0]


def epsilon(q: float, sigma: float, steps: int, delta: float, orders: tuple[float, ...] = DEFAULT_ORDERS) -> float:
    """ε after ``steps`` identical steps of the sampled Gaussian mechanism (δ given)."""
    if steps <= 0:
        return 0.0
    return eps_from_rdp(steps * rdp_sampled_gaussian(q, sigma, orders), delta, orders)[0]
