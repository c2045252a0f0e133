"""Per-sample signals against an independent naive computation: one autograd backward per sample, then torch.dot /
norms / F.cosine_similarity per (client, sample), exactly as the official code does it."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fedleak.models import build_model
from fedleak.signals import layers
from fedleak.signals.compute import (
    _dots_jvp,
    chunk_size_for,
    cos_and_diff,
    flat_params,
    flatten_state,
    gradient_signals,
    per_sample_gradients,
    per_sample_losses,
    squared_norms,
    trainable_names,
)

RTOL = 1e-5


def assert_rel(actual: torch.Tensor, expected: torch.Tensor, rtol: float = RTOL) -> None:
    """max |a - e| <= rtol * max |e| (relative to the array's scale)."""
    actual, expected = actual.double(), expected.double()
    assert actual.shape == expected.shape
    err = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert err <= rtol * scale, f"max abs err {err:.3e} > {rtol:g} * {scale:.3e}"


def naive(model: nn.Module, params: dict[str, torch.Tensor], deltas: torch.Tensor, x, y):
    """One backward per sample on a copy of the model holding `params`; per-(k, n) Python loop."""
    m = copy.deepcopy(model).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.copy_(params[n])
    K, N = deltas.shape[0], len(x)
    loss, dot, cos, diff, gn2 = torch.zeros(N), torch.zeros(K, N), torch.zeros(K, N), torch.zeros(K, N), torch.zeros(N)
    diff_direct = torch.zeros(K, N, dtype=torch.float64)
    cos32 = torch.zeros(K, N)
    for i in range(N):
        m.zero_grad()
        li = F.cross_entropy(m(x[i : i + 1]), y[i : i + 1])
        li.backward()
        g = torch.cat([p.grad.reshape(-1) for p in m.parameters() if p.requires_grad])
        loss[i] = li.detach()
        gn2[i] = torch.dot(g, g)
        for k in range(K):
            d = deltas[k]
            dot[k, i] = torch.dot(g, d)
            cos32[k, i] = F.cosine_similarity(g, d, dim=0, eps=1e-30)
            diff[k, i] = torch.dot(d, d) - torch.dot(d - g, d - g)
            d64, g64 = d.double(), g.double()
            # F.cosine_similarity in float32 over millions of entries is itself only ~1e-5 accurate (AlexNet:
            # 2e-5 against float64), so the reference cosine of the float32 gradient is taken in float64
            cos[k, i] = F.cosine_similarity(g64, d64, dim=0, eps=1e-30)
            diff_direct[k, i] = d64.dot(d64) - (d64 - g64).dot(d64 - g64)
    return dict(loss=loss, dot=dot, cos=cos, cos32=cos32, diff=diff, gnorm2=gn2, diff_direct=diff_direct)


def make_case(name: str, shape, classes: int, N: int, K: int, seed: int = 0, **options):
    torch.manual_seed(seed)
    model = build_model(name, classes, shape, **options)
    # global params differ from the model's own values, so the functions must use the ones passed in
    glob = {n: p.detach() + 0.05 * torch.randn_like(p) * p.detach().std() for n, p in model.named_parameters()}
    x = torch.rand(N, *shape)
    y = torch.randint(0, classes, (N,))
    P = sum(p.numel() for p in model.parameters())
    # client 0 "trained" on the first 3 candidates (Δ = lr * sum of their gradients, so cos is large for them);
    # the others are random updates of realistic scale
    g = per_sample_gradients(model, glob, x[:3], y[:3], engine="vmap")
    deltas = 0.01 * torch.randn(K, P)
    deltas[0] = 0.1 * g.sum(0) + 1e-4 * torch.randn(P)
    return model, glob, deltas, x, y


CASES = {
    "mlp": dict(name="mlp", shape=(1, 8, 8), classes=5, N=13, K=4, hidden=[16, 12]),
    "lenet_dlg": dict(name="lenet_dlg", shape=(3, 16, 16), classes=10, N=11, K=3),
    "alexnet_cifar": dict(name="alexnet_cifar", shape=(3, 32, 32), classes=10, N=9, K=3),
    "convnet64": dict(name="convnet64", shape=(3, 18, 18), classes=10, N=6, K=2, width=8),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    spec = dict(CASES[request.param])
    c = make_case(spec.pop("name"), spec.pop("shape"), spec.pop("classes"), spec.pop("N"), spec.pop("K"), **spec)
    return (request.param, *c, naive(*c))


@pytest.mark.parametrize("engine", ["auto", "vmap", "layers-ghost", "layers-materialized"])
def test_every_signal_matches_naive_loop(case, engine, monkeypatch):
    name, model, glob, deltas, x, y, ref = case
    if engine == "vmap" and name in ("alexnet_cifar", "convnet64"):
        pytest.skip("vmap engine covered on the small models (slow on CPU for big convs)")
    if engine.startswith("layers"):
        # force every Linear/Conv2d weight through one path: Δ-weighted layer + Gram norms, or materialised G
        monkeypatch.setattr(layers, "_GHOST_MARGIN", float("inf") if engine == "layers-ghost" else -float("inf"))
        engine = "layers"
    out = gradient_signals(model, glob, deltas, x, y, chunk_size=4, engine=engine)
    assert out["dot"].shape == (len(deltas), len(x)) and out["gnorm2"].shape == (len(x),)
    assert out["dot"].dtype == torch.float32
    assert_rel(out["dot"], ref["dot"])
    assert_rel(out["gnorm2"], ref["gnorm2"])
    dnorm2 = (deltas.double() ** 2).sum(1)
    cos, diff = cos_and_diff(out["dot"], out["gnorm2"], dnorm2)
    assert_rel(cos, ref["cos"])
    assert_rel(cos, ref["cos32"], rtol=1e-4)  # the official float32 F.cosine_similarity, to its own accuracy
    # the naive float32 ||Δ||² − ||Δ−g||² cancels catastrophically; the float64 direct form is the reference
    assert_rel(diff, ref["diff_direct"])
    assert_rel(ref["diff"], ref["diff_direct"], rtol=1e-2)  # sanity: the float32 official form is near it
    # a client that trained on a sample has a clearly positive cosine with it
    assert (cos[0, :3] > 0.1).all()


def test_losses_match_naive(case):
    name, model, glob, deltas, x, y, ref = case
    assert_rel(per_sample_losses(model, glob, x, y, batch_size=4), ref["loss"])
    # params=None: the model's own parameters
    with torch.no_grad():
        own = torch.stack([F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]) for i in range(len(x))])
    assert_rel(per_sample_losses(model, None, x, y), own)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # inside torch's jvp
