"""Image-reconstruction metrics, all in [0, 1] pixel space.

One definition everywhere (inversion.md §6.2, item 10): reconstructions and ground truth are de-normalised
to pixels and clamped to [0, 1] *before* any metric (:func:`to_pixels`); then

* ``mse``   per image, mean over C·H·W;
* ``psnr``  per image, ``10·log10(data_range² / mse)`` (``inf`` for identical images);
* ``ssim``  per image, Gaussian-window SSIM (σ = 1.5, 11×11 window, K1 = 0.01, K2 = 0.03, population
  covariances), averaged over the valid window positions and over channels, i.e. the same quantity as
  ``skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1, channel_axis=0)``, implemented here in torch;
* ``logit_mse`` the MSE between the model's logits on the reconstruction and on the truth (the quantity
  the original Soteria/IG scripts call "feature MSE");
* ``label_accuracy`` order-free agreement of two label multisets;
* ``match_batch`` Hungarian matching (``scipy.optimize.linear_sum_assignment``) of a reconstructed batch to
  the ground truth, since a batch attack recovers images in arbitrary order;
* ``aggregate`` mean / median / std / min / max over many images.

Never report the "oracle" minimum over iterations: metrics take one final reconstruction.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch.nn import functional as F

__all__ = [
    "to_pixels",
    "mse",
    "psnr",
    "ssim",
    "logit_mse",
    "label_accuracy",
    "match_batch",
    "image_metrics",
    "aggregate",
]


def to_pixels(
    x: torch.Tensor, denormalize: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> torch.Tensor:
    """De-normalise (if a function is given) and clamp to [0, 1]; returns a detached float tensor."""
    x = x.detach()
    if denormalize is not None:
        x = denormalize(x)
    return x.float().clamp(0.0, 1.0)


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.dim() == 3:
        a, b = a[None], b[None]
    if a.dim() != 4:
        raise ValueError(f"expected images [N, C, H, W] or [C, H, W], got shape {tuple(a.shape)}")
    return a.detach().double(), b.detach().double()


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared error, shape [N] (float64)."""
    a, b = _check_pair(a, b)
    return (a - b).pow(2).flatten(1).mean(1)


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB, shape [N]; ``inf`` where the images are identical."""
    m = mse(a, b)
    return 10.0 * torch.log10(torch.as_tensor(data_range, dtype=m.dtype) ** 2 / m)


def _gaussian_kernel(sigma: float, truncate: float = 3.5) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)  # scipy.ndimage's rule: 5 for sigma 1.5 -> an 11-tap window
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def ssim(
    a: torch.Tensor,
    b: torch.Tensor,
    data_range: float = 1.0,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Per-image Gaussian-window SSIM, shape [N] (mean over valid window positions and channels).

    Only positions whose whole window lies inside the image are averaged (skimage crops the same border
    after filtering, which makes the padding mode irrelevant), so the filter is a valid convolution.
    """
    a, b = _check_pair(a, b)
    n, c, h, w = a.shape
    k = _gaussian_kernel(sigma)
    win = k.numel()
    if h < win or w < win:
        raise ValueError(f"SSIM needs images of at least {win}x{win} pixels, got {h}x{w}")
    kh = k.view(1, 1, win, 1).expand(c, 1, win, 1)
    kw = k.view(1, 1, 1, win).expand(c, 1, 1, win)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, kh, groups=c), kw, groups=c)

    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)


@torch.no_grad()
def logit_mse(model: Callable[[torch.Tensor], torch.Tensor], x_rec: torch.Tensor, x_true: torch.Tensor) -> torch.Tensor:
    """Per-image MSE between the logits of the reconstruction and of the truth (model-input space)."""
    za, zb = model(x_rec), model(x_true)
    return (za.double() - zb.double()).pow(2).flatten(1).mean(1)


def label_accuracy(predicted: Sequence[int] | torch.Tensor, true: Sequence[int] | torch.Tensor) -> float:
    """Fraction of labels recovered, ignoring order: ``1 − Σ_c |h_pred(c) − h_true(c)| / (2n)``.

    For one image this is 1 if the label is right and 0 otherwise; for a batch it is the best agreement over
    all orderings (the multiset overlap), because a batch attack does not know which image is which.
    """
    p = torch.as_tensor(predicted, dtype=torch.long).flatten()
    t = torch.as_tensor(true, dtype=torch.long).flatten()
    if p.numel() != t.numel():
        raise ValueError(f"{p.numel()} predicted labels for {t.numel()} true labels")
    if t.numel() == 0:
        return float("nan")
    size = int(max(p.max(), t.max())) + 1
    diff = (torch.bincount(p, minlength=size) - torch.bincount(t, minlength=size)).abs().sum()
    return 1.0 - float(diff) / (2.0 * t.numel())


def match_batch(rec: torch.Tensor, true: torch.Tensor, by: str = "mse") -> np.ndarray:
    """Order of ``rec`` that best matches ``true``: returns ``perm`` with ``rec[perm[j]] ~ true[j]``.

    Minimum-cost assignment (Hungarian, ``scipy.optimize.linear_sum_assignment``) on the pairwise
    per-image ``mse`` (default), ``psnr`` or ``ssim`` (the last two maximised). Inputs in pixel space.
    """
    if rec.shape != true.shape:
        raise ValueError(f"batch shapes differ: {tuple(rec.shape)} vs {tuple(true.shape)}")
    n = rec.shape[0]
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    ri = rec.repeat_interleave(n, 0)  # pair (i, j) at row i*n + j
    tj = true.repeat(n, 1, 1, 1)
    if by == "mse":
        cost = mse(ri, tj)
    elif by == "psnr":
        cost = -psnr(ri, tj).clamp(max=1e6)
    elif by == "ssim":
        cost = -ssim(ri, tj)
    else:
        raise ValueError(f"match_batch: unknown criterion {by!r}; choose mse, psnr or ssim")
    cost = cost.view(n, n).cpu().numpy()  # cost[i, j]: rec i vs true j
    rows, cols = linear_sum_assignment(cost)
    perm = np.empty(n, dtype=np.int64)
    perm[cols] = rows
    return perm


def image_metrics(rec_pixels: torch.Tensor, true_pixels: torch.Tensor, match: bool = True) -> dict[str, list[float]]:
    """Per-image MSE/PSNR/SSIM after optional Hungarian matching; returns lists aligned with ``true``."""
    rec_pixels = rec_pixels.detach().float().clamp(0, 1)
    true_pixels = true_pixels.detach().float().clamp(0, 1)
    perm = match_batch(rec_pixels, true_pixels) if match else np.arange(rec_pixels.shape[0])
    r = rec_pixels[torch.as_tensor(perm)]
    return {
        "order": perm.tolist(),
        "mse": mse(r, true_pixels).tolist(),
        "psnr": psnr(r, true_pixels).tolist(),
        "ssim": ssim(r, true_pixels).tolist(),
    }


def aggregate(values: Iterable[float]) -> dict[str, float]:
    """Mean, median, std (population), min, max and count of the finite values (``n_nonfinite`` counted apart)."""
    arr = np.asarray(list(values), dtype=np.float64)
    fin = arr[np.isfinite(arr)]
    out = {"n": int(arr.size), "n_nonfinite": int(arr.size - fin.size)}
    if fin.size == 0:
        out.update({k: math.nan for k in ("mean", "median", "std", "min", "max")})
        return out
    out.update(
        {
            "mean": float(fin.mean()),
            "median": float(np.median(fin)),
            "std": float(fin.std()),
            "min": float(fin.min()),
            "max": float(fin.max()),
        }
    )
    return out
