"""Time one round of local training: the per-client loop vs the vectorised engine (issue #14 items 1 and 2).

(a) loop:       ``fedleak.fl.local.local_update`` once per client (the no-op defense), as the engine runs today.
(b) vectorised: ``fedleak.fl.vectorized.local_updates_vectorized``, all clients stacked (the MLPs take its
                Linear/ReLU fast path, LeNet its vmap path; on a CPU in client groups of at most 8 MiB).

Settings:
* digits-quick: configs/digits-quick.yaml as it is (scikit-learn digits, MLP 64-256-128-10, 10 IID clients of
  ~90 samples, 5 local epochs, batch 10, SGD momentum 0.9, weight decay 5e-4), the real partition.
* mnist-mlp / mnist-lenet: MNIST-shaped *synthetic* tensors (uniform pixels, random labels; timing only),
  10 clients x 5,000 samples of 1x28x28, MLP 784-256-128-10 / lenet_dlg, SGD as above; batch size and local
  epochs from --mnist-batch (default 64) and --mnist-epochs (default 1).

Each cell is the best of --repeat rounds after one warm-up round, wall clock, at 1 and 2 torch threads, the two
engines' rounds interleaved (loop, vectorised, loop, ...) so that a change of load hits both. The two engines'
local models are compared once per setting (max |difference|, float32) so the table times the same work: ~1e-7,
unless a long run meets a ReLU unit at its kink, after which float32 trajectories drift (the loop does the same
against itself across CPUs; see fedleak/fl/vectorized.py). The machine's load average is printed: on a shared
machine the numbers move with it; compare ratios, not absolute times.

Roofline (MLP settings; --no-roofline skips it): the loop's matrix products of one full-batch step are recorded
(shapes, strides, dtype; their FLOPs must equal FlopCounterMode's count of the step, else the setting has other
heavy work, e.g. convolutions, and gets no line) and replayed back to back with random values: the round's GEMM
FLOPs divided by that rate is the fastest any engine doing these products could train the round on this CPU at
this thread count; one 2048³ GEMM gives the peak rate and a looser bound. loop / bound is the most any engine
could gain over the loop.

Measured on the project machine (2-core AMD EPYC VM, two other training jobs at nice 5 on it, load average
2.9 → 4.1 during the run, torch 2.13): ``--settings digits-quick,mnist-mlp --threads 1,2 --repeat 3
--mnist-batch 32 --flower`` (and ``--settings mnist-mlp,mnist-lenet --threads 1 --repeat 2``, batch 64, load 3.4):

| setting | threads | loop (s/round) | vectorised (s/round) | speed-up |
|---|---|---|---|---|
| digits-quick | 1 | 0.223 | 0.039 | 5.79x |
| digits-quick | 2 | 39.966 | 0.052 | 764x |
| mnist-mlp, batch 32 | 1 | 1.663 | 1.054 | 1.58x |
| mnist-mlp, batch 32 | 2 | 10.972 | 2.547 | 4.31x |
| mnist-mlp, batch 64 | 1 | 1.334 | 1.272 | 1.05x |
| mnist-lenet, batch 64 | 1 | 3.878 | 5.018 | 0.77x |

| setting | threads | GEMM GFLOP/round | rate at step shapes (GFLOP/s) | bound (s/round) | peak (GFLOP/s) | bound at peak | loop / bound | loop / bound at peak |
|---|---|---|---|---|---|---|---|---|
| digits-quick | 1 | 1.2 | 40.9 | 0.029 | 87.8 | 0.014 | 7.61x | 16.3x |
| mnist-mlp, batch 32 | 1 | 50.4 | 80.8 | 0.623 | 90.6 | 0.556 | 2.67x | 2.99x |
| mnist-mlp, batch 64 | 1 | 50.4 | 89.4 | 0.563 | 92.3 | 0.546 | 2.37x | 2.44x |

The 1-thread figures are the fair ones: with both cores busy with other jobs, 2 OpenMP threads spend the loop's
thousands of tiny operations waiting for each other (digits-quick's loop: 40 s a round), and even the replayed
GEMMs fall to 10-15 GFLOP/s. Where the stacked engine wins: per-step overhead (the loop's optimizer.step in
Python, autograd, one dispatch per tensor per client) is paid once for all clients, and the fast path's backward
and fused optimizer step are a handful of operations. Where it cannot: MNIST's round is 50 GFLOP of GEMMs that
the loop already runs at ~85 GFLOP/s, so even an engine doing nothing but those products at the CPU's peak would
be at most 2.4-3.0x faster than the loop; ≥3x on MNIST is out of reach on this CPU. vmapped convolutions
(LeNet) become grouped convolutions, slower than the loop's.

Flower hook (for the lead): ``--flower`` also times ``python -m fedleak.cli flower-sim digits-quick`` against
``python -m fedleak.cli train digits-quick`` end to end (--flower-rounds rounds each), per round from the
``time`` field of their metrics.jsonl, with ``train`` both as the per-client loop (``fl.vectorize=off``) and as
configured (``auto``: stacked for digits-quick).

End to end (idle machine, 2026-11-30, ``--flower`` with the preset's 20 rounds, s/round incl. evaluation and
signals, median over rounds): loop 0.31, stacked 0.085 (3.6x), flower-sim 0.42 (4.9x the stacked engine's); whole
commands 10.1 s, 4.5 s and 23.1 s. Over only 3 rounds (the earlier default) the first rounds' one-time costs dominate
and the ratios look larger (13.2x for flower-sim under load).

Usage: python benchmarks/training.py [--settings digits-quick,mnist-mlp,mnist-lenet] [--threads 1,2]
                                     [--repeat 3] [--mnist-batch 64] [--mnist-epochs 1] [--no-roofline] [--flower]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from fedleak.config import FLConfig, load_config
from fedleak.defenses.base import Defense
from fedleak.device import Stopwatch, setup_device, to_device
from fedleak.fl.local import ParamDict, get_params, local_update
from fedleak.fl.vectorized import local_updates_vectorized

REPO = Path(__file__).resolve().parent.parent
DEVICE = torch.device("cpu")


def on_device(s: "Setting") -> "Setting":
    """The setting's model and data on DEVICE (generators stay on the CPU: data order is drawn there)."""
    s.model.to(DEVICE)
    s.xs = [x.to(DEVICE) for x in s.xs]
    s.ys = [y.to(DEVICE) for y in s.ys]
    return s