def test_jvp_dots_agree(case):
    name, model, glob, deltas, x, y, ref = case
    assert_rel(_dots_jvp(model, glob, deltas, x, y, batch_size=5), ref["dot"], rtol=1e-4)


@pytest.mark.parametrize("engine", ["layers", "vmap"])
def test_chunking_invariance(engine):
    model, glob, deltas, x, y = make_case("lenet_dlg", (3, 16, 16), 10, 15, 3, seed=3)
    outs = [gradient_signals(model, glob, deltas, x, y, chunk_size=c, engine=engine) for c in (1, 7, 15, 1000)]
    for o in outs[1:]:
        assert_rel(o["dot"], outs[0]["dot"], rtol=1e-6)
        assert_rel(o["gnorm2"], outs[0]["gnorm2"], rtol=1e-6)


def test_memory_budget_sets_chunk_size():
    P = 2_495_396
    c = chunk_size_for(P, 512)
    assert c * P * 4 <= 512 * 2**20 < (c + 1) * P * 4
    assert chunk_size_for(P, 1) == 1  # never below one sample
    model, glob, deltas, x, y = make_case("mlp", (1, 8, 8), 5, 10, 2, hidden=[8])
    a = gradient_signals(model, glob, deltas, x, y, memory_budget_mb=1e-3)  # one sample per chunk
    b = gradient_signals(model, glob, deltas, x, y)
    assert_rel(a["dot"], b["dot"], rtol=1e-6)


def test_gradients_computed_once_for_all_clients():
    model, glob, deltas, x, y = make_case("lenet_dlg", (3, 16, 16), 10, 8, 6, seed=4)
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    gradient_signals(model, glob, deltas[:1], x, y, chunk_size=4)
    one = len(calls)
    calls.clear()
    gradient_signals(model, glob, deltas, x, y, chunk_size=4)
    assert len(calls) == one == 2  # two chunks, whatever K is


def test_model_state_untouched():
    model, glob, deltas, x, y = make_case("lenet_dlg", (3, 16, 16), 10, 5, 2, seed=5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    gradient_signals(model, glob, deltas, x, y)
    per_sample_losses(model, glob, x, y)
    assert model.training
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) and p.grad is None


def test_cos_and_diff_identities():
    torch.manual_seed(6)
    K, N, P = 3, 20, 50
    G = torch.randn(N, P, dtype=torch.float64)
    D = torch.randn(K, P, dtype=torch.float64)
    D[2] = 0.0  # a client with an all-zero update
    G[4] = 0.0  # a sample with a zero gradient
    dot, gn2, dn2 = D @ G.T, (G * G).sum(1), (D * D).sum(1)
    cos, diff = cos_and_diff(dot, gn2, dn2)
    ref_cos = F.cosine_similarity(G[None], D[:, None], dim=-1, eps=1e-30)
    ref_cos = torch.nan_to_num(ref_cos)
    torch.testing.assert_close(cos, ref_cos, rtol=1e-12, atol=1e-12)
    # diff = ||Δ||² − ||Δ − g||², checked directly
    direct = dn2[:, None] - ((D[:, None, :] - G[None]) ** 2).sum(-1)
    torch.testing.assert_close(diff, direct, rtol=1e-10, atol=1e-10)
    assert (cos[2] == 0).all() and (cos[:, 4] == 0).all()
    assert (diff[2] == -gn2).all()
    assert cos.abs().max() <= 1 + 1e-12
    # mixed dtypes / a [K, N] gnorm2 broadcast like the store's layout
    c32, d32 = cos_and_diff(dot.float(), gn2.float().expand(K, N), dn2)
    assert c32.dtype == torch.float32
    assert_rel(c32, cos)
    assert_rel(d32, diff)
    with pytest.raises(ValueError):
        cos_and_diff(dot, gn2, dn2[:2])


