"""``dpsgd``: local DP-SGD (Abadi et al. 2016) in place of each client's optimisation step.

Batches (``sampling``, through the :meth:`~fedleak.defenses.base.Defense.local_batches` hook of the local loop):

* ``poisson`` (default): ``ceil(n / B)`` steps per local epoch; each step includes every one of the client's n
  samples independently with probability ``q = min(1, B / n)`` (variable batch size, possibly empty), drawn from
  the client's local stream. This is the sampling the accountant assumes, so the reported ε is a proven bound.
* ``shuffle``: a random permutation cut into fixed batches of B (the last one shorter), exactly the engine's
  default loop; ε is then the customary q = B/n figure (what Opacus reports for shuffled loaders), which assumes
  Poisson sampling and is not a proven bound for shuffling (the ``privacy`` record says so).

Per batch: per-sample gradients g_i (``torch.func.vmap(grad)``, the same route as the signal code), each clipped
to ``max_grad_norm`` C over all trainable parameters, summed, plus N(0, (σC)²) per coordinate, divided by the
*expected* batch size ``q·n`` under Poisson sampling (so the noise never depends on the drawn size; an empty batch
is a noise-only step) or by the batch's size under shuffling; the client's optimiser (momentum, weight decay) then
steps with that gradient.

Accounting (sample-level DP for every sample of a defended client): per step the Poisson-sampled Gaussian
mechanism with ``q`` and noise multiplier σ; ``local_epochs · ceil(n_k / B)`` steps per round; composed with
dp-accounting (``accountant: rdp | pld``, :mod:`fedleak.defenses.dp_accounting`) over the rounds the most exposed
defended client took part in (the server sees every upload, so no amplification by client sampling is claimed).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
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
    STR,
    non_negative,
    param,
    parse_params,
    positive,
)
from fedleak.defenses.dp_accounting import ACCOUNTANTS, accountant_label, dpsgd_epsilon
from fedleak.defenses.update import max_participation
from fedleak.models.functional import per_sample_grad_fn


SAMPLINGS = ("poisson", "shuffle")


class DPSGDParams(DefenseParams):
    noise_multiplier: param(FLOAT, check=non_negative) = Field(
        1.0,
        description="σ: noise std is σ·C on the summed clipped gradients",
    )
    max_grad_norm: param(FLOAT, check=positive) = Field(1.0, description="C: per-sample gradient L2 bound")
    delta: param(FLOAT, check=between(0, 1, True, True)) = Field(1e-5, description="δ of the reported (ε, δ)")
    sampling: param(STR, choices=SAMPLINGS) = Field(
        "poisson",
        description="poisson: each step takes every sample with probability B/n (the ε is a proven bound); "
        "shuffle: fixed batches of a shuffle (ε assumes Poisson sampling, not a proven bound)",
    )
    accountant: param(STR, choices=ACCOUNTANTS) = Field(
        "rdp", description="dp-accounting's rdp (milliseconds) or pld (tighter by 5-15%, seconds at large ε)"
    )


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
    grads: dict[str, torch.Tensor],
    clip: float,
    sigma: float,
    gen: torch.Generator | None,
    denominator: float | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(noisy gradient {name: shape}, per-sample norms [B]) of the clipped per-sample gradients: their sum plus
    noise, divided by ``denominator`` (default: the batch size B; Poisson sampling passes the expected size)."""
    B = next(iter(grads.values())).shape[0]
    div = float(B if denominator is None else denominator)
    rows = {n: g.reshape(B, math.prod(g.shape[1:])) for n, g in grads.items()}  # [B, P_n]; B may be 0
    sq = sum(torch.linalg.vector_norm(r, dim=1).double().square() for r in rows.values())
    norms = torch.sqrt(sq).to(torch.float32)
    factor = (clip / (norms + 1e-6)).clamp(max=1.0)
    out = {}
    for n, g in grads.items():
        summed = (factor.to(g.dtype) @ rows[n]).view(g.shape[1:])  # Σ_i f_i g_i as one GEMV
        if sigma > 0:
            summed = summed + (sigma * clip) * torch.randn(summed.shape, generator=gen, dtype=g.dtype)
        out[n] = summed / div
    return out, norms


class DPSGD(Defense):
    name = "dpsgd"

    def __init__(self, params: dict[str, Any] | None = None, cfg: ExperimentConfig | None = None) -> None:
        super().__init__(params, cfg)
        self.p = parse_params("dpsgd", params, DPSGDParams)
        self._gen: torch.Generator | None = None
        self._expected: float | None = None  # q·n of the client now training (Poisson sampling)
        self.client_sizes: set[int] = set()  # data sizes of the defended clients seen so far

    def local_batches(self, n: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
        if self.p["sampling"] == "shuffle":
            self._expected = None
            yield from super().local_batches(n, batch_size, gen)
            return
        if n == 0:  # no data, no step (as the shuffled loop)
            return
        q = min(1.0, batch_size / n)
        self._expected = q * n
        for _ in range(math.ceil(n / batch_size)):
            yield torch.nonzero(torch.rand(n, generator=gen) < q).flatten()

    def select_data(self, indices: np.ndarray, rnd: int, gen: np.random.Generator) -> np.ndarray:
        self.client_sizes.add(int(len(indices)))
        return indices

    def transform_batch(self, x, y, num_classes, gen):
        # the client's seeded local stream; the noise of the next step is drawn from it (deterministic, resumable)
        self._gen = gen
        return x, y

    def training_step(self, model, x, y, loss_fn, optimizer) -> float:
        if len(x) == 0:  # an empty Poisson batch: no forward pass, zero gradients [0, *shape], noise only
            grads = {n: p.new_zeros((0, *p.shape)) for n, p in model.named_parameters() if p.requires_grad}
            losses = torch.zeros(0)
        else:
            grads, losses = per_sample_grads(model, x, y, loss_fn)
        noisy, _ = clip_and_noise(grads, self.p["max_grad_norm"], self.p["noise_multiplier"], self._gen,
                                  self._expected)
        optimizer.zero_grad(set_to_none=True)
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.grad = noisy[n].to(p.dtype)
        optimizer.step()
        return float(losses.mean()) if len(losses) else math.nan  # an empty Poisson batch: a noise-only step

    def epsilon_for(self, n: int, rounds: int) -> float:
        """ε for a client with ``n`` samples that took part in ``rounds`` rounds."""
        if self.cfg is None:
            raise ValueError("dpsgd accounting needs the experiment config")
        fl = self.cfg.fl
        B = fl.batch_size
        steps = rounds * fl.local_epochs * math.ceil(n / B)
        if self.p["noise_multiplier"] == 0:
            return math.inf
        return dpsgd_epsilon(min(1.0, B / n), self.p["noise_multiplier"], steps, self.p["delta"],
                             self.p["accountant"])

    def privacy_spent(self, rnd: int) -> dict[str, Any] | None:
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
            "accountant": accountant_label(self.p["accountant"]),
            "sampling": self.p["sampling"],
            # the accountant assumes Poisson sampling with q = B/n: a proven bound only when batches were so drawn
            "proven_bound": self.p["sampling"] == "poisson",
        }


register_defense("dpsgd", lambda params, cfg: DPSGD(params, cfg))

__all__ = ["DPSGD", "per_sample_grads", "clip_and_noise"]
