"""Model registry: ``build_model(name, num_classes, input_shape, **options) -> nn.Module``.

Every model uses out-of-place activations and no dropout. All but the ``*_bn`` models and ``convnet64`` with
``norm="batch"`` are BatchNorm-free, so ``train()``/``eval()`` give identical outputs; the BatchNorm models carry
running statistics as buffers and are used in eval mode for signals (docs/byo.md, "BatchNorm models").

=================  ===============================================================  ====================
name               architecture                                                     options
=================  ===============================================================  ====================
``alexnet_cifar``  FedMIA AlexNet CIFAR variant, global max pool, ``fc``            --
``resnet18_gn``    ResNet18, GroupNorm(32), no stem max-pool, ``linear``            ``groups=32``
``resnet18_bn``    ResNet18, BatchNorm, no stem max-pool, ``linear``                --
``resnet20_bn``    He et al. CIFAR ResNet-20 (16/32/64, option-A shortcuts), BN     --
``lenet_dlg``      DLG 3-conv sigmoid LeNet, ``fc``                                 ``init="uniform"``
``lenet_soteria``  Soteria 4-conv sigmoid LeNet, ``fc``                             ``init="default"``
``convnet64``      Inverting Gradients ConvNet width 64, ``linear``;                ``norm="instance"``,
                   ``norm``: instance | group | batch | none
                                                                                    ``width=64``
``mlp``            flatten -> hidden ReLU layers -> ``fc``                          ``hidden=[256,128]``
=================  ===============================================================  ====================

``init="uniform"`` re-initialises every weight and bias U(-0.5, 0.5) (DLG); ``"default"`` keeps PyTorch's init.

Your own model: ``model.name`` may be an import path ``package.module:factory`` (see docs/byo.md), where
``factory(num_classes, input_shape, **options) -> nn.Module`` draws its initial weights from torch's global RNG
(fedleak seeds it). It is checked like the zoo's models (meta-device dry run, output shape, size limit), and a
wrong signature, an exception or a non-``nn.Module`` result is a one-line ValueError.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence

import torch
from torch import nn

from fedleak.models._common import apply_init, check_input_shape
from fedleak.models.alexnet import AlexNetCifar
from fedleak.models.convnet import ConvNet
from fedleak.models.lenet import LeNetDLG, LeNetSoteria
from fedleak.models.mlp import MLP
from fedleak.registry import Registry, article
from fedleak.models.resnet import ResNet18GN
from fedleak.models.resnet_bn import ResNet18BN, ResNet20BN

Builder = Callable[..., nn.Module]  # builder(num_classes, input_shape, **options) -> nn.Module
#: The model zoo: adding a model is one file with the nn.Module and one ``@MODELS.register("name")`` builder here.
MODELS: Registry[Builder] = Registry("model")

__all__ = ["MODELS", "build_model", "available_models", "AlexNetCifar", "ResNet18GN", "ResNet18BN", "ResNet20BN", "LeNetDLG", "LeNetSoteria", "ConvNet", "MLP"]


@MODELS.register("alexnet_cifar")
def _alexnet_cifar(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    return AlexNetCifar(num_classes, in_channels=input_shape[0])


@MODELS.register("resnet18_gn")
def _resnet18_gn(num_classes: int, input_shape: tuple[int, int, int], groups: int = 32) -> nn.Module:
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or 64 % groups:
        raise ValueError(f"resnet18_gn: groups must divide 64 (1, 2, 4, 8, 16, 32 or 64), got {groups!r}")
    return ResNet18GN(num_classes, in_channels=input_shape[0], groups=groups)


@MODELS.register("resnet18_bn")
def _resnet18_bn(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    return ResNet18BN(num_classes, in_channels=input_shape[0])


@MODELS.register("resnet20_bn")
def _resnet20_bn(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    return ResNet20BN(num_classes, in_channels=input_shape[0])


@MODELS.register("lenet_dlg")
def _lenet_dlg(num_classes: int, input_shape: tuple[int, int, int], init: str = "uniform") -> nn.Module:
    model = LeNetDLG(num_classes, input_shape)
    apply_init(model, init, "lenet_dlg")
    return model


@MODELS.register("lenet_soteria")
def _lenet_soteria(num_classes: int, input_shape: tuple[int, int, int], init: str = "default") -> nn.Module:
    model = LeNetSoteria(num_classes, input_shape)
    apply_init(model, init, "lenet_soteria")
    return model


@MODELS.register("convnet64")
def _convnet64(
    num_classes: int, input_shape: tuple[int, int, int], norm: str = "instance", width: int = 64
) -> nn.Module:
    return ConvNet(num_classes, input_shape, width=width, norm=norm)


@MODELS.register("mlp")
def _mlp(num_classes: int, input_shape: tuple[int, int, int], hidden: Sequence[int] = (256, 128)) -> nn.Module:
    return MLP(num_classes, input_shape, hidden=hidden)




#: A model with more trainable parameters than this is refused before its weights are allocated (1 GiB of float32).
MAX_PARAMETERS = 2**28
#: Input sides the size search tries up to.
MAX_PROBE_SIDE = 1024
#: The image side each architecture was designed for (suggested when the data is too small for it).
DESIGN_SIDE = {"alexnet_cifar": 32, "resnet18_gn": 32, "resnet18_bn": 32, "resnet20_bn": 32, "lenet_dlg": 32, "lenet_soteria": 32, "convnet64": 32}


def available_models() -> list[str]:
    return sorted(MODELS.names())


def build_model(name: str, num_classes: int, input_shape: tuple[int, int, int], **options) -> nn.Module:
    """Build a fresh (randomly initialised, seeded by the global torch RNG) model.

    Before any weight is allocated the model is built on the ``meta`` device to count its parameters: a model too
    large (:data:`MAX_PARAMETERS`) is a ValueError. The meta build draws no random numbers, so the weights are
    unchanged. The real model then runs one zero sample in eval mode without gradients (its modes are restored, no
    running statistic moves): one that does not fit the input size is a ValueError that says which size it needs
    (found by dry runs on the meta device). Running the check on the meta device costs a fresh process about 1 s
    of lazy imports (its kernels), more than a whole digits round; the real CPU sample costs milliseconds.
    """
    builder = MODELS.resolve(name)
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    shape = check_input_shape(input_shape)
    if name in MODELS.names():  # the zoo's builders; a user's factory (import path or fedleak.api object) below
        allowed = [p for p in inspect.signature(builder).parameters if p not in ("num_classes", "input_shape")]
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ValueError(
                f"model {name!r} got unknown option(s) {', '.join(unknown)}; accepted: {', '.join(allowed) or 'none'}"
            )
    else:
        check_factory_signature(name, builder, int(num_classes), shape, options)
    build = _checked(name, functools.partial(builder, int(num_classes), **options))
    error, n_params = _dry_run(build, shape, int(num_classes), forward=False)
    if error is None:
        if n_params > MAX_PARAMETERS:
            raise ValueError(
                f"model {name!r} with options {options or {}} would have {n_params:,} parameters, above the limit "
                f"{MAX_PARAMETERS:,}; use smaller layer widths"
            )
        model = build(shape)
        error = _sample_error(model, shape, int(num_classes))
        if error is None:
            return model
    raise ValueError(_misfit_message(name, build, shape, int(num_classes), error, options))


def check_factory_signature(name: str, factory: Builder, num_classes: int, shape: tuple[int, int, int],
                            options: dict) -> None:
    """A user's factory must accept ``factory(num_classes, input_shape, **options)``; else a one-line ValueError."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return  # a builtin or C callable without a signature: its call says whether it fits
    try:
        sig.bind(num_classes, shape, **options)
    except TypeError as e:
        opts = f", {', '.join(f'{k}=...' for k in options)}" if options else ""
        raise ValueError(
            f"model factory {name!r} has the signature {sig} but fedleak calls it as "
            f"factory(num_classes, input_shape{opts}) ({e}); change its parameters or model.options"
        ) from None