@dataclass
class Setting:
    name: str
    model: torch.nn.Module
    xs: list[torch.Tensor]
    ys: list[torch.Tensor]
    fl: FLConfig
    lr: float
    num_classes: int
    normalize: Callable[[torch.Tensor], torch.Tensor]

    def describe(self) -> str:
        sizes = [len(y) for y in self.ys]
        n_params = sum(p.numel() for p in self.model.parameters())
        shape = tuple(self.xs[0].shape[1:])
        return (f"{self.name}: {len(sizes)} clients of {min(sizes)}-{max(sizes)} samples {shape}, "
                f"{type(self.model).__name__} ({n_params:,} parameters), {self.fl.local_epochs} local epoch(s), "
                f"batch {self.fl.batch_size}, {self.fl.optimizer}")


def digits_quick() -> Setting:
    from fedleak.fl.federation import build_federation

    cfg = load_config(REPO / "configs" / "digits-quick.yaml")
    fed = build_federation(cfg)
    xs = [fed.data.train.x[torch.as_tensor(c)] for c in fed.clients]
    ys = [fed.data.train.y[torch.as_tensor(c)] for c in fed.clients]
    return Setting("digits-quick", fed.model, xs, ys, cfg.fl, cfg.fl.lr, fed.data.num_classes, fed.data.normalize)


