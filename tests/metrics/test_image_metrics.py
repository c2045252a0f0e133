"""Image metrics against independent computations (scikit-image, numpy, brute force)."""

from __future__ import annotations

import itertools
import numpy as np
import pytest
import torch

from conftest import assert_within, rounding_tol
from fedleak.metrics import image as im

skm = pytest.importorskip("skimage.metrics")
# SSIM/MSE/PSNR are computed in float64 and checked against float64 references (skimage, numpy) at 1e-10..1e-12:
# float64 rounding of these sums is ~1e-14, far inside on any CPU. logit_mse starts from float32 logits.
pytestmark = pytest.mark.numerics


def _images(seed: int, n: int, c: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n, c, h, w, generator=g)
    # a correlated, partly clipped distortion so SSIM is away from 0 and 1
    b = (0.7 * a + 0.3 * torch.rand(n, c, h, w, generator=g) + 0.05 * torch.randn(n, c, h, w, generator=g)).clamp(0, 1)
    return a, b


@pytest.mark.parametrize("shape", [(3, 3, 32, 32), (2, 1, 28, 28), (1, 3, 11, 17)])
def test_ssim_matches_skimage(shape):
    a, b = _images(0, *shape)
    ours = im.ssim(a, b)
    for k in range(shape[0]):
        ref = skm.structural_similarity(
            a[k].numpy().astype(np.float64),
            b[k].numpy().astype(np.float64),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
            channel_axis=0,
        )
        assert ours[k].item() == pytest.approx(ref, abs=1e-10)


def test_ssim_on_real_cifar_images_matches_skimage(shared_data):
    from fedleak.config import DataConfig
    from fedleak.data import load_dataset

    ds = load_dataset(DataConfig(name="cifar10", data_dir=str(shared_data / "cifar-10-subset"), max_train=1), 0)
    x = ds.test.x[:4].double()
    noisy = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)).clamp(0, 1)
    ours = im.ssim(noisy, x)
    for k in range(4):
        ref = skm.structural_similarity(
            noisy[k].numpy(), x[k].numpy(), gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False, data_range=1.0, channel_axis=0,
        )
        assert ours[k].item() == pytest.approx(ref, abs=1e-10)


def test_ssim_identity_is_one_and_too_small_raises():
    a, _ = _images(1, 2, 3, 16, 16)
    assert torch.allclose(im.ssim(a, a), torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="at least 11x11"):
        im.ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))


def test_mse_psnr_against_numpy_and_skimage():
    a, b = _images(2, 3, 3, 8, 8)
    m = im.mse(a, b)
    for k in range(3):
        ref = np.mean((a[k].double().numpy() - b[k].double().numpy()) ** 2)
        assert m[k].item() == pytest.approx(ref, rel=1e-12)
        assert im.psnr(a, b)[k].item() == pytest.approx(
            skm.peak_signal_noise_ratio(a[k].double().numpy(), b[k].double().numpy(), data_range=1.0), rel=1e-10
        )
    assert torch.isinf(im.psnr(a, a)).all()


def test_to_pixels_denormalises_then_clamps():
    mean, std = 0.5, 0.25
    x = torch.tensor([[[[-3.0, 0.0, 1.0, 9.0]]]])
    p = im.to_pixels(x, lambda t: t * std + mean)
    assert p.tolist() == [[[[0.0, 0.5, 0.75, 1.0]]]]


def test_label_accuracy_is_order_free_multiset_overlap():
    assert im.label_accuracy([3], [3]) == 1.0
    assert im.label_accuracy([2], [3]) == 0.0
    assert im.label_accuracy([1, 2, 3, 3], [3, 1, 3, 2]) == 1.0
    # one of four wrong, whatever the order
    assert im.label_accuracy([0, 2, 3, 3], [3, 1, 3, 2]) == 0.75
    with pytest.raises(ValueError):
        im.label_accuracy([1, 2], [1])


def test_hungarian_matching_equals_brute_force():
    g = torch.Generator().manual_seed(3)
    true = torch.rand(5, 3, 12, 12, generator=g)
    perm_true = torch.tensor([3, 0, 4, 1, 2])
    rec = (true[perm_true] + 0.2 * torch.randn(true.shape, generator=g)).clamp(0, 1)  # rec[i] ~ true[perm_true[i]]
    perm = im.match_batch(rec, true)
    # brute force over all 120 orders
    best, best_cost = None, np.inf
    for p in itertools.permutations(range(5)):
        cost = float(im.mse(rec[list(p)], true).sum())
        if cost < best_cost:
            best, best_cost = p, cost
    assert list(perm) == list(best)
    assert torch.equal(perm_true[torch.as_tensor(perm)], torch.arange(5))  # recovers the planted order
    met = im.image_metrics(rec, true)
    assert met["order"] == list(best)
    assert np.allclose(met["mse"], im.mse(rec[list(best)], true).numpy())


def test_aggregate_mean_median_and_nonfinite():
    agg = im.aggregate([1.0, 2.0, 10.0, float("inf")])
    assert agg["n"] == 4 and agg["n_nonfinite"] == 1
    assert agg["mean"] == pytest.approx(13 / 3)
    assert agg["median"] == 2.0
    assert agg["max"] == 10.0


def test_logit_mse():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x, y = torch.randn(2, 4), torch.randn(2, 4)
    w, b = model.weight.detach().double(), model.bias.detach().double()
    za, zb = x.double() @ w.T + b, y.double() @ w.T + b  # float64 reference logits
    ref = ((za - zb) ** 2).mean(1)
    # float32 logits: 4-term sums, rounded at the scale of their summed magnitudes Σ|w||x| + |b|
    dza, dzb = (rounding_tol(4, v.abs() @ w.abs().T + b.abs()) for v in (x.double(), y.double()))
    tol = (2 * (za - zb).abs() * (dza + dzb) + (dza + dzb) ** 2).mean(1)
    with torch.no_grad():
        assert_within(im.logit_mse(model, x, y), ref, tol, "logit mse")
