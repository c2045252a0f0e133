"""Model registry: parameter counts from the specs, shapes, and the properties signals/inversion rely on."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from conftest import assert_within, longest_sum, rounding_tol
from fedleak.models import available_models, build_model

BN_FREE = ["alexnet_cifar", "convnet64", "lenet_dlg", "lenet_soteria", "mlp", "resnet18_gn"]
ALL = sorted(BN_FREE + ["resnet18_bn", "resnet20_bn"])


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


def test_available_models_lists_all():
    assert available_models() == ALL


def test_unknown_model_one_line_error():
    with pytest.raises(ValueError) as e:
        build_model("vgg", 10, (3, 32, 32))
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("unknown model 'vgg'; choose from: ")
    for name in ALL:
        assert name in msg


def test_unknown_option_rejected():
    with pytest.raises(ValueError, match="unknown option"):
        build_model("alexnet_cifar", 10, (3, 32, 32), width=3)
    with pytest.raises(ValueError, match="init"):
        build_model("lenet_dlg", 10, (3, 32, 32), init="xavier")


@pytest.mark.parametrize(
    "name,classes,shape,expected",
    [
        ("alexnet_cifar", 100, (3, 32, 32), 2_495_396),  # fedmia.md §1.5
        ("alexnet_cifar", 23, (3, 64, 64), 2_475_607),  # fedmia.md §1.5 (Dermnet)
        ("resnet18_gn", 100, (3, 32, 32), 11_220_132),
        ("resnet18_gn", 23, (3, 64, 64), 11_180_631),
        ("lenet_dlg", 100, (3, 32, 32), 85_036),  # inversion.md §1.1
        ("lenet_soteria", 10, (3, 32, 32), 19_438),  # inversion.md §1.3
        ("convnet64", 10, (3, 32, 32), 2_904_970),  # inversion.md §2.2
    ],
)
def test_parameter_counts(name, classes, shape, expected):
    assert n_params(build_model(name, classes, shape)) == expected


def test_alexnet_count_from_layer_table():
    # independent arithmetic from the spec's layer table
    conv = lambda cin, cout, k: cin * cout * k * k + cout  # noqa: E731
    C = 100
    expected = conv(3, 64, 11) + conv(64, 192, 5) + conv(192, 384, 3) + conv(384, 256, 3) + conv(256, 256, 3)
    expected += 256 * C + C
    assert n_params(build_model("alexnet_cifar", C, (3, 32, 32))) == expected


def test_mlp_count_and_hidden_option():
    m = build_model("mlp", 10, (1, 8, 8), hidden=[32])
    assert n_params(m) == (64 * 32 + 32) + (32 * 10 + 10)
    m = build_model("mlp", 10, (3, 32, 32))  # default hidden [256, 128]
    assert n_params(m) == (3072 * 256 + 256) + (256 * 128 + 128) + (128 * 10 + 10)


SHAPES = [
    ("alexnet_cifar", (3, 32, 32)),
    ("alexnet_cifar", (3, 64, 64)),
    ("alexnet_cifar", (1, 32, 32)),
    ("resnet18_gn", (3, 32, 32)),
    ("resnet18_gn", (1, 64, 64)),
    ("lenet_dlg", (3, 32, 32)),
    ("lenet_dlg", (1, 28, 28)),
    ("lenet_dlg", (3, 64, 64)),
    ("lenet_soteria", (3, 32, 32)),
    ("lenet_soteria", (1, 64, 64)),
    ("convnet64", (3, 32, 32)),
    ("convnet64", (1, 64, 64)),
    ("mlp", (3, 32, 32)),
    ("mlp", (1, 8, 8)),
    ("mlp", (3, 64, 64)),
]


@pytest.mark.numerics
@pytest.mark.parametrize("name,shape", SHAPES)
def test_output_shape_and_batch_independence(name, shape):
    torch.manual_seed(0)
    m = build_model(name, 7, shape)
    x = torch.rand(3, *shape)
    with torch.no_grad():
        out = m(x)
        single = m(x[1:2])
    assert out.shape == (3, 7)
    assert torch.isfinite(out).all()
    # no cross-sample coupling (no BatchNorm): a sample's logits do not depend on its batch mates. A batch of 3 and
    # a batch of 1 may run different float32 kernels, so the two agree to float32 rounding of the longest sum,
    # scaled by the logits (a coupling would move them by O(1), far outside it)
    tol = rounding_tol(longest_sum(m, x), float(out.abs().max()))
    assert_within(out[1:2], single, tol, name)


@pytest.mark.parametrize("name", BN_FREE)
def test_no_batchnorm_no_inplace_train_equals_eval(name):
    torch.manual_seed(1)
    m = build_model(name, 5, (3, 32, 32))
    for mod in m.modules():
        assert not isinstance(mod, nn.modules.batchnorm._BatchNorm)
        assert not isinstance(mod, nn.Dropout)
        assert not getattr(mod, "inplace", False)
    assert len(list(m.buffers())) == 0
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        a = m.train()(x)
        b = m.eval()(x)
    assert torch.equal(a, b)


@pytest.mark.numerics
@pytest.mark.parametrize("name", ["alexnet_cifar", "lenet_dlg", "convnet64", "mlp", "resnet18_gn"])
def test_torch_func_per_sample_grad_matches_autograd(name):
    torch.manual_seed(2)
    shape = (3, 16, 16) if name != "convnet64" else (3, 18, 18)
    m = build_model(name, 4, shape)
    x, y = torch.rand(2, *shape), torch.tensor([1, 3])
    params = {k: v.detach() for k, v in m.named_parameters()}

    def loss(p, xi, yi):
        return F.cross_entropy(torch.func.functional_call(m, p, (xi[None],)), yi[None])

    g = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, x, y)
    # reference: a plain autograd backward of sample 1 alone, in float64 on a copy of the same model
    m64 = copy.deepcopy(m).double()
    F.cross_entropy(m64(x[1:2].double()), y[1:2]).backward()
    ref = {k: p.grad for k, p in m64.named_parameters()}
    # float32 rounding of the longest sum, at the scale of the largest gradient entry (ConvNet-64's conv biases,
    # followed by instance norm, have an exactly zero gradient: only an absolute scale makes sense for them)
    scale = max(float(r.abs().max()) for r in ref.values())
    tol = rounding_tol(longest_sum(m, x), scale)
    assert tol < 1e-3 * scale  # still far below any real per-sample mix-up
    for k in ref:
        assert_within(g[k][1], ref[k], tol, f"vmap {k}")
    # plain float32 autograd is held to the same bound: the tolerance is float32's, not a property of vmap
    m.zero_grad()
    F.cross_entropy(m(x[1:2]), y[1:2]).backward()
    for k, p in m.named_parameters():
        assert_within(p.grad, ref[k], tol, f"autograd {k}")


def test_alexnet_matches_spec_forward():
    """Rebuild the spec's forward (in-place ReLU, max_pool2d with window x.shape[-1]) and compare."""
    torch.manual_seed(3)
    m = build_model("alexnet_cifar", 10, (3, 64, 64))
    x = torch.rand(2, 3, 64, 64)

    def spec_forward(x):
        x = F.max_pool2d(F.relu(m.conv1(x), inplace=True), 2, 2)
        assert x.shape[1:] == (64, 8, 8)
        x = F.max_pool2d(F.relu(m.conv2(x)), 2, 2)
        assert x.shape[1:] == (192, 4, 4)
        x = F.relu(m.conv5(F.relu(m.conv4(F.relu(m.conv3(x))))))
        x = torch.max_pool2d(x, x.shape[-1]).flatten(1)
        return m.fc(x)

    with torch.no_grad():
        torch.testing.assert_close(m(x), spec_forward(x))


