"""(ε, δ) of the subsampled Gaussian mechanism with Google's ``dp-accounting`` library (RDP and PLD): fedleak's
only privacy accountant (``dpsgd`` and ``perturb`` with ``clip`` call it through their ``accountant`` parameter).

Mechanism (one step): every record — a sample for DP-SGD, a whole client for client-level DP — is included
independently with probability ``q`` (Poisson sampling), each included record contributes a vector clipped to L2
norm ``C``, and ``sum + N(0, (σ·C)² I)`` is released; ``steps`` such releases compose adaptively. Neighbouring
inputs differ by adding or removing one record (``NeighboringRelation.ADD_OR_REMOVE_ONE``).

Accountants (``ACCOUNTANTS``; :func:`accountant_label` names them in the ``privacy`` records):

* ``"rdp"`` — Rényi DP of the sampled Gaussian mechanism (Mironov, Talwar & Zhang 2019), converted to (ε, δ) with
  Balle et al. 2020 (Prop. 12), over Opacus's order grid (:data:`DEFAULT_ORDERS`). Milliseconds at any ε. On
  integer orders it agrees to 1e-9 with the independent hand-written accountant kept in
  ``tests/defenses/rdp_reference.py``; on fractional orders dp-accounting (0.6) sums the series without the
  alternating signs of the generalised binomial coefficients — an upper bound, and orders whose sum does not
  converge are dropped — so its ε is slightly larger (≤ 1% in the tests).
* ``"pld"`` — privacy-loss distributions (Koskela, Jälkö & Honkela 2020; as implemented by dp-accounting),
  pessimistically discretised with interval ``pld_discretization``: a numerically tight upper bound on ε, 5–15%
  below the RDP value at moderate ε (tests: within 0.03 of Opacus's PRV accountant, and of the exact ε for q = 1).
  Its cost grows with ε: ~0.1 s for ε ≈ 25, ~1 s for ε ≈ 300, ~50 s for ε ≈ 7,000 (discretisation 1e-3).

``q = 1`` is the plain Gaussian mechanism: the composition of ``T`` releases is then exactly μ-GDP with
``μ = √T / σ`` (``tests/defenses/test_dp_accounting.py`` checks both accountants against that closed form).

Client-level DP (:func:`client_level_epsilon`) is the same mechanism with clients as records: the server adds
``N(0, (σC)²)`` to the sum of the clipped updates of the clients that take part, each independently with
probability ``q`` per round (DP-FedAvg, McMahan et al. 2018). When the noise is instead added to each upload and
the server sees individual uploads (fedleak's ``perturb`` with ``clip``), no sampling amplification applies:
call it with ``q = 1`` and ``rounds`` = the number of rounds the client took part in.

Fixed-size client sampling (fedleak draws ``m`` of ``K`` clients without replacement every round) is not Poisson
sampling: :func:`fixed_size_epsilon` accounts for it with dp-accounting's ``SampledWithoutReplacementDpEvent``,
which exists only for the RDP accountant and only under the replace-one relation (``K`` public; Wang, Balle &
Kasiviswanathan 2019, Thm. 27).
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from functools import lru_cache
from typing import Iterator, Sequence

ACCOUNTANTS: tuple[str, ...] = ("rdp", "pld")
#: RDP orders: Opacus's default grid, so that an RDP ε here is the number Opacus reports for the same steps.
DEFAULT_ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))
_LABELS = {"rdp": "dp-accounting RDP", "pld": "dp-accounting PLD"}


def accountant_label(accountant: str) -> str:
    """``"<library> <RDP|PLD>"``: which accountant produced a reported ε (the ``accountant`` key of ``privacy``)."""
    if accountant not in _LABELS:
        raise ValueError(f"unknown accountant {accountant!r}; use one of {', '.join(ACCOUNTANTS)}")
    return _LABELS[accountant]


def _lib():
    try:
        import dp_accounting
    except ImportError as exc:  # a declared dependency; only a broken install gets here
        raise ImportError("the 'dp-accounting' package is missing: pip install dp-accounting") from exc
    return dp_accounting


@contextmanager
def _quiet() -> Iterator[None]:
    """dp-accounting logs (through absl) every RDP order it drops as non-convergent — documented above, and
    repeated every round in a run's terminal; silenced while it computes, restored after."""
    log = logging.getLogger("absl")
    level = log.level
    log.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        log.setLevel(level)


def _check_step(q: float, sigma: float, count: int) -> None:
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"sampling rate q must lie in [0, 1], got {q}")
    if not sigma >= 0.0:
        raise ValueError(f"noise multiplier must be >= 0, got {sigma}")
    if int(count) != count or count < 0:
        raise ValueError(f"number of steps/rounds must be a non-negative integer, got {count}")