class FactoryError(ValueError):
    """A model factory raised or returned something that is not an nn.Module (reported as is, no size search)."""


def _checked(name: str, build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """``build`` whose exceptions other than ValueError/RuntimeError/TypeError, and a result that is not an
    ``nn.Module``, become a one-line :class:`FactoryError` naming the model."""

    def run(shape: tuple[int, int, int]) -> nn.Module:
        try:
            model = build(shape)
        except (ValueError, RuntimeError, TypeError, NotImplementedError):
            raise
        except Exception as e:
            text = str(e).strip().splitlines()
            raise FactoryError(f"model {name!r} raised {type(e).__name__}" + (f": {text[0]}" if text else "")) from None
        if not isinstance(model, nn.Module):
            raise FactoryError(f"model {name!r} returned {article(type(model).__name__)}, not a torch.nn.Module; "
                               "return the network (an nn.Module instance)")
        return model

    return run


def _dry_run(
    build: Callable[..., nn.Module], shape: tuple[int, int, int], num_classes: int, forward: bool = True
) -> tuple[str | None, int]:
    """(error or None, trainable parameter count) of the model built on the meta device and, with ``forward``, fed
    one sample there."""
    try:
        with torch.device("meta"), torch.no_grad():
            model = build(shape).eval()  # a FactoryError propagates; BatchNorm: eval, so one sample suffices
            n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
            if not forward:
                return None, n_params
            try:
                out = model(torch.zeros((1, *shape)))
            except NotImplementedError:  # an op without a meta kernel: no shape check possible, trust the build
                return None, n_params
    except FactoryError:
        raise
    except Exception as e:
        return _error_line(e), 0
    return _output_error(out, num_classes), n_params


def _sample_error(model: nn.Module, shape: tuple[int, int, int], num_classes: int) -> str | None:
    """The error of the built model on one zero sample (eval mode, no gradients; every module's mode restored), or
    None."""
    modes = [(m, m.training) for m in model.modules()]
    p = next(iter(model.parameters()), None)
    x = torch.zeros((1, *shape), dtype=p.dtype if p is not None and p.is_floating_point() else torch.float32,
                    device=p.device if p is not None else "cpu")
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except Exception as e:
        return _error_line(e)
    finally:
        for m, training in modes:
            m.training = training
    return _output_error(out, num_classes)


def _error_line(e: Exception) -> str:
    """One line for a build or forward that raised: a ValueError/RuntimeError/TypeError's own first line (what zoo
    models raise), anything else (a user's forward) prefixed with its type."""
    if isinstance(e, (ValueError, RuntimeError, TypeError)):
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}" + (f": {text[0]}" if text else "")


