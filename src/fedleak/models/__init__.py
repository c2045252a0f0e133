"""Model registry: ``build_model(name, num_classes, input_shape, **options) -> nn.Module``.

Every model is BatchNorm-free and uses out-of-place activations, so ``torch.func`` per-sample gradients work and
``train()``/``eval()`` give identical outputs (none uses dropout).

=================  ===============================================================  ====================
name               architecture                                                     options
=================  ===============================================================  ====================
``alexnet_cifar``  FedMIA AlexNet CIFAR variant, global max pool, ``fc``            --
``resnet18_gn``    ResNet18, GroupNorm(32), no stem max-pool, ``linear``            ``groups=32``
``lenet_dlg``      DLG 3-conv sigmoid LeNet, ``fc``                                 ``init="uniform"``
``lenet_soteria``  Soteria 4-conv sigmoid LeNet, ``fc``                             ``init="default"``
``convnet64``      Inverting Gradients ConvNet width 64, ``linear``                 ``norm="instance"``,
                                                                                    ``width=64``
``mlp``            flatten -> hidden ReLU layers -> ``fc``                          ``hidden=[256,128]``
=================  ===============================================================  ====================

``init="uniform"`` re-initialises every weight and bias U(-0.5, 0.5) (DLG); ``"default"`` keeps PyTorch's init.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

from torch import nn

from fedleak.models._common import apply_init, check_input_shape
from fedleak.models.alexnet import AlexNetCifar
from fedleak.models.convnet import ConvNet
from fedleak.models.lenet import LeNetDLG, LeNetSoteria
from fedleak.models.mlp import MLP
from fedleak.models.resnet import ResNet18GN

__all__ = ["build_model", "available_models", "AlexNetCifar", "ResNet18GN", "LeNetDLG", "LeNetSoteria", "ConvNet", "MLP"]


def _alexnet_cifar(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    return AlexNetCifar(num_classes, in_channels=input_shape[0])


def _resnet18_gn(num_classes: int, input_shape: tuple[int, int, int], groups: int = 32) -> nn.Module:
    return ResNet18GN(num_classes, in_channels=input_shape[0], groups=groups)


def _lenet_dlg(num_classes: int, input_shape: tuple[int, int, int], init: str = "uniform") -> nn.Module:
    model = LeNetDLG(num_classes, input_shape)
    apply_init(model, init, "lenet_dlg")
    return model


def _lenet_soteria(num_classes: int, input_shape: tuple[int, int, int], init: str = "default") -> nn.Module:
    model = LeNetSoteria(num_classes, input_shape)
    apply_init(model, init, "lenet_soteria")
    return model


def _convnet64(
    num_classes: int, input_shape: tuple[int, int, int], norm: str = "instance", width: int = 64
) -> nn.Module:
    return ConvNet(num_classes, input_shape, width=width, norm=norm)


def _mlp(num_classes: int, input_shape: tuple[int, int, int], hidden: Sequence[int] = (256, 128)) -> nn.Module:
    return MLP(num_classes, input_shape, hidden=hidden)


_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "alexnet_cifar": _alexnet_cifar,
    "resnet18_gn": _resnet18_gn,
    "lenet_dlg": _lenet_dlg,
    "lenet_soteria": _lenet_soteria,
    "convnet64": _convnet64,
    "mlp": _mlp,
}


def available_models() -> list[str]:
    return sorted(_REGISTRY)


def build_model(name: str, num_classes: int, input_shape: tuple[int, int, int], **options) -> nn.Module:
    """Build a fresh (randomly initialised, seeded by the global torch RNG) model."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose from: {', '.join(available_models())}")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    shape = check_input_shape(input_shape)
    builder = _REGISTRY[name]
    allowed = [p for p in inspect.signature(builder).parameters if p not in ("num_classes", "input_shape")]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"model {name!r} got unknown option(s) {', '.join(unknown)}; accepted: {', '.join(allowed) or 'none'}"
        )
    return builder(int(num_classes), shape, **options)