def sampled_gaussian_event(q: float, sigma: float, count: int):
    """The ``dp_accounting`` event of ``count`` steps of the Poisson-sampled Gaussian mechanism (σ > 0)."""
    _check_step(q, sigma, count)
    dpa = _lib()
    if q == 0.0 or count == 0:
        return dpa.NoOpDpEvent()
    step = dpa.GaussianDpEvent(float(sigma))
    if q < 1.0:
        step = dpa.PoissonSampledDpEvent(float(q), step)
    return dpa.SelfComposedDpEvent(step, int(count))


def _accountant(accountant: str, pld_discretization: float, replace_one: bool = False):
    dpa = _lib()
    if accountant == "rdp":
        rel = dpa.NeighboringRelation.REPLACE_ONE if replace_one else dpa.NeighboringRelation.ADD_OR_REMOVE_ONE
        return dpa.rdp.RdpAccountant(list(DEFAULT_ORDERS), rel)
    if accountant == "pld":
        if not pld_discretization > 0:
            raise ValueError(f"pld_discretization must be > 0, got {pld_discretization}")
        return dpa.pld.PLDAccountant(value_discretization_interval=pld_discretization)
    raise ValueError(f"unknown accountant {accountant!r}; use one of {', '.join(ACCOUNTANTS)}")


def history_epsilon(
    history: Sequence[tuple[float, float, int]],
    delta: float,
    accountant: str = "pld",
    pld_discretization: float = 1e-4,
) -> float:
    """ε at δ after the steps ``[(q, σ, count), ...]`` (heterogeneous, composed in order)."""
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")
    acc = _accountant(accountant, pld_discretization)
    active = False
    for q, sigma, count in history:
        _check_step(q, sigma, count)
        if q == 0.0 or count == 0:
            continue
        if sigma == 0.0:
            return math.inf  # an un-noised release of a record's contribution
        with _quiet():
            acc.compose(sampled_gaussian_event(q, sigma, count))
        active = True
    if not active:
        return 0.0
    with _quiet():
        return max(0.0, float(acc.get_epsilon(delta)))


@lru_cache(maxsize=1024)  # privacy_spent asks every round; the same (q, σ, steps) recurs
def dpsgd_epsilon(
    q: float, sigma: float, steps: int, delta: float, accountant: str = "pld", pld_discretization: float = 1e-4
) -> float:
    """Sample-level ε of DP-SGD: ``steps`` steps, Poisson sampling rate ``q`` (= B/n), noise multiplier ``σ``."""
    return history_epsilon([(q, sigma, steps)], delta, accountant, pld_discretization)


@lru_cache(maxsize=1024)
def client_level_epsilon(
    q: float, sigma: float, rounds: int, delta: float, accountant: str = "pld", pld_discretization: float = 1e-4
) -> float:
    """Client-level ε of DP-FedAvg: Gaussian noise σ·C on the sum of updates clipped to C, Poisson client
    participation with rate ``q`` per round, ``rounds`` rounds (module docstring for per-upload noise)."""
    return history_epsilon([(q, sigma, rounds)], delta, accountant, pld_discretization)


@lru_cache(maxsize=1024)
def fixed_size_epsilon(population: int, sample_size: int, sigma: float, rounds: int, delta: float) -> float:
    """ε at δ of ``rounds`` Gaussian mechanisms (noise multiplier ``σ`` = noise std / replace-one L2 sensitivity),
    each applied to ``sample_size`` records drawn uniformly without replacement from ``population`` (dp-accounting
    RDP, replace-one relation: the only accountant and relation dp-accounting supports for this sampling)."""
    if int(population) != population or int(sample_size) != sample_size or not 0 < sample_size <= population:
        raise ValueError(f"need integers 0 < sample_size <= population, got {sample_size} of {population}")
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")
    _check_step(1.0, sigma, rounds)
    if rounds == 0:
        return 0.0
    if sigma == 0.0:
        return math.inf
    dpa = _lib()
    step = dpa.SampledWithoutReplacementDpEvent(int(population), int(sample_size), dpa.GaussianDpEvent(float(sigma)))
    acc = _accountant("rdp", 0.0, replace_one=True)
    with _quiet():
        acc.compose(dpa.SelfComposedDpEvent(step, int(rounds)))
        return max(0.0, float(acc.get_epsilon(delta)))


__all__ = [
    "ACCOUNTANTS",
    "DEFAULT_ORDERS",
    "accountant_label",
    "fixed_size_epsilon",
    "client_level_epsilon",
    "dpsgd_epsilon",
    "history_epsilon",
    "sampled_gaussian_event",
]