def test_lenet_dlg_matches_reference_and_uniform_init():
    torch.manual_seed(4)
    m = build_model("lenet_dlg", 100, (3, 32, 32))
    for p in m.parameters():  # DLG's U(-0.5, 0.5) on weights and biases
        assert p.min() >= -0.5 and p.max() <= 0.5
        assert p.abs().max() > 0.4  # far outside PyTorch's default bounds for the 768-wide fc
    ref = nn.Sequential(
        nn.Conv2d(3, 12, 5, padding=2, stride=2), nn.Sigmoid(),
        nn.Conv2d(12, 12, 5, padding=2, stride=2), nn.Sigmoid(),
        nn.Conv2d(12, 12, 5, padding=2, stride=1), nn.Sigmoid(),
        nn.Flatten(), nn.Linear(768, 100),
    )  # fmt: skip
    with torch.no_grad():
        for a, b in zip(ref.parameters(), m.parameters()):
            assert a.shape == b.shape
            a.copy_(b)
        x = torch.rand(2, 3, 32, 32)
        torch.testing.assert_close(m(x), ref(x))
    d = build_model("lenet_dlg", 100, (3, 32, 32), init="default")
    assert d.fc.weight.abs().max() <= 1 / math.sqrt(768) + 1e-7


def test_lenet_soteria_fc_is_named_linear_with_768_inputs():
    torch.manual_seed(5)
    m = build_model("lenet_soteria", 10, (3, 32, 32))
    fc = dict(m.named_modules())["fc"]
    assert isinstance(fc, nn.Linear) and fc.in_features == 768
    assert sum(isinstance(mod, nn.Conv2d) for mod in m.modules()) == 4
    assert sum(isinstance(mod, nn.Sigmoid) for mod in m.modules()) == 4
    seen = {}
    fc.register_forward_hook(lambda mod, inp, out: seen.setdefault("r", inp[0]))
    with torch.no_grad():
        m(torch.rand(2, 3, 32, 32))
    r = seen["r"]
    assert r.shape == (2, 768) and (r > 0).all() and (r < 1).all()  # sigmoid features


