"""The BatchNorm models: closed-form parameter counts, buffers, and what train/eval mode mean for them."""

import pytest
import torch
from torch import nn

from conftest import assert_within, longest_sum, rounding_tol
from fedleak.models import build_model
from fedleak.models.functional import batchnorm_state_names


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


def conv(cin: int, cout: int, k: int) -> int:  # bias-free
    return cin * cout * k * k


def bn(c: int) -> int:  # affine weight + bias
    return 2 * c


def resnet20_count(c_in: int, classes: int) -> int:
    """He et al. 2016 §4.2: stem 3x3/16, 3 stages x 3 basic blocks of 16/32/64, option-A (parameter-free)
    shortcuts, global average pool, Linear(64, C)."""
    total, prev = conv(c_in, 16, 3) + bn(16), 16
    for width in (16, 32, 64):
        for _ in range(3):
            total += conv(prev, width, 3) + bn(width) + conv(width, width, 3) + bn(width)
            prev = width
    return total + 64 * classes + classes


def resnet18_count(c_in: int, classes: int) -> int:
    total, prev = conv(c_in, 64, 3) + bn(64), 64
    for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for b in range(2):
            s = stride if b == 0 else 1
            total += conv(prev, width, 3) + bn(width) + conv(width, width, 3) + bn(width)
            if s != 1 or prev != width:
                total += conv(prev, width, 1) + bn(width)  # projection shortcut
            prev = width
    return total + 512 * classes + classes


@pytest.mark.parametrize("classes,c_in", [(10, 3), (100, 3), (7, 1)])
def test_resnet_bn_parameter_counts_closed_form(classes, c_in):
    assert n_params(build_model("resnet20_bn", classes, (c_in, 32, 32))) == resnet20_count(c_in, classes)
    assert n_params(build_model("resnet18_bn", classes, (c_in, 32, 32))) == resnet18_count(c_in, classes)


def test_known_totals():
    # the usual figures: ResNet-20 "0.27M" (269,722 with option A), CIFAR ResNet-18 11,173,962 for 10 classes,
    # IG's ConvNet-64 2,904,970 parameters and 3,208 buffer entries (inversion.md §2.2)
    assert n_params(build_model("resnet20_bn", 10, (3, 32, 32))) == 269_722
    assert n_params(build_model("resnet18_bn", 10, (3, 32, 32))) == 11_173_962
    m = build_model("convnet64", 10, (3, 32, 32), norm="batch")
    assert n_params(m) == 2_904_970
    assert sum(b.numel() for b in m.buffers()) == 3_208


def test_resnet20_structure():
    m = build_model("resnet20_bn", 10, (3, 32, 32))
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    assert len(convs) == 19 and all(c.kernel_size == (3, 3) and c.bias is None for c in convs)  # 19 conv + 1 FC = 20
    assert sorted({c.out_channels for c in convs}) == [16, 32, 64]
    assert isinstance(m.linear, nn.Linear) and m.linear.in_features == 64
    assert sum(isinstance(mod, nn.BatchNorm2d) for mod in m.modules()) == 19


@pytest.mark.parametrize("name,opts", [("resnet18_bn", {}), ("resnet20_bn", {}), ("convnet64", {"norm": "batch"})])
def test_bn_models_have_running_stats_and_eval_is_per_sample(name, opts):
    torch.manual_seed(0)
    m = build_model(name, 5, (3, 32, 32), **opts)
    names = batchnorm_state_names(m)
    buffers = {n for n, _ in m.named_buffers()}
    assert buffers and buffers <= names
    assert any(n.endswith("running_mean") for n in buffers) and any(n.endswith("num_batches_tracked") for n in buffers)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        for mod in m.modules():  # non-trivial running statistics
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
        m.eval()
        out, single = m(x), m(x[1:2])
        m.train()
        batch_stats = m(x)
    # eval: a fixed per-sample function (batch mates do not matter, to float32 rounding)
    tol = rounding_tol(longest_sum(m, x), float(out.abs().max()))
    assert_within(out[1:2], single, tol, name)
    # train: batch statistics, a different function
    assert float((batch_stats - out).abs().max()) > 1e-3
