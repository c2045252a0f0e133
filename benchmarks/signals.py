"""Time one recorded round of the gradient membership signals: the official FedMIA method vs fedleak.

Setting: AlexNet-CIFAR (2,495,396 parameters), 3x32x32 inputs, 100 classes, K clients whose updates come from a few
SGD steps each (client 0 trains on the first candidates, so its cosines are meaningful), N candidates.

(a) original: what FedMIA's `get_all_cos` does (fedmia.md §2.4), separately for each of the K clients: per-sample
    gradients for batches of 10 (Opacus `grad_sample` emulated with `torch.func.vmap(grad)` on each batch of 10 —
    `--original-grads layers` uses fedleak's closed-form layer engine instead, which is how Opacus computes them),
    then a Python loop over the samples: F.cosine_similarity(g, Δ_k), ||Δ_k||² − ||Δ_k − g||², ||g||².
(b) fedleak: `gradient_signals` (per-sample gradients once for all K clients, one GEMM per chunk and tensor) +
    `cos_and_diff`. Also shown: the same with the vmap engine, and forward-mode JVP dots (dot only, no ||g||²).
(c) one local-training pass (SGD, batch 100) over N samples, for scale.

Usage: python benchmarks/signals.py [--n 500] [--k 10] [--threads 2] [--repeat 1]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time

import torch
from torch.nn import functional as F

from fedleak.device import setup_device, synchronize
from fedleak.models import build_model
from fedleak.models.functional import per_sample_grad_fn
from fedleak.signals.compute import (
    _dots_jvp,
    chunk_size_for,
    cos_and_diff,
    flat_params,
    gradient_signals,
    per_sample_gradients,
    squared_norms,
)


DEVICE = torch.device("cpu")


def sync() -> None:
    if DEVICE.type == "cuda":
        synchronize(DEVICE)


def make_setup(n: int, k: int, seed: int = 0):
    """Built on the CPU with a fixed seed (same numbers on any device), then moved to DEVICE."""
    torch.manual_seed(seed)
    model = build_model("alexnet_cifar", 100, (3, 32, 32))
    x = (torch.rand(n, 3, 32, 32) - 0.5) / 0.25  # roughly normalised pixels
    y = torch.randint(0, 100, (n,))
    glob = {name: p.detach().clone() for name, p in model.named_parameters()}
    theta = flat_params(model)
    deltas = []
    for c in range(k):  # each client: 3 SGD steps (lr 0.1, batch 50); client 0 on the first candidates
        local = copy.deepcopy(model)
        opt = torch.optim.SGD(local.parameters(), lr=0.1)
        if c == 0:
            xs, ys = x[: min(150, n)], y[: min(150, n)]
        else:
            xs, ys = (torch.rand(150, 3, 32, 32) - 0.5) / 0.25, torch.randint(0, 100, (150,))
        for s in range(0, len(xs), 50):
            opt.zero_grad()
            F.cross_entropy(local(xs[s : s + 50]), ys[s : s + 50]).backward()
            opt.step()
        deltas.append(theta - flat_params(local))  # Δ = old − new
    glob = {name: v.to(DEVICE) for name, v in glob.items()}
    return model.to(DEVICE), glob, torch.stack(deltas).to(DEVICE), x.to(DEVICE), y.to(DEVICE)


def original_method(model, glob, deltas, x, y, grads: str = "vmap"):
    """FedMIA get_all_cos, once per client: per-sample grads in batches of 10, then a per-sample Python loop."""
    K, N = deltas.shape[0], len(x)
    cos, diff, norm = (torch.zeros(K, N, device=DEVICE) for _ in range(3))
    psg = per_sample_grad_fn(model, {})
    names = list(glob)
    for k in range(K):
        d = deltas[k]
        for s in range(0, N, 10):
            xb, yb = x[s : s + 10], y[s : s + 10]
            if grads == "vmap":
                g = psg(glob, xb, yb)
                G = torch.cat([g[n].reshape(len(xb), -1) for n in names], dim=1)  # Opacus grad_sample concat
            else:
                G = per_sample_gradients(model, glob, xb, yb, engine="layers")
            c_list, d_list, n_list = [], [], []
            for i in range(len(xb)):
                gi = G[i]
                c_list.append(F.cosine_similarity(gi, d, dim=0))
                d_list.append(torch.norm(d) ** 2 - torch.norm(d - gi) ** 2)
                n_list.append(torch.norm(gi) ** 2)
            cos[k, s : s + len(xb)] = torch.stack(c_list)
            diff[k, s : s + len(xb)] = torch.stack(d_list)
            norm[k, s : s + len(xb)] = torch.stack(n_list)
    return cos, diff, norm


def fedleak_method(model, glob, deltas, x, y, engine="auto", budget=512):
    out = gradient_signals(model, glob, deltas, x, y, memory_budget_mb=budget, engine=engine)
    cos, diff = cos_and_diff(out["dot"], out["gnorm2"], squared_norms(deltas))
    return cos, diff, out["gnorm2"].expand_as(cos)


def local_pass(model, x, y):
    m = copy.deepcopy(model).train()
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    for s in range(0, len(x), 100):
        opt.zero_grad()
        F.cross_entropy(m(x[s : s + 100]), y[s : s + 100]).backward()
        opt.step()


def timed(fn, repeat: int):
    """(median wall seconds, median process CPU seconds, result)."""
    walls, cpus, out = [], [], None
    for _ in range(repeat):
        sync()
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        sync()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus), out


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def float64_reference(model, glob, deltas, x, y, m: int):
    """cos, diff, gnorm2 for the first m candidates with a float64 copy of the model (the ground truth)."""
    m64 = copy.deepcopy(model).double()
    g64 = {n: v.double() for n, v in glob.items()}
    G = per_sample_gradients(m64, g64, x[:m].double(), y[:m], engine="vmap")
    D = deltas.double()
    dot, gn2, dn2 = D @ G.T, (G * G).sum(1), (D * D).sum(1)
    cos, diff = cos_and_diff(dot, gn2, dn2)
    return cos, diff, gn2.expand_as(cos)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=500, help="candidates (default 500)")
    ap.add_argument("--k", type=int, default=10, help="clients (default 10)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    ap.add_argument("--repeat", type=int, default=1, help="timing repeats, median reported (default 1)")
    ap.add_argument("--budget-mb", type=float, default=512, help="fedleak memory budget (default 512)")
    ap.add_argument("--original-grads", choices=["vmap", "layers"], default="vmap",
                    help="how the original's batch-10 per-sample gradients are emulated (default vmap)")
    ap.add_argument("--skip-original", action="store_true", help="time only fedleak's variants")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (timings synchronise the GPU)")
    args = ap.parse_args()
    global DEVICE
    try:
        DEVICE = setup_device(args.device)  # fedleak's device check; TF32 off (docs/gpu.md)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()[0]
    model, glob, deltas, x, y = make_setup(args.n, args.k)
    P = deltas.shape[1]
    model.eval()

    # warm-up (first-call overheads of torch.func / oneDNN) on a few samples
    fedleak_method(model, glob, deltas[:1], x[:8], y[:8])
    fedleak_method(model, glob, deltas[:1], x[:8], y[:8], engine="vmap")
    original_method(model, glob, deltas[:1], x[:10], y[:10], args.original_grads)

    t_b, c_b, res_b = timed(lambda: fedleak_method(model, glob, deltas, x, y, "auto", args.budget_mb), args.repeat)
    t_bv, c_bv, res_bv = timed(lambda: fedleak_method(model, glob, deltas, x, y, "vmap", args.budget_mb), args.repeat)
    t_j, c_j, dots_j = timed(lambda: _dots_jvp(model, glob, deltas, x, y, batch_size=500), args.repeat)
    t_c, c_c, _ = timed(lambda: local_pass(model, x, y), args.repeat)
    if not args.skip_original:
        t_a, c_a, res_a = timed(
            lambda: original_method(model, glob, deltas, x, y, args.original_grads), args.repeat
        )
    m64 = min(20, args.n)
    ref = float64_reference(model, glob, deltas, x, y, m64)

    where = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "cpu"
    print(f"AlexNet-CIFAR on {where}, P = {P:,}, N = {args.n}, K = {args.k}, 3x32x32, 100 classes; torch {torch.__version__}, "
          f"{args.threads} threads on {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
          f"1-min load average {load0:.1f} at start / {os.getloadavg()[0]:.1f} at end; "
          f"fedleak chunk = {min(chunk_size_for(P, args.budget_mb), args.n)} samples ({args.budget_mb:g} MB); "
          f"median of {args.repeat}")
    print()
    print("| method | wall time / recorded round | (a) / this, wall | process CPU time | (a) / this, CPU |")
    print("|---|---:|---:|---:|---:|")
    rows = []
    if not args.skip_original:
        grads = "vmap(grad)" if args.original_grads == "vmap" else "closed-form layer grads"
        rows.append((f"(a) original: per client, {grads} on batches of 10 + per-sample loop", t_a, c_a))
    rows += [
        ("(b) fedleak `gradient_signals` + `cos_and_diff` (engine auto = layers)", t_b, c_b),
        ("(b') fedleak, engine vmap", t_bv, c_bv),
        ("(b'') forward-mode JVP dots only (K jvps, no ‖g‖²)", t_j, c_j),
        ("(c) one local-training pass over N (SGD, batch 100)", t_c, c_c),
    ]
    for label, t, cpu in rows:
        r_wall = f"{t_a / t:.1f}x" if not args.skip_original else "-"
        r_cpu = f"{c_a / cpu:.1f}x" if not args.skip_original else "-"
        print(f"| {label} | {t:.2f} s | {r_wall} | {cpu:.2f} s | {r_cpu} |")
    print()
    print("| max relative difference (max\\|a−b\\| / max\\|b\\|) | cos | diff | ‖g‖² |")
    print("|---|---:|---:|---:|")
    if not args.skip_original:
        print("| (b) vs (a), all candidates | " + " | ".join(f"{rel(u, v):.1e}" for u, v in zip(res_b, res_a)) + " |")
        print(f"| (a) vs float64, first {m64} | "
              + " | ".join(f"{rel(u[:, :m64], v):.1e}" for u, v in zip(res_a, ref)) + " |")
    print(f"| (b) vs float64, first {m64} | " + " | ".join(f"{rel(u[:, :m64], v):.1e}" for u, v in zip(res_b, ref)) + " |")
    print(f"| (b') vs (b) | " + " | ".join(f"{rel(u, v):.1e}" for u, v in zip(res_bv, res_b)) + " |")
    dots_b = gradient_signals(model, glob, deltas, x, y, memory_budget_mb=args.budget_mb)["dot"]
    print(f"\nJVP dots vs GEMM dots: max relative difference {rel(dots_j, dots_b):.1e}")
    print(f"client 0 (trained on candidates 0..{min(150, args.n) - 1}): mean cos on them "
          f"{res_b[0][0, : min(150, args.n)].mean():.4f}, on the rest "
          f"{res_b[0][0, min(150, args.n):].mean() if args.n > 150 else float('nan'):.4f}")


if __name__ == "__main__":
    main()
