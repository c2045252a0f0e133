"""``dpsgd``: local DP-SGD (Abadi et al. 2016) in place of each client's optimisation step.

Per batch of B samples: per-sample gradients g_i (``torch.func.vmap(grad)``, the same route as the signal code),
each clipped to ``max_grad_norm`` C over all trainable parameters, summed, plus N(0, (σC)²) per coordinate, divided
by B; the client's optimiser (momentum, weight decay) then steps with that gradient.

Accounting (sample-level DP for every sample of a defended client): per step the sampled Gaussian mechanism with
``q = B / n_k`` and noise multiplier σ; ``local_epochs · ceil(n_k / B)`` steps per round; composed with the RDP
accountant (:mod:`fedleak.defenses.accountant`) over the rounds the most exposed defended client took part in.
The engine forms batches by shuffling (fixed-size batches without replacement), not by Poisson sampling, so ε is
the customary q = B/n figure (what Opacus reports for shuffled loaders), not a proven bound for shuffling.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch

from fedleak.config import ExperimentConfig
from fedleak.defenses.base import Defense, register_defense
from fedleak.defenses.params import (
    FLOAT,
    DefenseParams,
    Field,
    between,
    non_negative,
    param,
    parse_params,
    positive,
)
from fedleak.defenses.accountant import epsilon as rdp_epsilon
from fedleak.defenses.update import max_participation
from fedleak.models.functional import per_sample_grad_fn


class DPSGDParams(DefenseParams):
    noise_multiplier: param(FLOAT, check=non_negative) = Field(
        1.0,
        description="σ: noise std is σ·C on the summed clipped gradients",
    )
    max_grad_norm: param(FLOAT, check=positive) = Field(1.0, description="C: per-sample gradient L2 bound")
    delta: param(FLOAT, check=between(0, 1, True, True)) = Field(1e-5, description="δ of the reported (ε, δ)")


def per_sample_grads(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """({name: [B, *shape]} per-sample gradients of the trainable parameters, [B] per-sample losses)."""
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    rest = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    rest.update(dict(model.named_buffers()))
    fn = per_sample_grad_fn(model, rest, loss_fn, with_loss=True, randomness="different")
    grads, losses = fn(params, x, y)
    return grads, losses


def clip_and_noise(
    grads: dict[str, torch.Tensor], clip: float, sigma: float, gen: torch.Generator | None
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(noisy mean gradient {name: shape}, per-sample norms [B]) of the clipped per-sample gradients."""
    B = next(iter(grads.values())).shape[0]
    sq = sum(torch.linalg.vector_norm(g.reshape(B, -1), dim=1).double().square() for g in grads.values())
    norms = torch.sqrt(sq).to(torch.float32)
    factor = (clip / (norms + 1e-6)).clamp(max=1.0)
    out = {}
    for n, g in grads.items():
        summed = (factor.to(g.dtype) @ g.reshape(B, -1)).view(g.shape[1:])  # Σ_i f_i g_i as one GEMV
        if sigma > 0:
            summed = summed + (sigma * clip) * torch.randn(summed.shape, generator=gen, dtype=g.dtype)
        out[n] = summed / B
    return out, norms


class DPSGD(Defense):
    name = "dpsgd"

    def __init__(self, params: dict[str, Any] | None = None, cfg: ExperimentConfig | None = None) -> None:
        super().__init__(params, cfg)
        self.p = parse_params("dpsgd", params, DPSGDParams)
        self._gen: torch.Generator | None = None
        self.client_sizes: set[int] = set()  # data sizes of the defended clients seen so far

    def select_data(self, indices: np.ndarray, rnd: int, gen: np.random.Generator) -> np.ndarray:
        self.client_sizes.add(int(len(indices)))
        return indices

    def transform_batch(self, x, y, num_classes, gen):
        # the client's seeded local stream; the noise of the next step is drawn from it (deterministic, resumable)
        self._gen = gen
        return x, y

    def training_step(self, model, x, y, loss_fn, optimizer) -> float:
        grads, losses = per_sample_grads(model, x, y, loss_fn)
        noisy, _ = clip_and_noise(grads, self.p["max_grad_norm"], self.p["noise_multiplier"], self._gen)
        optimizer.zero_grad(set_to_none=True)
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.grad = noisy[n].to(p.dtype)
        optimizer.step()
        return float(losses.mean())

    def epsilon_for(self, n: int, rounds: int) -> float:
        """ε for a client with ``n`` samples that took part in ``rounds`` rounds."""
        if self.cfg is None:
            raise ValueError("dpsgd accounting needs the experiment config")
        fl = self.cfg.fl
        B = fl.batch_size
        steps = rounds * fl.local_epochs * math.ceil(n / B)
        if self.p["noise_multiplier"] == 0:
            return math.inf
        return rdp_epsilon(min(1.0, B / n), self.p["noise_multiplier"], steps, self.p["delta"])

    def privacy_spent(self, rnd: int) -> dict[str, float] | None:
        if not self.client_sizes or self.cfg is None:
            return None
        rounds = max_participation(self.cfg, rnd)
        eps = max(self.epsilon_for(n, rounds) for n in self.client_sizes)
        return {
            "epsilon": eps,
            "delta": self.p["delta"],
            "level": "sample",
            "noise_multiplier": self.p["noise_multiplier"],
            "clip": self.p["max_grad_norm"],
            "rounds": rounds,
            "client_sizes": sorted(self.client_sizes),
        }


register_defense("dpsgd", lambda params, cfg: DPSGD(params, cfg))

__all__ = ["DPSGD", "per_sample_grads", "clip_and_noise"]
