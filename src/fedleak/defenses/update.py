"""Defenses on the uploaded update Δ = θ_global − θ_local: ``perturb``, ``sparse``, ``quant``.

All three act in ``transform_update``; the engine then uploads θ_global − Δ', and every signal (loss and gradient)
is computed on that uploaded model (spec W4 fixed).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from fedleak.config import ConfigError, ExperimentConfig
from fedleak.defenses.base import Defense, UpdateContext, register_defense
from fedleak.defenses.dp_accounting import ACCOUNTANTS, accountant_label, client_level_epsilon, fixed_size_epsilon
from fedleak.defenses.params import (
    FLOAT,
    INT,
    STR,
    DefenseParams,
    Field,
    between,
    non_negative,
    param,
    parse_params,
    positive,
)
from fedleak.models.functional import largest_k_mask
from fedleak.seeding import participation_counts as participation_counts_per_client

Delta = dict[str, torch.Tensor]


def defended_clients(cfg: ExperimentConfig | None) -> list[int]:
    if cfg is None:
        return []
    if cfg.defense.clients is not None:
        return sorted(set(cfg.defense.clients))
    return list(range(cfg.partition.num_clients))


def max_participation(cfg: ExperimentConfig | None, rnd: int) -> int:
    """Largest number of rounds 0..rnd in which any defended client took part (the most exposed client).

    Computed from the engine's deterministic client sampling, so it needs no state and survives a resume.
    """
    if cfg is None:
        return rnd + 1
    if cfg.fl.participation >= 1.0:
        return rnd + 1
    counts = participation_counts_per_client(cfg, rnd + 1)
    return max((int(counts[k]) for k in defended_clients(cfg)), default=0)


def global_norm(delta: Delta) -> torch.Tensor:
    return torch.sqrt(sum((v.double() ** 2).sum() for v in delta.values()))


# --------------------------------------------------------------------------------------------- perturb


class PerturbParams(DefenseParams):
    sigma: param(FLOAT, check=non_negative) = Field(
        0.1,
        description="raw: noise std added to every uploaded parameter; dp: noise multiplier z (std z·C)",
    )
    clip: param(FLOAT, check=positive, optional=True) = Field(
        None,
        description="L2 bound C of the whole update; null = the original's unclipped noise (no DP)",
    )
    delta: param(FLOAT, check=between(0, 1, True, True)) = Field(
        1e-5,
        description="δ of the reported (ε, δ) (dp mode)",
    )
    accountant: param(STR, choices=ACCOUNTANTS) = Field(
        "rdp", description="dp-accounting's rdp (milliseconds) or pld (tighter by 5-15%, seconds at large ε)"
    )


class Perturb(Defense):
    """Gaussian noise on the uploaded model.

    * ``clip: null`` (paper-compatible, the original's ``--dp --sigma``): ``θ_up = θ_local + N(0, σ²)`` on every
      trainable parameter, i.e. ``Δ' = Δ − n``. Unbounded sensitivity, so no (ε, δ) is reported.
    * ``clip: C`` (client-level DP, DP-FedAvg style with local noise): ``Δ' = Δ·min(1, C/‖Δ‖) + N(0, (σC)²)``, ‖·‖
      the L2 norm over all trainable tensors together. Each round is a Gaussian mechanism with noise multiplier σ on
      the client's whole data set (the server sees every individual upload, so no amplification by client
      sampling is claimed); (ε, δ) composes over the rounds the most exposed defended client took part in.
      With ``fl.participation < 1`` the record also holds ``epsilon_aggregate``: the bound against an observer
      of the global models only, amplified by the engine's fixed-size client sampling (:func:`aggregate_epsilon`).
    """

    name = "perturb"

    def __init__(self, params: dict[str, Any] | None = None, cfg: ExperimentConfig | None = None) -> None:
        super().__init__(params, cfg)
        self.p = parse_params("perturb", params, PerturbParams)

    def transform_update(
        self, delta: Delta, gen: torch.Generator | None, ctx: UpdateContext | None = None
    ) -> Delta:
        sigma, clip = self.p["sigma"], self.p["clip"]
        if clip is None:
            return {n: v - sigma * torch.randn(v.shape, generator=gen, dtype=v.dtype) for n, v in delta.items()}
        norm = float(global_norm(delta))
        scale = min(1.0, clip / norm) if norm > 0 else 1.0
        return {
            n: v * scale + (sigma * clip) * torch.randn(v.shape, generator=gen, dtype=v.dtype)
            for n, v in delta.items()
        }

    def privacy_spent(self, rnd: int) -> dict[str, Any] | None:
        if self.p["clip"] is None:
            return None
        steps = max_participation(self.cfg, rnd)
        sigma, delta = self.p["sigma"], self.p["delta"]
        eps = client_level_epsilon(1.0, sigma, steps, delta, self.p["accountant"]) if sigma > 0 else math.inf
        out: dict[str, Any] = {
            "epsilon": eps,
            "delta": delta,
            "level": "client",
            "noise_multiplier": sigma,
            "clip": self.p["clip"],
            "steps": steps,
            "accountant": accountant_label(self.p["accountant"]),
            # the server sees each upload: one Gaussian mechanism per round taken part in, no amplification
            "sampling": "none",
            "proven_bound": True,
        }
        agg = aggregate_epsilon(self.cfg, sigma, rnd + 1, delta, self.client_weights)
        if agg is not None:
            out.update(agg)
        return out


def aggregate_epsilon(
    cfg: ExperimentConfig | None, sigma: float, rounds: int, delta: float, weights: np.ndarray | None = None
) -> dict[str, Any] | None:
    """Client-level ε against an observer of the global models only (not the server), with ``m`` of ``K`` clients
    drawn without replacement each round (``fl.participation < 1``; None otherwise).

    Relation: replace one client's data (``K`` and the FedAvg weights ``w`` — the client data sizes — public).
    Replacing client k's data moves its clipped update by at most ``2C``, i.e. the global model by ``2C·w̃_k``
    (``w̃ = w / Σ_S w``), while the global model carries the noise ``Σ_{j∈S} w̃_j N(0, (σC)²)`` of the defended
    clients of the round's subset S. So each round is a Gaussian mechanism with noise multiplier
    ``z = σ·sqrt(Σ_{j∈S, defended} w_j²) / (2 w_k) >= (σ/2)·sqrt(1 + (m_d − 1)·(w_min/w_max)²)``, ``m_d`` the
    number of defended clients every subset of m holds, ``w_min/w_max`` over the defended clients (without
    ``weights``: ``m_d = 1``, the client's own noise only), on a uniformly drawn m-subset: dp-accounting's
    ``SampledWithoutReplacementDpEvent``, RDP, replace-one, composed over all rounds.
    """
    if cfg is None:
        return None
    K = cfg.partition.num_clients
    m = max(int(round(cfg.fl.participation * K)), 1)  # as seeding.participants draws them
    if m >= K:
        return None
    defended = defended_clients(cfg)
    m_noise = max(1, m - (K - len(defended))) if weights is not None else 1
    ratio = 1.0
    if weights is not None and m_noise > 1:
        w = np.asarray(weights, dtype=np.float64)[defended]
        ratio = float(w.min() / w.max())
    z = (sigma / 2) * math.sqrt(1 + (m_noise - 1) * ratio**2)
    eps = fixed_size_epsilon(K, m, z, rounds, delta) if sigma > 0 else math.inf
    return {
        "epsilon_aggregate": eps,
        "aggregate_accountant": accountant_label("rdp"),
        "aggregate_sampling": f"{m} of {K} clients per round without replacement (replace-one relation)",
        "aggregate_noise_multiplier": z,
    }


# ---------------------------------------------------------------------------------------------- sparse


SPARSE_SCOPES = ("layer", "global")


class SparseParams(DefenseParams):
    p: param(FLOAT, check=between(0, 1)) = Field(
        0.9,
        description="fraction of entries dropped (the original's d_scale); keeps int(n·(1−p))",
    )
    scope: param(STR, choices=SPARSE_SCOPES) = Field(
        "layer",
        description="layer: top-k per tensor; global: top-k over all trainable entries",
    )
    min_numel: param(INT, check=non_negative) = Field(
        1000,
        description="layer scope: tensors with at most this many entries stay dense",
    )


class Sparse(Defense):
    """Top-k sparsification of Δ.

    * ``scope: layer`` (paper-compatible): every tensor with more than ``min_numel`` entries keeps its
      ``int(numel·(1−p))`` largest-|Δ| entries and zeroes the rest; smaller tensors (biases) stay dense.
      (The original keeps ties at the k-th magnitude; here exactly k entries survive.)
    * ``scope: global``: one top-``int(P·(1−p))`` over all P trainable entries together.
    """

    name = "sparse"

    def __init__(self, params: dict[str, Any] | None = None, cfg: ExperimentConfig | None = None) -> None:
        super().__init__(params, cfg)
        self.p = parse_params("sparse", params, SparseParams)

    def transform_update(
        self, delta: Delta, gen: torch.Generator | None, ctx: UpdateContext | None = None
    ) -> Delta:
        keep = 1.0 - self.p["p"]
        if self.p["scope"] == "layer":
            out = {}
            for n, v in delta.items():
                if v.numel() <= self.p["min_numel"]:
                    out[n] = v.clone()
                else:
                    out[n] = torch.where(largest_k_mask(v, int(v.numel() * keep)), v, torch.zeros_like(v))
            return out
        names = list(delta)
        flat = torch.cat([delta[n].reshape(-1) for n in names])
        mask = largest_k_mask(flat, int(flat.numel() * keep))
        flat = torch.where(mask, flat, torch.zeros_like(flat))
        out, off = {}, 0
        for n in names:
            size = delta[n].numel()
            out[n] = flat[off : off + size].view(delta[n].shape).clone()
            off += size
        return out


# ----------------------------------------------------------------------------------------------- quant


ROUNDINGS = ("floor", "stochastic")


class QuantParams(DefenseParams):
    bits: param(INT, check=between(1, 24)) = Field(8, description="b: 2^b steps between the tensor's min and max")
    rounding: param(STR, choices=ROUNDINGS) = Field(
        "floor",
        description="floor (the original, biased) or stochastic (unbiased)",
    )


def quantize(v: torch.Tensor, bits: int, rounding: str, gen: torch.Generator | None = None) -> torch.Tensor:
    """Per-tensor b-bit quantisation on the grid ``min + j·δ``, ``δ = (max − min)/2^b``, j = 0..2^b.

    floor: ``j = floor((v − min)/δ)`` (the original; max maps to j = 2^b, so 2^b + 1 levels);
    stochastic: ``j = floor(u) + Bernoulli(u − floor(u))`` with ``u = (v − min)/δ``, so E[q] = v.
    """
    lo, hi = v.min(), v.max()
    if not bool(hi > lo):
        return v.clone()
    step = (hi - lo) / (2**bits)
    u = ((v - lo) / step).clamp(0, 2**bits)
    j = torch.floor(u)
    if rounding == "stochastic":
        frac = u - j
        j = j + (torch.rand(v.shape, generator=gen, dtype=v.dtype) < frac).to(v.dtype)
    return (j.clamp(0, 2**bits) * step + lo).to(v.dtype)


class Quant(Defense):
    """b-bit quantisation of every tensor of Δ (all sizes, as the original)."""

    name = "quant"

    def __init__(self, params: dict[str, Any] | None = None, cfg: ExperimentConfig | None = None) -> None:
        super().__init__(params, cfg)
        self.p = parse_params("quant", params, QuantParams)

    def transform_update(
        self, delta: Delta, gen: torch.Generator | None, ctx: UpdateContext | None = None
    ) -> Delta:
        return {n: quantize(v, self.p["bits"], self.p["rounding"], gen) for n, v in delta.items()}


def _factory(cls):
    def make(params: dict[str, Any], cfg: ExperimentConfig) -> Defense:
        return cls(params, cfg)

    return make


register_defense("perturb", _factory(Perturb))
register_defense("sparse", _factory(Sparse))
register_defense("quant", _factory(Quant))

__all__ = ["Perturb", "Sparse", "Quant", "aggregate_epsilon", "quantize", "global_norm", "max_participation",
           "ConfigError"]
