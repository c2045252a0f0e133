"""The one registration pattern (issue #11): Registry[T], used by models, datasets, defenses, attacks, presets."""

from __future__ import annotations

import pytest

from fedleak.errors import ConfigError, DataError, FedleakError
from fedleak.registry import Registry


def test_register_get_names_in_order_and_closest_name_error():
    reg: Registry[int] = Registry("widget")

    @reg.register("beta")
    def beta() -> int:
        return 2

    reg.add("alpha", 1)
    assert reg.names() == ["beta", "alpha"] and list(reg) == ["beta", "alpha"] and len(reg) == 2
    assert reg.get("beta") is beta and reg["alpha"] == 1 and "alpha" in reg and "gamma" not in reg
    with pytest.raises(ConfigError) as e:
        reg.get("alpah")
    assert str(e.value) == "unknown widget 'alpah'; choose from: alpha, beta (closest: 'alpha')"
    with pytest.raises(ConfigError, match=r"^unknown widget 'zzz'; choose from: alpha, beta$"):
        reg.get("zzz")
    reg.add("alpha", 1)  # the same entry again is harmless (a module imported twice)
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("alpha", 3)


def test_every_area_uses_the_registry():
    from fedleak.attacks.inversion.presets import PRESETS
    from fedleak.attacks.mia.attacks import ATTACKS
    from fedleak.data.registry import DATASETS
    from fedleak.defenses import DEFENSES
    from fedleak.models import MODELS

    for reg in (PRESETS, ATTACKS, DATASETS, DEFENSES, MODELS):
        assert isinstance(reg, Registry) and len(reg) > 0
    assert {"soteria", "prune", "dp-gaussian", "perturb", "dpsgd", "mixup", "none"} <= set(DEFENSES)
    with pytest.raises(DataError, match="closest: 'cifar10'"):
        DATASETS.get("cifar01")
    with pytest.raises(FedleakError, match="closest: 'fedmia-ii'"):
        ATTACKS.get("fedmia-iii")
    with pytest.raises(FedleakError, match="unknown inversion preset 'dlgg'"):
        PRESETS.get("dlgg")
    with pytest.raises(ConfigError, match="unknown model 'vgg'"):
        MODELS.get("vgg")
