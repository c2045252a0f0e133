"""One normalisation table (issue #11 item 6): the right CIFAR-10 constants, the originals' kept by name."""

from __future__ import annotations

import pytest
import torch

from conftest import SHARED_DATA
from fedleak.attacks.inversion.presets import InvertSpec, get_preset
from fedleak.config import DataConfig
from fedleak.data import load_dataset
from fedleak.data.normalization import NORMALIZATIONS


def test_cifar10_is_the_true_statistics_and_the_originals_keep_theirs():
    mean, std = NORMALIZATIONS["cifar10"]
    ig_mean, ig_std = NORMALIZATIONS["cifar10-ig"]  # computed in full precision by the inversion originals
    assert max(abs(a - b) for a, b in zip(std, ig_std)) < 1e-4
    assert max(abs(a - b) for a, b in zip(mean, ig_mean)) < 5e-4
    fedmia_std = NORMALIZATIONS["cifar10-fedmia"][1]
    assert min(a - b for a, b in zip(std, fedmia_std)) > 0.04  # FedMIA's widely copied std is not CIFAR-10's
    # the inversion presets keep their originals' constants explicitly; auto picks <dataset>-ig
    assert get_preset("ig-cifar").mean_std() == NORMALIZATIONS["cifar10-ig"]
    assert InvertSpec(dataset="mnist").mean_std() == NORMALIZATIONS["mnist-ig"]
    assert InvertSpec(dataset="synthetic").mean_std() == ((0.0,), (1.0,))
    with pytest.raises(ValueError, match="unknown normalization 'imagenet'"):
        InvertSpec(normalization="imagenet")


@pytest.mark.skipif(not (SHARED_DATA / "cifar-10-subset").is_dir(), reason="shared CIFAR-10 subset absent")
def test_cifar10_constants_against_the_pixels_and_the_membership_default():
    cfg = DataConfig(name="cifar10", data_dir=str(SHARED_DATA / "cifar-10-subset"))
    ds = load_dataset(cfg, 0)
    assert (ds.mean, ds.std) == NORMALIZATIONS["cifar10-fedmia"]  # default: unchanged FedMIA parity
    x = ds.train.x.double().transpose(0, 1).reshape(3, -1)  # a 5k-image subset: its stats are close to the set's
    assert torch.allclose(x.std(dim=1, unbiased=False), torch.tensor(NORMALIZATIONS["cifar10"][1], dtype=torch.float64),
                          atol=0.01)
    true = load_dataset(cfg.model_copy(update={"normalization": "cifar10", "max_train": 4}), 0)
    assert (true.mean, true.std) == NORMALIZATIONS["cifar10"]
