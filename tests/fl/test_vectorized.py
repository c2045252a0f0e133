"""The vectorised local-training engine (fedleak.fl.vectorized) against K separate `local_update` calls.

Equivalence is checked twice: in float64, where any difference in data order, batching, masking or optimizer
algebra would show far above rounding (agreement to ~1e-12), and in float32 against a float64 run of the loop,
where the vectorised engine must be as close to the float64 result as the float32 loop itself is.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fedleak.config import FLConfig
from fedleak.defenses.base import Defense
from fedleak.fl.local import TrainingDiverged, get_params, local_update, make_optimizer
from fedleak.fl.vectorized import batch_plan, local_updates_vectorized
from fedleak.fl.vectorized_policy import resolve_vectorize, supports_vectorized, vectorize_worthwhile
from fedleak.fl.vectorized_optim import make_stacked_optimizer
from fedleak.models import build_model

B = 8
IID = [12, 12, 12]
UNEQUAL = [23, 10, 3, 16]  # partial last batches, a shard smaller than one batch, an exact multiple
OPTIMIZERS = {
    "sgd": dict(optimizer="sgd", momentum=0.0, weight_decay=0.0),
    "sgd-momentum": dict(optimizer="sgd", momentum=0.9, weight_decay=0.0),
    "sgd-wd": dict(optimizer="sgd", momentum=0.0, weight_decay=5e-4),
    "sgd-momentum-wd": dict(optimizer="sgd", momentum=0.9, weight_decay=5e-4),
    "adam": dict(optimizer="adam", weight_decay=0.0),
    "adam-wd": dict(optimizer="adam", weight_decay=5e-4),
    "adamw": dict(optimizer="adamw", weight_decay=1e-2),
}
LR = {"sgd": 0.05, "adam": 1e-2, "adamw": 1e-2}


def normalize(x: torch.Tensor) -> torch.Tensor:
    return (x - 0.5) / 0.25


def make_fl(name: str, fresh: bool = True, epochs: int = 2) -> FLConfig:
    return FLConfig(local_epochs=epochs, batch_size=B, fresh_optimizer=fresh, **OPTIMIZERS[name])


def make_clients(sizes: list[int], shape, dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.rand((n, *shape), generator=g).to(dtype) for n in sizes]
    ys = [torch.randint(0, 5, (n,), generator=g) for n in sizes]
    return xs, ys


def gens(sizes: list[int], seed: int = 100) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + k) for k in range(len(sizes))]


def run_loop(model, g0, xs, ys, fl, lr, states=None, seed=100):
    out, gs = [], gens([len(y) for y in ys], seed)
    for k in range(len(xs)):
        out.append(local_update(
            model, g0, xs[k], ys[k], fl=fl, lr=lr, num_classes=5, normalize=normalize, defense=Defense(),
            gen=gs[k], opt_state=None if states is None else states[k], where=f"client {k}",
        ))
    return [o[0] for o in out], [o[1] for o in out], [o[2] for o in out], gs


def run_vec(model, g0, xs, ys, fl, lr, states=None, seed=100):
    gs = gens([len(y) for y in ys], seed)
    params, losses, st = local_updates_vectorized(
        model, g0, xs, ys, gs, fl=fl, lr=lr, num_classes=5, normalize=normalize, opt_states=states,
        wheres=[f"client {k}" for k in range(len(xs))],
    )
    return params, losses, st, gs


def max_diff(a: list[dict], b: list[dict]) -> float:
    return max(float((x[n].double() - y[n].double()).abs().max()) for x, y in zip(a, b) for n in x)


def mlp(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return build_model("mlp", 5, (1, 6, 6), hidden=[16, 12]).to(dtype)


def assert_same_states(a: list, b: list, tol: float) -> None:
    for sa, sb in zip(a, b):
        assert sa["param_groups"] == sb["param_groups"]
        assert sa["state"].keys() == sb["state"].keys()
        for i in sa["state"]:
            assert sa["state"][i].keys() == sb["state"][i].keys()
            for key, va in sa["state"][i].items():
                vb = sb["state"][i][key]
                assert va.dtype == vb.dtype and va.shape == vb.shape
                assert float((va.double() - vb.double()).abs().max()) <= tol, (i, key)


@pytest.mark.parametrize("sizes", [IID, UNEQUAL], ids=["iid", "unequal"])
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_float64_equals_the_loop(opt: str, sizes: list[int]) -> None:
    """Same data order, batches, loss and optimizer algebra: float64 agreement to rounding."""
    model = mlp()
    g0 = get_params(model)
    xs, ys = make_clients(sizes, (1, 6, 6), torch.float64)
    fl, lr = make_fl(opt, fresh=False), LR[OPTIMIZERS[opt]["optimizer"]]
    p_loop, l_loop, s_loop, g_loop = run_loop(model, g0, xs, ys, fl, lr)
    p_vec, l_vec, s_vec, g_vec = run_vec(model, g0, xs, ys, fl, lr)
    assert max_diff(p_vec, p_loop) < 1e-12
    assert l_vec == pytest.approx(l_loop, rel=1e-13, abs=0)
    assert_same_states(s_vec, s_loop, 1e-12)
    for a, b in zip(g_vec, g_loop):  # the generators end in the same state: later draws match
        assert torch.equal(a.get_state(), b.get_state())


@pytest.mark.parametrize("opt", ["sgd-momentum-wd", "adam", "adamw"])
def test_carried_states_second_round(opt: str) -> None:
    """fresh_optimizer=false: round 2 starts from round 1's states (unequal step counts: per-client Adam
    bias corrections), both engines fed their own round-1 output."""
    model = mlp()
    g0 = get_params(model)
    xs, ys = make_clients(UNEQUAL, (1, 6, 6), torch.float64)
    fl, lr = make_fl(opt, fresh=False), LR[OPTIMIZERS[opt]["optimizer"]]
    p1, _, s_loop, _ = run_loop(model, g0, xs, ys, fl, lr)
    _, _, s_vec, _ = run_vec(model, g0, xs, ys, fl, lr)
    start = {n: sum(p[n] for p in p1) / len(p1) for n in g0}
    p_loop, l_loop, s_loop2, _ = run_loop(model, start, xs, ys, fl, 0.5 * lr, states=s_loop, seed=7)
    p_vec, l_vec, s_vec2, _ = run_vec(model, start, xs, ys, fl, 0.5 * lr, states=s_vec, seed=7)
    assert max_diff(p_vec, p_loop) < 1e-12
    assert l_vec == pytest.approx(l_loop, rel=1e-13, abs=0)
    assert_same_states(s_vec2, s_loop2, 1e-12)
    if OPTIMIZERS[opt]["optimizer"] != "sgd":
        assert [float(s["state"][0]["step"]) for s in s_vec2] == [2 * 2 * math.ceil(n / B) for n in UNEQUAL]
    for s in s_vec2:  # each state tensor owns its storage (saving it must not save the whole stack)
        for entry in s["state"].values():
            for v in entry.values():
                assert v.is_contiguous() and v.untyped_storage().nbytes() == v.numel() * v.element_size()


def _float32_case(name: str, shape, sizes, opt: str):
    torch.manual_seed(3)
    model = build_model(name, 5, shape)
    g0 = get_params(model)
    xs, ys = make_clients(sizes, shape, torch.float32, seed=4)
    fl, lr = make_fl(opt), LR[OPTIMIZERS[opt]["optimizer"]]
    p_vec, l_vec, _, g_vec = run_vec(model, g0, xs, ys, fl, lr)
    p_loop, l_loop, _, g_loop = run_loop(model, g0, xs, ys, fl, lr)
    m64 = model.double()
    g64 = {n: p.double() for n, p in g0.items()}
    p_ref, l_ref, _, _ = run_loop(m64, g64, [x.double() for x in xs], ys, fl, lr)
    return (p_vec, l_vec, g_vec), (p_loop, l_loop, g_loop), (p_ref, l_ref), g0


@pytest.mark.parametrize(
    "name, shape, sizes, opt",
    [
        ("mlp", (1, 6, 6), UNEQUAL, "sgd-momentum-wd"),
        ("mlp", (1, 6, 6), IID, "adam-wd"),
        ("lenet_dlg", (1, 8, 8), UNEQUAL, "adamw"),
        ("lenet_dlg", (1, 8, 8), IID, "sgd-momentum"),
    ],
)
def test_float32_as_close_to_float64_as_the_loop(name, shape, sizes, opt) -> None:
    """float32: the vectorised result may differ from the loop's by rounding only. Both are compared with a
    float64 run of the loop; the vectorised error must be of the loop's own size (factor 4), or within the
    rounding of the steps taken: T steps of float32 arithmetic on values of size |θ| (T·8·ε32·max|θ|)."""
    (p_vec, l_vec, g_vec), (p_loop, l_loop, g_loop), (p_ref, l_ref), g0 = _float32_case(name, shape, sizes, opt)
    steps = 2 * math.ceil(max(sizes) / B)
    scale = max(float(p.abs().max()) for p in g0.values())
    floor = steps * 8 * torch.finfo(torch.float32).eps * scale
    err_vec, err_loop = max_diff(p_vec, p_ref), max_diff(p_loop, p_ref)
    assert err_vec <= 4 * err_loop + floor, (err_vec, err_loop, floor)
    assert max_diff(p_vec, p_loop) <= err_vec + err_loop
    # per-step losses are float32 values of nearly equal models: means agree to float32 rounding of the loss
    for a, b, r in zip(l_vec, l_loop, l_ref):
        assert abs(a - r) <= 4 * abs(b - r) + 64 * torch.finfo(torch.float32).eps * abs(r)
    for a, b in zip(g_vec, g_loop):
        assert torch.equal(a.get_state(), b.get_state())


def test_batch_plan_hand_made() -> None:
    """sizes [5, 2, 0, 3], batch 2, 2 epochs: client steps 6, 2, 0, 4; rows drawn from each client's stream."""
    sizes = [5, 2, 0, 3]
    plan = batch_plan(sizes, gens(sizes, seed=11), epochs=2, batch_size=2)
    assert plan.order == [0, 3, 1, 2] and plan.steps == [6, 4, 2, 0]
    assert plan.active == [3, 3, 2, 2, 1, 1] and plan.width == 2
    offsets = [0, 5, 7, 7]
    for k, g in enumerate(gens(sizes, seed=11)):
        if not sizes[k]:
            continue
        j = plan.order.index(k)
        t = 0
        for _ in range(2):
            perm = torch.randperm(sizes[k], generator=g)
            for s in range(0, sizes[k], 2):
                batch = perm[s : s + 2] + offsets[k]
                assert int(plan.count[t, j]) == len(batch)
                assert plan.rows[t, j, : len(batch)].tolist() == batch.tolist()
                assert plan.rows[t, j, len(batch) :].tolist() == [int(batch[0])] * (2 - len(batch))
                t += 1
        assert t == plan.steps[j]
    # real rows per step: client 0: 2 2 1 2 2 1, client 3: 2 1 2 1, client 1: 2 2
    assert plan.full == [True, False, False, False, True, False]