def mnist_shaped(model_name: str, batch: int, epochs: int) -> Setting:
    from fedleak.models import build_model

    torch.manual_seed(0)
    model = build_model(model_name, 10, (1, 28, 28))
    g = torch.Generator().manual_seed(1)
    xs = [torch.rand((5000, 1, 28, 28), generator=g) for _ in range(10)]
    ys = [torch.randint(0, 10, (5000,), generator=g) for _ in range(10)]
    fl = FLConfig(local_epochs=epochs, batch_size=batch, optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4)
    lr = 0.05 if model_name == "mlp" else 0.01
    return Setting(f"mnist-{'mlp' if model_name == 'mlp' else 'lenet'}", model, xs, ys, fl, lr, 10,
                   lambda x: (x - 0.1307) / 0.3081)


def _gens(k: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(1000 + i) for i in range(k)]


def run_loop(s: Setting, g0: ParamDict) -> list[ParamDict]:
    return [
        local_update(s.model, g0, x, y, fl=s.fl, lr=s.lr, num_classes=s.num_classes, normalize=s.normalize,
                     defense=Defense(), gen=gen)[0]
        for x, y, gen in zip(s.xs, s.ys, _gens(len(s.xs)))
    ]


def run_vectorized(s: Setting, g0: ParamDict) -> list[ParamDict]:
    return local_updates_vectorized(s.model, to_device(g0, DEVICE), s.xs, s.ys, _gens(len(s.xs)), fl=s.fl, lr=s.lr,
                                    num_classes=s.num_classes, normalize=s.normalize)[0]


def best_of(fns: list[Callable[[], object]], repeat: int) -> list[float]:
    """Each function's best wall time of ``repeat`` runs after one warm-up, the runs interleaved (a, b, a, b, ...)
    so that a change of the machine's load hits every function alike."""
    for fn in fns:
        fn()  # warm-up
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, ts in zip(fns, times):
            with Stopwatch(DEVICE) as sw:
                fn()
            ts.append(sw.seconds)
    return [min(ts) for ts in times]


# ---- roofline: the round's GEMM FLOPs over this CPU's sustained GEMM rate = the fastest any engine could go ----

GEMMS = {"mm", "addmm", "bmm", "baddbmm"}


