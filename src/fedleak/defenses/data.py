"""Data-level defenses: ``mixup``, ``augment``, ``sampling``, ``augment+sampling`` (``instahide``: instahide.py).

They act on each local batch in pixel space ([0, 1], before normalisation; ``transform_batch``) or on the client's
sample indices (``select_data``). Every random draw comes from the generator the engine passes in (seeded by
(seed, round, client)), so runs are reproducible and resumable.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fedleak.config import MAX_IMAGE_SIZE, ConfigError, ExperimentConfig
from fedleak.defenses.base import Defense, register_defense
from fedleak.defenses.params import (
    BOOL,
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


def one_hot(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Hard labels [B] -> one-hot float [B, C]; soft labels are returned unchanged."""
    if y.dtype.is_floating_point:
        return y
    return F.one_hot(y, num_classes).to(torch.float32)


def numpy_rng(gen: torch.Generator) -> np.random.Generator:
    """A NumPy generator drawn from (and advancing) a torch generator, for distributions torch cannot seed."""
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=gen)))


# ----------------------------------------------------------------------------------------------- mixup


class MixUpParams(DefenseParams):
    alpha: param(FLOAT, check=positive) = Field(1.0, description="λ ~ Beta(α, α), one λ per batch")
    labels_only: param(BOOL) = Field(
        False,
        description="the original's behaviour: the model sees the clean x, only the labels are mixed (kept for paper "
        "parity)",
    )


class MixUp(Defense):
    """MixUp (Zhang et al. 2018): ``x̃ = λx + (1−λ)x[π]``, ``ỹ = λ·onehot(y) + (1−λ)·onehot(y[π])``.

    The model is trained with soft-label cross-entropy on (x̃, ỹ), which equals the usual
    ``λ·CE(f(x̃), y) + (1−λ)·CE(f(x̃), y[π])``. ``labels_only: true`` feeds the clean x instead (the original
    code's bug, spec §4), which reproduces its loss ``λ·CE(f(x), y) + (1−λ)·CE(f(x), y[π])`` exactly.
    """

    name = "mixup"

    def __init__(self, params: dict[str, Any] | None = None, cfg: ExperimentConfig | None = None) -> None:
        super().__init__(params, cfg)
        self.p = parse_params("mixup", params, MixUpParams)
        self.last: dict[str, Any] = {}

    def transform_batch(self, x, y, num_classes, gen):
        lam = float(numpy_rng(gen).beta(self.p["alpha"], self.p["alpha"]))
        perm = torch.randperm(len(x), generator=gen)
        yh = one_hot(y, num_classes)
        y_mix = lam * yh + (1 - lam) * yh[perm]
        x_mix = x if self.p["labels_only"] else lam * x + (1 - lam) * x[perm]
        self.last = {"lam": lam, "perm": perm}
        return x_mix, y_mix


# --------------------------------------------------------------------------------------------- augment

RECIPES: dict[str, dict[str, Any]] = {
    # random crop with 4 px of zero padding and horizontal flips: the usual CIFAR recipe
    "standard": {"crop_padding": 4, "hflip": 0.5},
    # the original's CIFAR-100 transform (spec §4): crop(pad 4), h- and v-flip, rotation ±45°, brightness 0.25,
    # contrast 0.8
    "fedmia": {"crop_padding": 4, "hflip": 0.5, "vflip": 0.5, "rotation": 45.0, "brightness": 0.25, "contrast": 0.8},
    "flip": {"hflip": 0.5},
    "crop": {"crop_padding": 4},
    "rotate": {"rotation": 30.0},
    "color": {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4},
}


RECIPE_CHOICES = (*RECIPES, "none")


class AugmentParams(DefenseParams):
    recipe: param(STR, choices=RECIPE_CHOICES) = Field(
        "standard",
        description="starting point: " + ", ".join(RECIPES) + " or none; the other " "parameters override it",
    )
    crop_padding: param(INT, check=between(0, MAX_IMAGE_SIZE), optional=True) = Field(
        None,
        description="random crop of the original size after zero padding by this many pixels (0: off)",
    )
    hflip: param(FLOAT, check=between(0, 1), optional=True) = Field(
        None,
        description="probability of a horizontal flip",
    )
    vflip: param(FLOAT, check=between(0, 1), optional=True) = Field(
        None,
        description="probability of a vertical flip",
    )
    rotation: param(FLOAT, check=between(0, 180), optional=True) = Field(
        None,
        description="rotation by an angle uniform in [−d, d] degrees (bilinear, zero fill)",
    )
    brightness: param(FLOAT, check=non_negative, optional=True) = Field(
        None,
        description="multiply by a factor uniform in [max(0, 1−b), 1+b]",
    )
    contrast: param(FLOAT, check=non_negative, optional=True) = Field(
        None,
        description="blend with the image's mean grey level, factor in [max(0, 1−c), 1+c]",
    )
    saturation: param(FLOAT, check=non_negative, optional=True) = Field(
        None,
        description="blend with the pixel's grey value, factor in [max(0, 1−s), 1+s]",
    )
    p: param(FLOAT, check=between(0, 1)) = Field(1.0, description="probability that a sample is augmented at all")
