"""``instahide``: k-sample mixing with one random sign mask per encoded image, soft labels (a data-level defense)."""

from __future__ import annotations

from typing import Any

import torch

from fedleak.config import ConfigError, ExperimentConfig
from fedleak.defenses.base import Defense, register_defense
from fedleak.defenses.data import one_hot
from fedleak.defenses.params import BOOL, FLOATS, INT, DefenseParams, Field, between, param, parse_params



class InstaHideParams(DefenseParams):
    k: param(INT, check=between(2, 64)) = Field(4, description="number of images mixed into each encoded image")
    max_coef: param(FLOATS) = Field(
        [0.5, 0.65],
        description="[low, high]: the largest mixing coefficient is redrawn until it lies in this range (the original: "
        "0.5 ≤ max λ ≤ up_bound = 0.65)",
    )
    sign_mask: param(BOOL) = Field(True, description="multiply the final mix by one random ±1 pixel mask")


class InstaHide(Defense):
    """InstaHide (Huang et al. 2020), inside-dataset version, per batch.

    For each sample i of the batch: partners ``π_1..π_{k−1}`` (random permutations of the batch, ``π_0`` = identity),
    coefficients λ ∈ Δ^{k−1} from ``|N(0, 1)|`` normalised to sum 1 and redrawn until ``max λ`` lies in
    ``max_coef``; the mix is formed in the centred space ``c = 2x − 1 ∈ [−1, 1]`` (InstaHide's input range):
    ``m_i = Σ_j λ_ij c[π_j(i)]``, then one random sign mask σ_i ∈ {±1}^{C×H×W} multiplies the final mix
    (the original multiplies the running sum at every step instead, spec W16), ``x̃_i = (σ_i ⊙ m_i + 1) / 2``
    (back to the engine's pixel range; its normalisation is affine, so |2x̃ − 1| = |m|). Labels are the soft mix
    ``Σ_j λ_ij onehot(y[π_j(i)])``. Partners come from the same local batch (the original mixes over the whole
    shard once per round), so mixes are redrawn every epoch.
    """

    name = "instahide"

    def __init__(self, params: dict[str, Any] | None = None, cfg: ExperimentConfig | None = None) -> None:
        super().__init__(params, cfg)
        self.p = parse_params("instahide", params, InstaHideParams)
        rng = self.p["max_coef"]
        k = self.p["k"]
        if len(rng) != 2 or not (0 < rng[0] <= rng[1] <= 1) or rng[1] < 1.0 / k:
            raise ConfigError(
                f"defense 'instahide': max_coef must be [low, high] with 0 < low <= high <= 1 and high >= 1/k = "
                f"{1.0 / k:.3g} (got {rng})"
            )
        self.last: dict[str, Any] = {}

    def coefficients(self, B: int, gen: torch.Generator) -> torch.Tensor:
        """[B, k] rows drawn as |N(0, I_k)| / sum, kept only when their largest entry lies in ``max_coef``
        (rejection sampling, vectorised: candidates are drawn in blocks and accepted rows are used in order)."""
        k, (lo, hi) = self.p["k"], self.p["max_coef"]
        accepted: list[torch.Tensor] = []
        have = 0
        for _ in range(200):
            draw = torch.randn(max(256, 8 * (B - have)), k, generator=gen).abs()
            draw = draw / draw.sum(1, keepdim=True)
            mx = draw.max(1).values
            ok = draw[(mx >= lo) & (mx <= hi)]
            accepted.append(ok)
            have += len(ok)
            if have >= B:
                return torch.cat(accepted)[:B]
        raise ConfigError(
            f"defense 'instahide': could not draw coefficients with max in {self.p['max_coef']} for k={k}; "
            "widen max_coef"
        )

    def transform_batch(self, x, y, num_classes, gen):
        B, k = len(x), self.p["k"]
        lam = self.coefficients(B, gen)
        perms = torch.stack([torch.arange(B)] + [torch.randperm(B, generator=gen) for _ in range(k - 1)])  # [k, B]
        c = 2 * x - 1
        mix = sum(lam[:, j].view(-1, 1, 1, 1) * c[perms[j]] for j in range(k))
        yh = one_hot(y, num_classes)
        y_mix = sum(lam[:, j : j + 1] * yh[perms[j]] for j in range(k))
        if self.p["sign_mask"]:
            mask = torch.where(torch.rand(mix.shape, generator=gen) < 0.5, -1.0, 1.0).to(mix.dtype)
        else:
            mask = torch.ones_like(mix)
        self.last = {"lam": lam, "perms": perms, "mask": mask}
        return (mask * mix + 1) / 2, y_mix


register_defense("instahide", InstaHide)

__all__ = ["InstaHide", "InstaHideParams"]