def test_empty_client_keeps_the_global_model() -> None:
    model = mlp()
    g0 = get_params(model)
    xs, ys = make_clients([9, 0], (1, 6, 6), torch.float64)
    p_loop, l_loop, _, _ = run_loop(model, g0, xs, ys, make_fl("sgd-momentum"), 0.05)
    p_vec, l_vec, _, _ = run_vec(model, g0, xs, ys, make_fl("sgd-momentum"), 0.05)
    assert max_diff(p_vec, p_loop) < 1e-12
    assert all(torch.equal(p_vec[1][n], g0[n]) for n in g0)
    assert math.isnan(l_vec[1]) and math.isnan(l_loop[1]) and l_vec[0] == pytest.approx(l_loop[0], rel=1e-13)


def test_divergence_raises_the_loops_error() -> None:
    """A client whose data holds an inf pixel: the same TrainingDiverged message, for the same (first) client."""
    model = mlp(torch.float32)
    g0 = get_params(model)
    xs, ys = make_clients(UNEQUAL, (1, 6, 6), torch.float32)
    xs[2][1, 0, 3, 3] = float("inf")
    xs[3][5, 0, 0, 0] = float("nan")
    fl = make_fl("sgd-momentum")
    with pytest.raises(TrainingDiverged) as loop_err:
        run_loop(model, g0, xs, ys, fl, 0.05)
    with pytest.raises(TrainingDiverged) as vec_err:
        run_vec(model, g0, xs, ys, fl, 0.05)
    assert "client 2" in str(loop_err.value) and str(vec_err.value) == str(loop_err.value)