def test_squared_norms_in_float64():
    torch.manual_seed(10)
    d = torch.randn(4, 100_003) * torch.tensor([1e-3, 1.0, 1e3, 0.0])[:, None]
    ref = torch.tensor([sum(float(v) ** 2 for v in row.tolist()) for row in d], dtype=torch.float64)
    out = squared_norms(d)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=0)


def test_flatten_helpers_follow_named_parameters_order():
    torch.manual_seed(7)
    model = build_model("mlp", 3, (1, 4, 4), hidden=[5])
    model.fc.bias.requires_grad_(False)
    names = trainable_names(model)
    assert names == ["body.1.weight", "body.1.bias", "fc.weight"]
    v = flat_params(model)
    assert v.shape == (16 * 5 + 5 + 5 * 3,)
    assert torch.equal(v[:80], model.body[1].weight.reshape(-1))
    assert torch.equal(v[-15:], model.fc.weight.reshape(-1))
    state = {n: p.detach() * 2 for n, p in model.named_parameters()}
    assert torch.equal(flatten_state(state, names), 2 * v)
    with pytest.raises(KeyError):
        flatten_state({}, names)


def test_frozen_parameters_are_excluded():
    model, glob, _, x, y = make_case("mlp", (1, 8, 8), 5, 6, 1, hidden=[8])
    model.fc.weight.requires_grad_(False)
    P = sum(p.numel() for p in model.parameters() if p.requires_grad)
    deltas = torch.randn(2, P)
    out = gradient_signals(model, glob, deltas, x, y)
    full = per_sample_gradients(model, glob, x, y, engine="vmap")
    assert full.shape == (6, P)
    assert_rel(out["dot"], deltas @ full.T)
    with pytest.raises(ValueError, match=r"\[K, P\]"):
        gradient_signals(model, glob, torch.randn(2, P + 1), x, y)


class _Scaled(nn.Module):
    """A raw parameter outside Linear/Conv2d/GroupNorm: the layer engine cannot serve it."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 4)
        self.scale = nn.Parameter(torch.tensor([1.5, 0.5, 2.0, 1.0]))

    def forward(self, x):
        return self.lin(x.flatten(1)) * self.scale


class _Reused(nn.Module):
    """The same Linear applied twice: per-layer hooks would see two calls."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.lin(torch.tanh(self.lin(x.flatten(1))))))


class _Tied(nn.Module):
    """Two Linear layers sharing one weight (named_parameters lists it once)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.b = nn.Linear(6, 6)
        self.b.weight = self.a.weight
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.b(torch.tanh(self.a(x.flatten(1))))))


@pytest.mark.parametrize("cls", [_Scaled, _Reused, _Tied])
def test_auto_falls_back_to_vmap(cls):
    torch.manual_seed(8)
    model = cls()
    x, y = torch.randn(7, 1, 2, 3), torch.randint(0, 3, (7,))
    glob = {n: p.detach() for n, p in model.named_parameters()}
    P = sum(p.numel() for p in model.parameters())
    deltas = torch.randn(2, P)
    ref = naive(model, glob, deltas, x, y)
    out = gradient_signals(model, glob, deltas, x, y, chunk_size=3)
    assert_rel(out["dot"], ref["dot"])
    assert_rel(out["gnorm2"], ref["gnorm2"])
    with pytest.raises((ValueError, RuntimeError)):
        gradient_signals(model, glob, deltas, x, y, engine="layers")
    with pytest.raises(ValueError, match="unknown engine"):
        gradient_signals(model, glob, deltas, x, y, engine="opacus")


class _Tokens(nn.Module):
    """Linear layers applied at several positions per sample (input [c, T, I])."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        h = torch.tanh(self.inp(x.reshape(x.shape[0], -1, 4)))  # [c, T=6, 8]
        return self.out(h).mean(1)


@pytest.mark.parametrize("margin", [float("inf"), -float("inf")])
def test_linear_at_several_positions(margin, monkeypatch):
    monkeypatch.setattr(layers, "_GHOST_MARGIN", margin)
    torch.manual_seed(9)
    model = _Tokens()
    x, y = torch.randn(5, 1, 4, 6), torch.randint(0, 3, (5,))
    glob = {n: p.detach() for n, p in model.named_parameters()}
    deltas = torch.randn(3, sum(p.numel() for p in model.parameters()))
    ref = naive(model, glob, deltas, x, y)
    out = gradient_signals(model, glob, deltas, x, y, chunk_size=2, engine="layers")
    assert_rel(out["dot"], ref["dot"])
    assert_rel(out["gnorm2"], ref["gnorm2"])