@pytest.mark.numerics
def test_convnet64_representation_is_2304_and_linear_is_last():
    torch.manual_seed(6)
    m = build_model("convnet64", 10, (3, 32, 32))
    assert sum(isinstance(mod, nn.Conv2d) for mod in m.modules()) == 8
    lin = dict(m.named_modules())["linear"]
    assert isinstance(lin, nn.Linear) and (lin.in_features, lin.out_features) == (2304, 10)
    # parameter order: linear.weight is input_gradient[-2] as in the original
    names = [k for k, _ in m.named_parameters()]
    assert names[-2:] == ["linear.weight", "linear.bias"]
    seen = {}
    lin.register_forward_hook(lambda mod, inp, out: seen.setdefault("r", inp[0]))
    with torch.no_grad():
        m(torch.rand(1, 3, 32, 32))
    assert seen["r"].shape == (1, 2304)
    # the default norm is train-mode BatchNorm on a single image (per-channel stats over H, W)
    bn = nn.BatchNorm2d(64).train().double()
    with torch.no_grad():
        z = m.convs[0](torch.rand(1, 3, 32, 32))
        ref = bn(z.double())  # float64 reference
        # per channel a mean and a variance over H·W, then (z − μ)/σ: conditioned by max|z|/σ
        cond = float((z.double().abs().amax((2, 3)) / z.double().std((2, 3), unbiased=False)).max())
        assert_within(m.norms[0](z), ref, rounding_tol(32 * 32, cond), "norm vs BN")
    assert n_params(build_model("convnet64", 10, (3, 32, 32), norm="none")) == 2_904_970 - 2 * 1600
    with pytest.raises(ValueError, match="too small"):
        build_model("convnet64", 10, (3, 8, 8))


def test_build_check_leaves_weights_modes_and_statistics_as_a_plain_build(tmp_path, monkeypatch):
    """build_model's fit check runs the real model on one sample: the weights equal the builder's own under the same
    seed, no BatchNorm statistic moves, and every module keeps the mode its factory gave it."""
    from fedleak.models import MODELS

    torch.manual_seed(5)
    want = MODELS.resolve("resnet20_bn")(10, (3, 32, 32))
    torch.manual_seed(5)
    got = build_model("resnet20_bn", 10, (3, 32, 32))
    assert got.training and all(m.training for m in got.modules())
    for (n, a), (_, b) in zip(want.state_dict().items(), got.state_dict().items()):
        assert torch.equal(a, b), n  # running_mean 0, running_var 1, num_batches_tracked 0, weights bit-equal

    (tmp_path / "modal_nets_check.py").write_text(
        "import torch\n"
        "def make(num_classes, input_shape):\n"
        "    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.5), torch.nn.Linear(64, num_classes))\n"
        "    net[1].eval()  # a factory's deliberate mode\n"
        "    return net\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    net = build_model("modal_nets_check:make", 3, (1, 8, 8))
    assert net.training and not net[1].training


def test_build_check_on_the_real_model_still_names_the_size_needed():
    with pytest.raises(ValueError, match=r"alexnet_cifar' needs images of at least \d+x\d+"):
        build_model("alexnet_cifar", 10, (3, 8, 8))