class GemmRecorder(TorchDispatchMode):
    """Records every matrix product run under it: (op, [(shape, stride, dtype) of each tensor argument])."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[object, list[tuple]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in GEMMS:
            self.calls.append((func, [(a.shape, a.stride(), a.dtype) for a in args if isinstance(a, torch.Tensor)]))
        return func(*args, **(kwargs or {}))


def gemm_flops(func: object, tensors: list[tuple]) -> int:
    """2·M·N·K (times the batch for bmm) of one recorded product; the last two tensors are its factors."""
    (a, _, _), (b, _, _) = tensors[-2:]
    return 2 * math.prod(a) * b[-1]


def step_gemms(s: Setting) -> tuple[list[tuple[object, list[tuple]]], int] | None:
    """The matrix products of one full-batch local step of the loop (forward and backward), or None when the step
    also does other heavy work (convolutions), which this roofline does not model."""
    x = s.normalize(s.xs[0][: s.fl.batch_size])
    y = s.ys[0][: s.fl.batch_size]
    with GemmRecorder() as rec, FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(s.model(x), y).backward()
    s.model.zero_grad(set_to_none=True)
    flops = sum(gemm_flops(f, t) for f, t in rec.calls)
    return (rec.calls, flops) if flops == counter.get_total_flops() else None


def gemm_rate(calls: list[tuple[object, list[tuple]]], flops: int, seconds: float = 1.0) -> float:
    """FLOP/s of replaying the step's products (same shapes, strides, dtype; random values) back to back."""
    args = [[torch.empty_strided(sh, st, dtype=dt, device=DEVICE).normal_() for sh, st, dt in t] for _, t in calls]
    funcs = [f for f, _ in calls]

    def replay(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            for f, a in zip(funcs, args):
                f(*a)
        return time.perf_counter() - t0

    n = max(1, int(seconds / max(replay(3) / 3, 1e-6)))
    return flops / min(replay(n) / n for _ in range(3))


def peak_rate(size: int = 2048) -> float:
    """FLOP/s of one big square float32 GEMM (best of 3): the CPU's practical peak at the current thread count."""
    a, b = (torch.randn(size, size, device=DEVICE) for _ in range(2))
    torch.mm(a, b)
    best = min(best_of([lambda: torch.mm(a, b)], 3))
    return 2 * size**3 / best


def round_flops(s: Setting, step_flops: int) -> float:
    """The round's GEMM FLOPs: every product of a step has the batch's rows as one dimension, so a client's round
    costs step_flops / B per sample and epoch."""
    return step_flops / s.fl.batch_size * sum(len(y) for y in s.ys) * s.fl.local_epochs


def max_difference(a: list[ParamDict], b: list[ParamDict]) -> float:
    return max(float((p[n].cpu() - q[n].cpu()).abs().max()) for p, q in zip(a, b) for n in p)


@dataclass
class Row:
    setting: str
    threads: int
    loop: float  # s/round
    vec: float
    flops: float = float("nan")  # the round's GEMM FLOPs (nan: not modelled)
    rate: float = float("nan")  # FLOP/s replaying a step's GEMMs
    peak: float = float("nan")  # FLOP/s of one big GEMM


def bench(settings: list[Setting], threads: list[int], repeat: int, roofline: bool) -> list[Row]:
    rows = []
    for s in settings:
        print(s.describe(), file=sys.stderr, flush=True)
        g0 = get_params(s.model)
        diff = max_difference(run_loop(s, g0), run_vectorized(s, g0))
        print(f"  max |loop - vectorised| over all local parameters: {diff:.2e}", file=sys.stderr, flush=True)
        gemms = step_gemms(s) if roofline and DEVICE.type == "cpu" else None
        for t in threads:
            torch.set_num_threads(t)
            loop, vec = best_of([lambda: run_loop(s, g0), lambda: run_vectorized(s, g0)], repeat)
            row = Row(s.name, t, loop, vec)
            if gemms is not None:
                row.flops, row.rate, row.peak = round_flops(s, gemms[1]), gemm_rate(*gemms), peak_rate()
            print(f"  threads={t}: loop {loop:.3f} s, vectorised {vec:.3f} s", file=sys.stderr, flush=True)
            rows.append(row)
    return rows


FLOWER_COMMANDS = [  # (label, command, extra --set): the engine's loop, the engine as configured, Flower
    ("train (fl.vectorize=off)", "train", ["--set", "fl.vectorize=off"]),
    ("train (fl.vectorize=auto: stacked)", "train", []),
    ("flower-sim (per-client ClientApp)", "flower-sim", []),
]


def flower_vs_train(rounds: int) -> list[tuple[str, float, float, float]]:
    """(label, wall seconds end to end, mean and median per-round `time` from metrics.jsonl) for train (loop and
    vectorised) and flower-sim. The median is the steady state: a run's first round carries one-time costs (the
    loop's first torch.optim optimizer imports torch._dynamo, ~1 s; Ray starts its workers for flower-sim)."""
    out = []
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    for label, command, extra in FLOWER_COMMANDS:
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(tmp) / "run"
            t0 = time.perf_counter()
            on = ["--device", str(DEVICE)] if command == "train" else []  # flower-sim: the CPU
            subprocess.run([sys.executable, "-m", "fedleak.cli", command, "digits-quick", "--out", str(run), "-q",
                            "--set", f"fl.rounds={rounds}", *extra, *on], check=True, env=env, cwd=REPO,
                           stdout=sys.stderr)
            wall = time.perf_counter() - t0
            rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
            per_round = [r["time"] for r in rows if "time" in r]
            nan = float("nan")
            out.append((label, wall, statistics.mean(per_round) if per_round else nan,
                        statistics.median(per_round) if per_round else nan))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", default="digits-quick,mnist-mlp,mnist-lenet")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--mnist-batch", type=int, default=64)
    ap.add_argument("--mnist-epochs", type=int, default=1)
    ap.add_argument("--no-roofline", action="store_true", help="skip the GEMM-rate measurements")
    ap.add_argument("--flower", action="store_true", help="also time flower-sim vs train end to end (the hook)")
    ap.add_argument("--flower-rounds", type=int, default=20)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (TF32 off; timings synchronise the GPU)")
    a = ap.parse_args()
    global DEVICE
    try:
        DEVICE = setup_device(a.device)
    except ValueError as e:  # fedleak's ConfigError: one line naming the option
        sys.exit(f"error: {e}")
    makers = {
        "digits-quick": digits_quick,
        "mnist-mlp": lambda: mnist_shaped("mlp", a.mnist_batch, a.mnist_epochs),
        "mnist-lenet": lambda: mnist_shaped("lenet_dlg", a.mnist_batch, a.mnist_epochs),
    }
    names = [n for n in a.settings.split(",") if n]
    unknown = [n for n in names if n not in makers]
    if unknown:
        sys.exit(f"error: unknown setting(s) {', '.join(unknown)}; choose from {', '.join(makers)}")
    load = os.getloadavg()[0]
    rows = bench([on_device(makers[n]()) for n in names], [int(t) for t in a.threads.split(",")], a.repeat,
                 not a.no_roofline)
    if rows:
        table(rows, a.repeat, load)
    if a.flower:  # ---- Flower hook: end-to-end train vs flower-sim ----
        res = flower_vs_train(a.flower_rounds)
        stacked = res[1][3]
        print(f"\n| command (digits-quick, {a.flower_rounds} rounds) | wall (s) | per round, mean (s) | per round, median "
              "(s) | median / stacked's |")
        print("|---|---|---|---|---|")
        for command, wall, mean, median in res:
            print(f"| {command} | {wall:.1f} | {mean:.3f} | {median:.3f} | {median / stacked:.1f}x |")