_OPS = ("crop_padding", "hflip", "vflip", "rotation", "brightness", "contrast", "saturation")


def random_crop(x: torch.Tensor, padding: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad by ``padding`` and cut a window of the original size at a random offset per sample.

    Returns (images, offsets [B, 2] (row, col) into the padded image)."""
    B, C, H, W = x.shape
    if padding <= 0:
        return x, torch.full((B, 2), 0, dtype=torch.long)
    xp = F.pad(x, (padding, padding, padding, padding))
    off = torch.randint(0, 2 * padding + 1, (B, 2), generator=gen)
    rows = off[:, 0:1] + torch.arange(H)  # [B, H]
    cols = off[:, 1:2] + torch.arange(W)  # [B, W]
    bidx = torch.arange(B)[:, None, None]
    out = xp.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous(), off


def flip(x: torch.Tensor, which: torch.Tensor, dim: int) -> torch.Tensor:
    """Flip the samples where ``which`` [B] is True along ``dim`` (3: horizontal, 2: vertical)."""
    return torch.where(which.view(-1, 1, 1, 1), x.flip(dim), x)


def rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each sample counter-clockwise by ``degrees`` [B] about the image centre (bilinear, zero fill)."""
    t = degrees.to(x.dtype) * (math.pi / 180.0)
    cos, sin = torch.cos(t), torch.sin(t)
    zero = torch.zeros_like(t)
    # grid_sample maps output coordinates to input coordinates: the inverse rotation. In normalised (x right,
    # y down) coordinates a counter-clockwise image rotation by t samples the input at R(t)·(x, y) with
    # R = [[cos, −sin], [sin, cos]].
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def grey(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma [B, 1, H, W] (the channel itself for one-channel images)."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
    return (x[:, :3] * w).sum(1, keepdim=True)


def _factor(B: int, amount: float, gen: torch.Generator) -> torch.Tensor:
    lo, hi = max(0.0, 1.0 - amount), 1.0 + amount
    return (lo + (hi - lo) * torch.rand(B, generator=gen)).view(-1, 1, 1, 1)


class Augment(Defense):
    """Data augmentation in plain torch, applied per sample in this fixed order: crop, h-flip, v-flip, rotation,
    brightness, contrast, saturation (each only when its parameter is non-zero), then clamped to [0, 1]."""

    name = "augment"

    def __init__(self, params: dict[str, Any] | None = None, cfg: ExperimentConfig | None = None) -> None:
        super().__init__(params, cfg)
        p = parse_params("augment", params, AugmentParams)
        base = {k: 0 for k in _OPS}
        base.update(RECIPES.get(p["recipe"], {}))
        self.ops = {k: (p[k] if p[k] is not None else base[k]) for k in _OPS}
        self.p_apply = p["p"]

    def augment(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        B = len(x)
        o = self.ops
        out = x
        if o["crop_padding"]:
            out, _ = random_crop(out, int(o["crop_padding"]), gen)
        if o["hflip"]:
            out = flip(out, torch.rand(B, generator=gen) < o["hflip"], 3)
        if o["vflip"]:
            out = flip(out, torch.rand(B, generator=gen) < o["vflip"], 2)
        if o["rotation"]:
            out = rotate(out, (2 * torch.rand(B, generator=gen) - 1) * o["rotation"])
        if o["brightness"]:
            out = out * _factor(B, o["brightness"], gen)
        if o["contrast"]:
            m = grey(out).mean(dim=(1, 2, 3), keepdim=True)
            out = (out - m) * _factor(B, o["contrast"], gen) + m
        if o["saturation"] and out.shape[1] == 3:
            g = grey(out)
            out = (out - g) * _factor(B, o["saturation"], gen) + g
        out = out.clamp(0, 1)
        if self.p_apply < 1:
            keep = torch.rand(B, generator=gen) < self.p_apply
            out = torch.where(keep.view(-1, 1, 1, 1), out, x)
        return out

    def transform_batch(self, x, y, num_classes, gen):
        return self.augment(x, gen), y


# -------------------------------------------------------------------------------------------- sampling


SAMPLING_MODES = ("per-round", "fixed")


class SamplingParams(DefenseParams):
    p: param(FLOAT, check=between(0, 1, lo_open=True)) = Field(
        0.5,
        description="fraction of the client's samples used in a round: max(1, int(p·n))",
    )
    mode: param(STR, choices=SAMPLING_MODES) = Field(
        "per-round",
        description="per-round: a new random subset every round (the original); fixed: one subset for the whole run",
    )


class Sampling(Defense):
    """Each round the client trains (all its local epochs) on ``max(1, int(p·n))`` of its n samples.

    The original stops each epoch after ``int(p·len(loader))`` batches of a reshuffled loader (and silently uses
    everything when that is 0); here the subset is drawn per round (``per-round``) or once per run (``fixed``,
    seeded by the experiment seed and the client's index set, so it is the same every round and after a resume).
    """

    name = "sampling"

    def __init__(self, params: dict[str, Any] | None = None, cfg: ExperimentConfig | None = None) -> None:
        super().__init__(params, cfg)
        self.p = parse_params("sampling", params, SamplingParams)

    def subset_size(self, n: int) -> int:
        return max(1, int(self.p["p"] * n))

    def select_data(self, indices: np.ndarray, rnd: int, gen: np.random.Generator) -> np.ndarray:
        idx = np.asarray(indices)
        m = self.subset_size(len(idx))
        if m >= len(idx):
            return idx
        if self.p["mode"] == "fixed":
            seed = self.cfg.seed if self.cfg is not None else 0
            key = zlib.crc32(np.ascontiguousarray(idx, dtype=np.int64).tobytes())
            gen = np.random.default_rng([seed, 0x5A3D, key])
        return np.sort(gen.choice(idx, size=m, replace=False))


class Compose(Defense):
    """Several defenses at once: ``select_data`` and ``transform_batch`` chained in order, ``transform_update``
    chained, ``training_step`` of the first part that overrides it, privacy of the first part that reports."""

    def __init__(self, parts: list[Defense], name: str) -> None:
        super().__init__({}, parts[0].cfg if parts else None)
        self.parts = parts
        self.name = name

    def select_data(self, indices, rnd, gen):
        for d in self.parts:
            indices = d.select_data(indices, rnd, gen)
        return indices

    def transform_batch(self, x, y, num_classes, gen):
        for d in self.parts:
            x, y = d.transform_batch(x, y, num_classes, gen)
        return x, y

    def training_step(self, model, x, y, loss_fn, optimizer):
        for d in self.parts:
            if type(d).training_step is not Defense.training_step:
                return d.training_step(model, x, y, loss_fn, optimizer)
        return super().training_step(model, x, y, loss_fn, optimizer)

    @property
    def needs_context(self) -> bool:  # type: ignore[override]
        return any(d.needs_context for d in self.parts)

    def acts_on_update(self) -> bool:
        return any(d.acts_on_update() for d in self.parts)

    def transform_update(self, delta, gen, ctx=None):
        for d in self.parts:
            delta = d.transform_update(delta, gen, ctx)
        return delta

    def privacy_spent(self, rnd):
        for d in self.parts:
            out = d.privacy_spent(rnd)
            if out:
                return out
        return None


def augment_sampling(params: dict[str, Any] | None, cfg: ExperimentConfig | None) -> Compose:
    """``augment+sampling``: flat params (sampling's ``p``/``mode``, the rest augment's; ``p_augment`` is augment's
    ``p``) or nested ``{augment: {...}, sampling: {...}}``."""
    params = dict(params or {})
    if set(params) <= {"augment", "sampling"} and all(isinstance(v, dict) for v in params.values()):
        a, s = dict(params.get("augment", {})), dict(params.get("sampling", {}))
    else:
        s = {k: params.pop(k) for k in list(params) if k in SamplingParams.model_fields}
        if "p_augment" in params:
            params["p"] = params.pop("p_augment")
        unknown = sorted(set(params) - set(AugmentParams.model_fields))
        if unknown:
            allowed = sorted((set(AugmentParams.model_fields) - {"p"}) | set(SamplingParams.model_fields) | {"p_augment"})
            raise ConfigError(
                f"defense 'augment+sampling': unknown parameter(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}"
            )
        a = params
    return Compose([Sampling(s, cfg), Augment(a, cfg)], "augment+sampling")


def _factory(cls):
    def make(params: dict[str, Any], cfg: ExperimentConfig) -> Defense:
        return cls(params, cfg)

    return make


register_defense("mixup", _factory(MixUp))
register_defense("augment", _factory(Augment))
register_defense("sampling", _factory(Sampling))
register_defense("augment+sampling", augment_sampling)

__all__ = ["MixUp", "Augment", "Sampling", "Compose", "RECIPES", "random_crop", "flip", "rotate",
           "augment_sampling", "one_hot"]
