"""Time one recorded round of gradient signals under ``candidates.protocol: official-compat`` at paper scale:
per client (what fl/record.py did before) vs once over the union of the round's rows (what it does now).

Setting (docs/results.md section 6): DLG's LeNet (15,426 parameters) on MNIST-shaped inputs, K = 10 clients, each
scoring the target's 5,000 members plus 3,800 non-members redrawn per client (2,000 from a 10,000-image test pool,
200 from each of 9 other clients' 5,000). Images and updates are random (timing does not depend on them); the
union path's values are checked against the per-client path's.

(a0) per client, as before this change: ``gradient_signals`` with that client's one update over its 8,800 rows,
     K times, with the old ghost rule (``K·T < T + K + margin``, no Gram term: every layer ghost at K = 1).
(a) per client, K times, with today's ghost rule (conv layers materialised at K = 1).
(b) union (today's fl/record.py): ``gradient_signals`` with all K updates over the distinct rows of the round, then
    gathered per client.

Each path runs in its own subprocess, so that its peak resident memory (ru_maxrss) is its own.

Measured 2026-11-30 (torch 2.13 CPU, 1 thread, load 3.8 on 2 cores, default K = 10, 5,000 members):

| path | wall | peak RSS | per-sample gradients |
|---|---:|---:|---:|
| (a0) per client, old ghost rule | 219.1 s | 9,407 MiB | 88,000 |
| (a) per client, today's rule | 40.0 s | 1,760 MiB | 88,000 |
| (b) union | 13.3 s | 1,846 MiB | 28,953 |

(a0)/(b) 16.4x the time and 5.1x the memory; every path's dots agree to 6.5e-7 of the largest.

Usage: python benchmarks/compat_signals.py [--clients 10] [--members 5000] [--threads 1] [--budget-mb 512]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np
import torch


def setting(a: argparse.Namespace):
    from fedleak.models import build_model
    from fedleak.signals.compute import flat_params

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    K, M = a.clients, a.members
    pool = 10_000 + (K - 1) * M  # ids: test pool, then the other clients' samples
    x = torch.rand(M + pool, 1, 28, 28)
    y = torch.randint(0, 10, (M + pool,))
    model = build_model("lenet_dlg", 10, (1, 28, 28), init="default")
    glob = {n: p.detach().clone() for n, p in model.named_parameters()}
    deltas = 1e-2 * torch.randn(K, flat_params(model).numel())
    rows = []
    for _ in range(K):
        test = M + rng.choice(10_000, 2_000 * M // 5_000, replace=False)
        other = [M + 10_000 + c * M + rng.choice(M, 200 * M // 5_000, replace=False) for c in range(K - 1)]
        rows.append(np.concatenate([np.arange(M), test, *other]))
    return model, glob, deltas, x, y, rows


def run_path(a: argparse.Namespace) -> dict:
    from fedleak.signals.compute import gradient_signals

    torch.set_num_threads(a.threads)
    if a.path == "per-client-old-rule":
        from fedleak.signals import compute, layers

        compute._use_ghost = lambda K, T, shape: K * T < T + K + layers._GHOST_MARGIN
    model, glob, deltas, x, y, rows = setting(a)
    t0 = time.perf_counter()
    if a.path.startswith("per-client"):
        dots = [gradient_signals(model, glob, deltas[k : k + 1], x[r], y[r], memory_budget_mb=a.budget_mb)["dot"][0]
                for k, r in enumerate(rows)]
    else:
        union = np.unique(np.concatenate(rows))
        g = gradient_signals(model, glob, deltas, x[union], y[union], memory_budget_mb=a.budget_mb)
        dots = [g["dot"][k, torch.as_tensor(np.searchsorted(union, r))] for k, r in enumerate(rows)]
    wall = time.perf_counter() - t0
    np.save(a.save, torch.stack(dots).numpy())
    return {"wall": wall, "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rows": int(sum(len(r) for r in rows)), "distinct": int(len(np.unique(np.concatenate(rows))))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--members", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--budget-mb", type=float, default=512)
    ap.add_argument("--path", choices=["per-client-old-rule", "per-client", "union"], help=argparse.SUPPRESS)
    ap.add_argument("--save", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.path:
        print(json.dumps(run_path(a)))
        return
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {a.threads} thread(s), "
          f"load {os.getloadavg()[0]:.1f}; K={a.clients}, {a.members} members per round")
    res, out = {}, {}
    tag = {"per-client-old-rule": "a0", "per-client": "a", "union": "b"}
    for path in tag:
        save = f"/tmp/compat_{path}_{os.getpid()}.npy"
        cmd = [sys.executable, __file__, "--path", path, "--save", save, *sys.argv[1:]]
        res[path] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        out[path] = np.load(save)
        os.unlink(save)
        r = res[path]
        print(f"({tag[path]}) {path:19s} {r['wall']:8.1f} s  peak RSS {r['maxrss_mib']:7.0f} MiB"
              f"  ({r['distinct'] if path == 'union' else r['rows']} per-sample gradients)")
    for path in ("per-client-old-rule", "per-client"):
        d = np.abs(out["union"] - out[path]).max() / np.abs(out[path]).max()
        print(f"({tag[path]})/(b): {res[path]['wall'] / res['union']['wall']:.1f}x the time, "
              f"{res[path]['maxrss_mib'] / res['union']['maxrss_mib']:.1f}x the peak memory; "
              f"max |dot difference| / max |dot|: {d:.1e}")


if __name__ == "__main__":
    main()