def table(rows: list[Row], repeat: int, load: float) -> None:
    where = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else (platform.processor() or platform.machine())
    print(f"\nlocal training, one round (best of {repeat}, interleaved); {where}, {os.cpu_count()} CPUs, load average "
          f"{load:.1f} before / {os.getloadavg()[0]:.1f} after, torch {torch.__version__}\n")
    print("| setting | threads | loop (s/round) | vectorised (s/round) | speed-up |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.setting} | {r.threads} | {r.loop:.3f} | {r.vec:.3f} | {r.loop / r.vec:.2f}x |")
    roof = [r for r in rows if r.flops == r.flops]
    if not roof:
        return
    print("\nroofline: the round's GEMM FLOPs / this CPU's sustained float32 GEMM rate, measured in the same run\n"
          "(rate at the step's shapes = the loop's products of one step replayed back to back; "
          "peak = one 2048³ GEMM)\n")
    print("| setting | threads | GEMM GFLOP/round | rate at step shapes (GFLOP/s) | bound (s/round) | peak (GFLOP/s) "
          "| bound at peak (s/round) | loop | vectorised | loop / bound | max speed-up over the loop |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in roof:
        bound, bound_peak = r.flops / r.rate, r.flops / r.peak
        print(f"| {r.setting} | {r.threads} | {r.flops / 1e9:.1f} | {r.rate / 1e9:.1f} | {bound:.3f} | "
              f"{r.peak / 1e9:.1f} | {bound_peak:.3f} | {r.loop:.3f} | {r.vec:.3f} | {r.loop / bound:.2f}x | "
              f"{r.loop / bound_peak:.2f}x |")


if __name__ == "__main__":
    main()
