"""Gradient-inversion performance, measured side by side in one run (not a test).

1. **Inverting Gradients iterations per second**: fedleak's attack step (vectorised cost over one flat vector,
   precomputed target norm, plain forward on a private model copy) against a straightforward implementation of
   the same step on the same model: ``torch.autograd.grad(..., create_graph=True)`` on the module and the cost as
   a per-tensor Python loop that recomputes the target norms every call, as the original
   ``reconstruction_costs`` does. Both do signed Adam + box projection + TV; timings are interleaved
   (A, B, A, B, ...) and the best block of each is kept, which makes the ratio robust to other load.
2. **Soteria mask**: batched Jacobian-row norms (``torch.func.vjp`` + ``vmap`` over chunks of one-hot cotangents;
   and the input-replication variant) against one backward pass per feature, on ConvNet-64 at D = 2304 features
   (CIFAR-10 shape). The per-feature loop is timed on ``--loop-features`` features and extrapolated linearly to D
   (each pass costs the same; ``--loop-features 2304`` times all of them); the batched variants run on all D.
   The three are interleaved chunk by chunk (batched chunk, then a few loop passes on features of that chunk),
   so all of them see the same machine load.

Usage::

    python benchmarks/inversion.py                       # LeNet and ConvNet-64; ratios printed for ConvNet-64
    python benchmarks/inversion.py --quick               # tiny settings, seconds
    python benchmarks/inversion.py --json out.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fedleak.attacks.inversion import GradientInversion, client_update, reference_cost  # noqa: E402
from fedleak.attacks.inversion.costs import total_variation  # noqa: E402
from fedleak.defenses.gradient import jacobian_rows, representation_fn  # noqa: E402
from fedleak.models import build_model  # noqa: E402
from fedleak.attacks.inversion.optimize import ig_config  # noqa: E402
from fedleak.device import setup_device, synchronize  # noqa: E402


DEVICE = torch.device("cpu")


def _sync() -> None:
    """Wait for queued GPU work, so that wall-clock timings cover it (no-op on the CPU)."""
    if DEVICE.type == "cuda":
        synchronize(DEVICE)


def _clock() -> float:
    _sync()
    return time.perf_counter()


def _setup(model_name: str, shape: tuple[int, int, int], seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(model_name, 10, shape).eval().to(DEVICE)
    x = torch.rand(1, *shape, device=DEVICE) * 4 - 2
    view, _ = client_update(model, x, torch.tensor([3], device=DEVICE), labels_known=True, mean=(0.5,), std=(0.25,))
    return model, view


def bench_ig(model_name: str, shape, iters_per_block: int, blocks: int) -> dict:
    model, view = _setup(model_name, shape)
    cfg = ig_config(iterations=10**9, tv=1e-4)  # schedule irrelevant here: fixed lr
    gi = GradientInversion(model, view, cfg)
    lo, hi = gi.lo, gi.hi

    # --- fedleak's step -------------------------------------------------------------------------------------
    xa = torch.randn(1, *shape, device=DEVICE).requires_grad_(True)
    opt_a = torch.optim.Adam([xa], lr=0.1)

    def step_fast():
        opt_a.zero_grad(set_to_none=True)
        total, _ = gi.objective(xa, None)
        (g,) = torch.autograd.grad(total, [xa])
        xa.grad = g.sign()
        opt_a.step()
        with torch.no_grad():
            xa.copy_(torch.maximum(torch.minimum(xa, hi), lo))

    # --- straightforward step: module autograd + per-tensor Python loop cost ------------------------------
    net = copy.deepcopy(model)
    with torch.no_grad():
        for k, p in net.named_parameters():
            p.copy_(view.params[k])
    target = [view.update[k] for k, _ in net.named_parameters()]
    y = view.side.labels
    xb = torch.randn(1, *shape, device=DEVICE).requires_grad_(True)
    opt_b = torch.optim.Adam([xb], lr=0.1)

    def step_naive():
        opt_b.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(xb), y)
        dummy = torch.autograd.grad(loss, list(net.parameters()), create_graph=True)
        total = reference_cost(dummy, target, "sim") + 1e-4 * total_variation(xb)
        total.backward()
        xb.grad.sign_()
        opt_b.step()
        with torch.no_grad():
            xb.data = torch.max(torch.min(xb, hi), lo)

    # same objective (sanity): both costs agree at the same point
    with torch.no_grad():
        xb.copy_(xa)
    dummy = torch.autograd.grad(torch.nn.functional.cross_entropy(net(xb), y), list(net.parameters()),
                                create_graph=False)
    c_ref = float(reference_cost(dummy, target, "sim"))
    c_fast = gi.matching_cost(xa, None)
    for f in (step_fast, step_naive):  # warm-up
        f()
    fast, naive = [], []
    for _ in range(blocks):
        for f, acc in ((step_fast, fast), (step_naive, naive)):
            t = _clock()
            for _ in range(iters_per_block):
                f()
            acc.append((_clock() - t) / iters_per_block)
    return {
        "model": model_name, "params": sum(p.numel() for p in model.parameters()),
        "fedleak_it_per_s": 1 / min(fast), "straightforward_it_per_s": 1 / min(naive),
        "ratio": min(naive) / min(fast), "cost_check": abs(c_ref - c_fast),
        "iters_timed_each": iters_per_block * blocks,
    }


def bench_soteria(model_name: str, shape, loop_features: int, chunk: int, methods: list[str]) -> dict:
    """Interleaved over the feature chunks: each batched variant on the whole chunk, then both per-feature
    loops on a few features of the same chunk, so that every method sees the same machine load."""
    model, view = _setup(model_name, shape, seed=1)
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.rand(1, *shape, device=DEVICE)
    f = representation_fn(model, "linear" if model_name == "convnet64" else "fc")
    D = f(x).shape[1]
    from fedleak.defenses.gradient.soteria import auto_chunk_size

    used_chunk = chunk if chunk else auto_chunk_size(f, x)
    block = max(128, used_chunk)
    chunks = [torch.arange(i, min(D, i + block)) for i in range(0, D, block)]  # interleaving blocks
    per_chunk = max(1, -(-loop_features // len(chunks)))
    # x-only loop: one forward kept alive, one autograd.grad w.r.t. x per feature
    xg = x.clone().requires_grad_(True)
    r_loop = f(xg)
    # original-style loop: parameters require grad, r.backward(one_hot) accumulates every weight gradient too
    model_o = copy.deepcopy(model)
    for p in model_o.parameters():
        p.requires_grad_(True)
    f_o = representation_fn(model_o, "linear" if model_name == "convnet64" else "fc",
                            {k: v for k, v in model_o.named_parameters()})
    xo = x.clone().requires_grad_(True)
    r_orig = f_o(xo)
    for m in methods:  # warm-up (first-call costs of vmap / the allocator are not part of the steady state)
        jacobian_rows(f, x, chunk_size=used_chunk, method=m, features=chunks[0][: min(len(chunks[0]), used_chunk)])
    t_batched = {m: 0.0 for m in methods}
    t_loop = t_orig = 0.0
    n_loop = 0
    max_diff = {m: 0.0 for m in methods}
    for idx in chunks:
        norms = {}
        for m in methods:
            t = _clock()
            _, norms[m] = jacobian_rows(f, x, chunk_size=used_chunk, method=m, features=idx)
            t_batched[m] += _clock() - t
        sample = idx[:per_chunk].tolist()
        ref = []
        t = _clock()
        for i in sample:
            v = torch.zeros_like(r_loop)
            v[:, i] = 1.0
            (g,) = torch.autograd.grad(r_loop, xg, v, retain_graph=True)
            ref.append(g.norm())
        t_loop += _clock() - t
        t = _clock()
        for i in sample:
            v = torch.zeros_like(r_orig)
            v[:, i] = 1.0
            r_orig.backward(v, retain_graph=True)
            _ = xo.grad.norm()
            xo.grad = None
        t_orig += _clock() - t
        n_loop += len(sample)
        ref_t = torch.stack(ref)
        for m in methods:
            max_diff[m] = max(max_diff[m], float(((norms[m][0, : len(sample)] - ref_t).abs() / ref_t).max()))
    per_feature, per_feature_orig = t_loop / n_loop, t_orig / n_loop
    out: dict = {"model": model_name, "D": D, "chunk": used_chunk, "loop_features_timed": n_loop,
                 "loop_seconds_per_feature": per_feature, "loop_seconds_full_D_extrapolated": per_feature * D,
                 "original_style_seconds_per_feature": per_feature_orig}
    for m in methods:
        out[f"{m}_seconds_full_D"] = t_batched[m]
        out[f"{m}_speedup"] = per_feature * D / t_batched[m]
        out[f"{m}_speedup_vs_original_style"] = per_feature_orig * D / t_batched[m]
        out[f"{m}_max_rel_diff_vs_loop"] = max_diff[m]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="convnet64")
    ap.add_argument("--ig-models", default="lenet_soteria,convnet64", help="Comma-separated models for part 1.")
    ap.add_argument("--soteria-models", default="lenet_soteria,convnet64", help="Comma-separated models for part 2.")
    ap.add_argument("--ig-iters", type=int, default=0, help="Iterations per timing block (default per model).")
    ap.add_argument("--blocks", type=int, default=5)
    ap.add_argument("--loop-features", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=0, help="Features per batched VJP (0: auto from memory).")
    ap.add_argument("--methods", default="vmap,replicate")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (timings synchronise the GPU).")
    ap.add_argument("--quick", action="store_true", help="Tiny settings (a smoke run).")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    global DEVICE
    try:
        DEVICE = setup_device(a.device)  # fedleak's device check; TF32 off (docs/gpu.md)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    shape = (3, 32, 32)
    if a.quick:
        a.ig_models, a.blocks, a.loop_features = "lenet_soteria", 2, 8
    res: dict = {
        "torch": torch.__version__, "device": str(DEVICE), "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "loadavg_start": os.getloadavg(), "ig": [], "soteria": None,
    }
    for m in a.ig_models.split(","):
        n = a.ig_iters or (3 if m == "convnet64" else 40)
        if a.quick:
            n = 5
        r = bench_ig(m, shape, n, a.blocks)
        res["ig"].append(r)
        print(f"[IG] {m:14s} fedleak {r['fedleak_it_per_s']:8.2f} it/s | straightforward "
              f"{r['straightforward_it_per_s']:8.2f} it/s | ratio {r['ratio']:.2f}x (cost diff {r['cost_check']:.1e})",
              flush=True)
    s_models = ["lenet_soteria"] if a.quick else a.soteria_models.split(",")
    res["soteria_all"] = []
    for s_model in s_models:
        s = bench_soteria(s_model, shape, a.loop_features, a.chunk, a.methods.split(","))
        res["soteria_all"].append(s)
        print(f"[Soteria] {s_model} D={s['D']} (batched chunk {s['chunk']}): one backward per feature "
              f"{s['loop_seconds_per_feature'] * 1e3:.1f} ms (timed on {s['loop_features_timed']} features) -> "
              f"{s['loop_seconds_full_D_extrapolated']:.1f} s for D")
        print(f"[Soteria]   original-style loop (.backward, parameter grads accumulated too): "
              f"{s['original_style_seconds_per_feature'] * 1e3:.1f} ms per feature")
        for m in a.methods.split(","):
            print(f"[Soteria]   batched {m:9s}: {s[f'{m}_seconds_full_D']:.1f} s for all D -> speedup "
                  f"{s[f'{m}_speedup']:.1f}x vs the x-only loop, {s[f'{m}_speedup_vs_original_style']:.1f}x vs the "
                  f"original-style loop (max rel diff {s[f'{m}_max_rel_diff_vs_loop']:.1e})", flush=True)
    s = next((x for x in res["soteria_all"] if x["model"] == a.model), res["soteria_all"][-1])
    res["soteria"] = s
    res["loadavg_end"] = os.getloadavg()
    ig_main = next((r for r in res["ig"] if r["model"] == a.model), res["ig"][-1])
    best = max(a.methods.split(","), key=lambda m: s[f"{m}_speedup"])
    print(f"RATIOS: IG iterations/s {ig_main['ratio']:.2f}x ({ig_main['model']}); "
          f"Soteria mask {s[f'{best}_speedup']:.1f}x ({best}, {s['model']}, D={s['D']})")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
