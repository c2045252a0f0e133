"""Per-sample signals against an independent naive computation: one autograd backward per sample, then torch.dot /
norms / F.cosine_similarity per (client, sample), exactly as the official code does it — in float32 (the official
numbers) and in float64 (the reference every float32 engine is held to, within tolerances derived from the size
of the sums, see conftest.rounding_tol)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from conftest import EPS64, assert_within, longest_sum, rounding_tol
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

pytestmark = pytest.mark.numerics


def signal_tols(P: int, gnorm: torch.Tensor, dnorm: torch.Tensor) -> dict[str, torch.Tensor]:
    """Float32 rounding tolerances of the signals of [N] gradients and [K] updates over P parameters.

    ``dot = Σ g_i Δ_i`` sums P terms with ``Σ|g_i Δ_i| ≤ ‖g‖‖Δ‖``; ``gnorm2`` P terms of total ``‖g‖²``; the error of
    the float32 gradient itself is a sum over fewer (fan-in) terms, so P covers it; cos is the dot over ‖g‖‖Δ‖.
    """
    gd = dnorm.double()[:, None] * gnorm.double()[None, :]
    return dict(dot=rounding_tol(P, gd), gnorm2=rounding_tol(P, gnorm.double() ** 2), cos=rounding_tol(P, 1.0),
                diff=rounding_tol(P, 2 * gd + gnorm.double()[None, :] ** 2))


def _grad(m: nn.Module, xi: torch.Tensor, yi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    m.zero_grad()
    z = m(xi)
    li = F.cross_entropy(z, yi)
    li.backward()
    return li.detach(), torch.cat([p.grad.reshape(-1) for p in m.parameters() if p.requires_grad]), z.detach()


def _holding(model: nn.Module, params: dict[str, torch.Tensor], dtype: torch.dtype) -> nn.Module:
    m = copy.deepcopy(model).to(dtype).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.copy_(params[n])
    return m


def naive(model: nn.Module, params: dict[str, torch.Tensor], deltas: torch.Tensor, x, y):
    """One backward per sample on copies of the model holding `params`; per-(k, n) Python loop.

    float32 as the official code (``cos32``, ``diff32``); float64 for the reference values (the float32 inputs
    ``params``, ``deltas``, ``x`` promoted exactly), plus the scales the tolerances are derived from.
    """
    m32, m64 = _holding(model, params, torch.float32), _holding(model, params, torch.float64)
    K, N = deltas.shape[0], len(x)
    f64 = dict(dtype=torch.float64)
    loss, zmax, dot, cos, diff, gn2 = (torch.zeros(N, **f64), torch.zeros(N, **f64), torch.zeros(K, N, **f64),
                                       torch.zeros(K, N, **f64), torch.zeros(K, N, **f64), torch.zeros(N, **f64))
    cos32, diff32 = torch.zeros(K, N), torch.zeros(K, N)
    d64 = deltas.double()
    for i in range(N):
        _, g, _ = _grad(m32, x[i : i + 1], y[i : i + 1])
        loss[i], g64, z = _grad(m64, x[i : i + 1].double(), y[i : i + 1])
        zmax[i] = z.abs().max()
        gn2[i] = torch.dot(g64, g64)
        for k in range(K):
            d = deltas[k]
            cos32[k, i] = F.cosine_similarity(g, d, dim=0, eps=1e-30)
            diff32[k, i] = torch.dot(d, d) - torch.dot(d - g, d - g)
            dot[k, i] = torch.dot(g64, d64[k])
            cos[k, i] = F.cosine_similarity(g64, d64[k], dim=0, eps=1e-30)
            diff[k, i] = d64[k].dot(d64[k]) - (d64[k] - g64).dot(d64[k] - g64)  # the definition, in float64
    gnorm, dnorm = gn2.sqrt(), d64.norm(dim=1)
    return dict(loss=loss, dot=dot, cos=cos, diff=diff, gnorm2=gn2, cos32=cos32, diff32=diff32, gnorm=gnorm,
                dnorm=dnorm, zmax=zmax, tol=signal_tols(deltas.shape[1], gnorm, dnorm),
                loss_tol=rounding_tol(longest_sum(m32, x), 1.0 + loss + 2 * zmax))


def assert_signals(out: dict[str, torch.Tensor], ref: dict, what: str) -> None:
    for key in ("dot", "gnorm2"):
        assert_within(out[key], ref[key], ref["tol"][key], f"{what} {key}")


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


def self_tols(out: dict[str, torch.Tensor], deltas: torch.Tensor) -> dict[str, torch.Tensor]:
    """Tolerances between two float32 results of the same signals (each within its rounding tolerance)."""
    t = signal_tols(deltas.shape[1], out["gnorm2"].double().sqrt(), squared_norms(deltas).sqrt())
    return {k: 2 * v for k, v in t.items()}


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
    assert_signals(out, ref, engine)
    dnorm2 = (deltas.double() ** 2).sum(1)
    cos, diff = cos_and_diff(out["dot"], out["gnorm2"], dnorm2)
    tol = ref["tol"]
    assert_within(cos, ref["cos"], tol["cos"], "cos")
    # the official float32 F.cosine_similarity, to its own accuracy (both are within tol of the float64 value)
    assert_within(cos, ref["cos32"], 2 * tol["cos"], "cos vs official float32")
    assert_within(diff, ref["diff"], tol["diff"], "diff")
    # sanity: the official float32 ||Δ||² − ||Δ−g||² cancels catastrophically, to within the rounding of its terms
    d2, g2 = ref["dnorm"][:, None] ** 2, ref["gnorm2"][None, :]
    assert_within(ref["diff32"], ref["diff"], rounding_tol(deltas.shape[1], 3 * d2 + 2 * g2), "official diff")
    # a client that trained on a sample has a clearly positive cosine with it
    assert (cos[0, :3] > 0.1).all()


def test_losses_match_naive(case):
    name, model, glob, deltas, x, y, ref = case
    assert_within(per_sample_losses(model, glob, x, y, batch_size=4), ref["loss"], ref["loss_tol"], "loss")
    # params=None: the model's own parameters (float64 reference: a float64 copy, one sample at a time)
    m64 = copy.deepcopy(model).double()
    with torch.no_grad():
        z = torch.cat([m64(x[i : i + 1].double()) for i in range(len(x))])
    own = F.cross_entropy(z, y, reduction="none")
    tol = rounding_tol(longest_sum(model, x), 1.0 + own + 2 * z.abs().amax(1))
    assert_within(per_sample_losses(model, None, x, y), own, tol, "own loss")


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # inside torch's jvp
def test_jvp_dots_agree(case):
    name, model, glob, deltas, x, y, ref = case
    assert_within(_dots_jvp(model, glob, deltas, x, y, batch_size=5), ref["dot"], ref["tol"]["dot"], "jvp dot")


@pytest.mark.parametrize("engine", ["layers", "vmap"])
def test_chunking_invariance(engine):
    model, glob, deltas, x, y = make_case("lenet_dlg", (3, 16, 16), 10, 15, 3, seed=3)
    outs = [gradient_signals(model, glob, deltas, x, y, chunk_size=c, engine=engine) for c in (1, 7, 15, 1000)]
    # another chunk size is another batch size, for which a CPU may pick other float32 kernels: equal to rounding
    tol = self_tols(outs[0], deltas)
    for c, o in zip((7, 15, 1000), outs[1:]):
        for key in ("dot", "gnorm2"):
            assert_within(o[key], outs[0][key], tol[key], f"chunk {c} {key}")


def test_memory_budget_sets_chunk_size():
    P = 2_495_396
    c = chunk_size_for(P, 512)
    assert c * P * 4 <= 512 * 2**20 < (c + 1) * P * 4
    assert chunk_size_for(P, 1) == 1  # never below one sample
    model, glob, deltas, x, y = make_case("mlp", (1, 8, 8), 5, 10, 2, hidden=[8])
    a = gradient_signals(model, glob, deltas, x, y, memory_budget_mb=1e-3)  # one sample per chunk
    b = gradient_signals(model, glob, deltas, x, y)
    assert_within(a["dot"], b["dot"], self_tols(b, deltas)["dot"], "dot")


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
    assert_within(cos, ref_cos, rounding_tol(P, 1.0, eps=EPS64), "cos")  # all in float64: float64 rounding
    # diff = ||Δ||² − ||Δ − g||², checked directly (it cancels: the tolerance scales with the two terms)
    dist2 = ((D[:, None, :] - G[None]) ** 2).sum(-1)
    direct = dn2[:, None] - dist2
    assert_within(diff, direct, rounding_tol(P, dn2[:, None] + dist2, eps=EPS64), "diff")
    assert (cos[2] == 0).all() and (cos[:, 4] == 0).all()
    assert (diff[2] == -gn2).all()
    assert cos.abs().max() <= 1 + 1e-12
    # mixed dtypes / a [K, N] gnorm2 broadcast like the store's layout
    c32, d32 = cos_and_diff(dot.float(), gn2.float().expand(K, N), dn2)
    assert c32.dtype == torch.float32
    # no sums left in float32: only the rounding of the inputs and of the result (n = 1)
    assert_within(c32, cos, rounding_tol(1, 1.0), "cos from float32 inputs")
    assert_within(d32, diff, rounding_tol(1, 2 * dot.abs() + gn2[None, :]), "diff from float32 inputs")
    with pytest.raises(ValueError):
        cos_and_diff(dot, gn2, dn2[:2])


def test_squared_norms_in_float64():
    torch.manual_seed(10)
    d = torch.randn(4, 100_003) * torch.tensor([1e-3, 1.0, 1e3, 0.0])[:, None]
    # exactly rounded reference: a float32 square is exact in float64 and math.fsum rounds the sum once
    ref = torch.tensor([math.fsum(float(v) ** 2 for v in row.tolist()) for row in d], dtype=torch.float64)
    out = squared_norms(d)
    assert out.dtype == torch.float64
    # a float64 accumulation in any order: float64 rounding of a 100k-term sum of positive terms (not float32's)
    assert_within(out, ref, rounding_tol(d.shape[1], ref, eps=EPS64), "squared norms")
    assert out[3] == 0


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
    tol = 2 * signal_tols(P, full.double().norm(dim=1), deltas.double().norm(dim=1))["dot"]
    assert_within(out["dot"], deltas @ full.T, tol, "dot")
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
    assert_signals(out, ref, cls.__name__)
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
    assert_signals(out, ref, f"margin {margin}")