def _output_error(out: object, num_classes: int) -> str | None:
    if not isinstance(out, torch.Tensor):
        return f"its forward returns {article(type(out).__name__)}, not a tensor of logits"
    if tuple(out.shape) != (1, num_classes):
        return f"its output has shape {tuple(out.shape)}, expected (1, {num_classes})"
    return None


def _smallest_side(build: Callable[..., nn.Module], channels: int, lo: int, num_classes: int) -> int | None:
    """The smallest square side above ``lo`` the model runs on (None: not even ``MAX_PROBE_SIDE``)."""
    hi = MAX_PROBE_SIDE
    if hi <= lo or _dry_run(build, (channels, hi, hi), num_classes)[0] is not None:
        return None
    while hi - lo > 1:  # invariant: lo fails, hi works
        mid = (lo + hi) // 2
        if _dry_run(build, (channels, mid, mid), num_classes)[0] is None:
            hi = mid
        else:
            lo = mid
    return hi


def _misfit_message(name: str, build, shape: tuple[int, int, int], num_classes: int, error: str, options) -> str:
    c, h, w = shape
    side = _smallest_side(build, c, min(h, w), num_classes)
    if side is None:  # not a matter of size: a bad option or a broken combination
        return f"model {name!r} with options {options or {}} does not work on {c}x{h}x{w} inputs: {error}"
    design = DESIGN_SIDE.get(name)
    want = max(side, design or side)
    made = f"; it was designed for {design}x{design}" if design else ""
    return (
        f"model {name!r} needs images of at least {side}x{side}: the data's {h}x{w} is too small{made}; "
        f"resize them, e.g. set data.image_size={want}"
    )