def test_stacked_optimizers_equal_torch_optim() -> None:
    """The element-wise updates alone, against K torch.optim instances: random gradients, clients at different
    step counts (carried states), and steps on a prefix of the clients only (the others must not move)."""
    torch.manual_seed(0)
    K, shapes = 3, [(4, 5), (5,)]
    for name in OPTIMIZERS:
        fl = make_fl(name, fresh=False)
        lr = LR[fl.optimizer]
        stacked = [torch.randn(K, *s, dtype=torch.float64) for s in shapes]
        refs = [[nn.Parameter(s[k].clone()) for s in stacked] for k in range(K)]
        opts = [make_optimizer(r, fl, lr) for r in refs]  # torch.optim's SGD / Adam / AdamW
        for k in range(K):  # client k has taken k steps before
            for _ in range(k):
                for p in refs[k]:
                    p.grad = torch.randn_like(p)
                opts[k].step()
            for i, p in enumerate(refs[k]):
                stacked[i][k] = p.detach()
        vec = make_stacked_optimizer(fl, lr, stacked, [o.state_dict() for o in opts])
        for m in (3, 3, 2, 1):
            grads = [torch.randn(m, *s, dtype=torch.float64) for s in shapes]
            for k in range(m):
                for i, p in enumerate(refs[k]):
                    p.grad = grads[i][k].clone()
                opts[k].step()
            vec.step(grads, m)
        for k in range(K):
            for i, p in enumerate(refs[k]):
                assert float((stacked[i][k] - p.detach()).abs().max()) < 1e-13, (name, k, i)
        assert_same_states([vec.state_dict(k, trained=True) for k in range(K)], [o.state_dict() for o in opts], 1e-13)


def test_supports_vectorized() -> None:
    from fedleak.defenses import DPSGD, Compose, MixUp, Perturb, Sampling

    for name, shape in [("mlp", (1, 8, 8)), ("lenet_dlg", (1, 12, 12)), ("convnet64", (3, 12, 12))]:
        assert supports_vectorized(build_model(name, 3, shape), Defense()) == (True, "")
    ok, why = supports_vectorized(nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(4, 2)))
    assert not ok and "Dropout" in why
    ok, why = supports_vectorized(nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 2)))
    assert not ok and "BatchNorm1d" in why
    assert supports_vectorized(mlp(), Sampling({"p": 0.5}))[0]  # select_data only: the engine gets the subset
    assert supports_vectorized(mlp(), Perturb({"sigma": 0.1}))[0]  # transform_update only: after local training
    for d in (MixUp(), DPSGD(), Compose([Sampling(), MixUp()], "sampling+mixup")):
        ok, why = supports_vectorized(mlp(), d)
        assert not ok and d.name in why
    assert supports_vectorized(mlp(), Compose([Sampling(), Perturb({"sigma": 0.1})], "both"))[0]


def _tanh_mlp(inputs: int) -> nn.Module:
    """The mlp's layers with tanh instead of ReLU: not a Linear/ReLU chain, so the general (vmap) path."""
    return nn.Sequential(nn.Flatten(), nn.Linear(inputs, 256), nn.Tanh(), nn.Linear(256, 128), nn.Tanh(),
                         nn.Linear(128, 10))


def test_resolve_vectorize() -> None:
    """off / on / auto; auto on a CPU: a Linear/ReLU chain (the fast path) always, any other model only for small
    per-step work (thresholds from benchmarks/training.py)."""
    from fedleak.defenses import MixUp

    digits = _tanh_mlp(64)  # 100,864 FLOPs per sample, 50,826 parameters
    mnist = _tanh_mlp(784)  # 235,146 parameters: x10 clients > 2**21
    assert resolve_vectorize("off", digits, Defense(), (1, 8, 8), 10, 10) == (False, "")
    assert resolve_vectorize("on", mnist, Defense(), (1, 28, 28), 10, 10) == (True, "")
    assert resolve_vectorize("auto", digits, Defense(), (1, 8, 8), 10, 10) == (True, "")
    use, line = resolve_vectorize("on", digits, MixUp(), (1, 8, 8), 10, 10)
    assert not use and "mixup" in line and "one by one" in line
    use, line = resolve_vectorize("auto", mnist, Defense(), (1, 28, 28), 10, 10)
    assert not use and "2,351,460 stacked parameters" in line
    ok, why = vectorize_worthwhile(digits, (1, 8, 8), 20, 10)  # 2,017,280 FLOPs per client step > 2e6
    assert not ok and "2.0 MFLOP" in why
    assert vectorize_worthwhile(mnist, (1, 28, 28), 64, 10, device="cuda") == (True, "")
    assert vectorize_worthwhile(digits, (1, 8, 8), 10, 1) == (False, "a single client")
    relu_mnist = build_model("mlp", 10, (1, 28, 28))  # the same sizes as a Linear/ReLU chain: 469,504 FLOPs/sample
    assert resolve_vectorize("auto", relu_mnist, Defense(), (1, 28, 28), 128, 10) == (True, "")  # 60.1 MFLOP
    ok, why = vectorize_worthwhile(relu_mnist, (1, 28, 28), 137, 10)  # 64.3 MFLOP > 64e6
    assert not ok and "64.3 MFLOP" in why
    assert vectorize_worthwhile(relu_mnist, (1, 28, 28), 64, 1) == (False, "a single client")


@pytest.mark.parametrize("opt", ["sgd-momentum-wd", "sgd-wd"])
def test_float64_convnet_with_group_norm(opt: str) -> None:
    """Convolutions and GroupNorm under vmap (grouped convolutions inside): still the loop's result.
    (SGD only: the conv biases in front of a per-channel norm have an exactly zero gradient, so both engines see
    rounding noise there, which Adam divides by sqrt(v) + eps and magnifies ~1e7-fold.)"""
    torch.manual_seed(1)
    model = build_model("convnet64", 5, (3, 9, 9), width=2, norm="instance").double()
    g0 = get_params(model)
    xs, ys = make_clients([9, 4, 12], (3, 9, 9), torch.float64)
    fl, lr = make_fl(opt, epochs=1), LR[OPTIMIZERS[opt]["optimizer"]]
    p_loop, l_loop, _, _ = run_loop(model, g0, xs, ys, fl, lr)
    p_vec, l_vec, _, _ = run_vec(model, g0, xs, ys, fl, lr)
    assert max_diff(p_vec, p_loop) < 1e-12
    assert l_vec == pytest.approx(l_loop, rel=1e-13, abs=0)


def test_two_fedavg_rounds_of_digits_quick() -> None:
    """The digits-quick preset (real partition, 89-90 samples per client, 5 epochs, batch 10, SGD momentum and
    weight decay, exponential lr schedule): two FedAvg rounds, in float64, give the same global model and test
    accuracy with either engine."""
    from fedleak.config import load_config, resolve_config_path
    from fedleak.fl.local import evaluate
    from fedleak.fl.schedule import lr_at
    from fedleak.fl.federation import build_federation
    from fedleak.fl.round import aggregate

    cfg = load_config(resolve_config_path("digits-quick"))
    fed = build_federation(cfg)
    model, data = fed.model.double(), fed.data
    xs = [data.train.x[torch.as_tensor(c)].double() for c in fed.clients]
    ys = [data.train.y[torch.as_tensor(c)] for c in fed.clients]
    initial, finals = get_params(model), []  # (the loop leaves its last client's weights in the model)
    for engine in ("loop", "vectorised"):
        params = initial
        for rnd in range(2):
            lr = lr_at(cfg.fl.schedule, cfg.fl.lr, rnd, cfg.fl.rounds)
            gs = [torch.Generator().manual_seed(1000 * rnd + k) for k in range(len(xs))]
            if engine == "loop":
                local = [local_update(model, params, x, y, fl=cfg.fl, lr=lr, num_classes=10, normalize=data.normalize,
                                      defense=Defense(), gen=g)[0] for x, y, g in zip(xs, ys, gs)]
            else:
                local = local_updates_vectorized(model, params, xs, ys, gs, fl=cfg.fl, lr=lr, num_classes=10,
                                                 normalize=data.normalize)[0]
            params = aggregate(dict(enumerate(local)), fed.weights)
        finals.append(params)
    assert max_diff([finals[0]], [finals[1]]) < 1e-12
    test_x = data.normalize(data.test.x.double())
    accs = [evaluate(model, p, test_x, data.test.y, 512)[0] for p in finals]
    assert accs[0] == accs[1] > 0.5
