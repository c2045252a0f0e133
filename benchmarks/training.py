"""Time one round of local training: the per-client loop vs the vectorised engine (issue #14 item 1).

(a) loop:       ``fedleak.fl.local.local_update`` once per client (the no-op defense), as the engine runs today.
(b) vectorised: ``fedleak.fl.vectorized.local_updates_vectorized``, all clients as one vmapped computation.

Settings:
* digits-quick: configs/digits-quick.yaml as it is (scikit-learn digits, MLP 64-256-128-10, 10 IID clients of
  ~90 samples, 5 local epochs, batch 10, SGD momentum 0.9, weight decay 5e-4), the real partition.
* mnist-mlp / mnist-lenet: MNIST-shaped *synthetic* tensors (uniform pixels, random labels; timing only),
  10 clients x 5,000 samples of 1x28x28, MLP 784-256-128-10 / lenet_dlg, SGD as above; batch size and local
  epochs from --mnist-batch (default 64) and --mnist-epochs (default 1).

Each cell is the best of --repeat rounds after one warm-up round, wall clock, at 1 and 2 torch threads. The
two engines' local models are compared once per setting (max |difference|, float32) so the table times the
same work: ~1e-7, unless a long run meets a ReLU unit at its kink, after which float32 trajectories drift (the
loop does the same against itself across CPUs; see fedleak/fl/vectorized.py). The machine's load average is
printed: on a shared machine the numbers move with it.

Measured on the project machine (2-core AMD EPYC VM shared with other jobs, load average ~4.5, torch 2.13,
--repeat 2):

| setting | threads | loop (s/round) | vectorised (s/round) | speed-up |
|---|---|---|---|---|
| digits-quick | 1 | 0.261 | 0.089 | 2.93x |
| digits-quick | 2 | 1.092 | 0.095 | 11.52x |
| mnist-mlp | 1 | 1.334 | 1.415 | 0.94x |
| mnist-mlp | 2 | 1.288 | 0.957 | 1.35x |
| mnist-lenet | 1 | 4.279 | 6.808 | 0.63x |
| mnist-lenet | 2 | 3.724 | 29.069 | 0.13x |

At 2 threads on the loaded machine the loop's tiny ops lose most of their time in OpenMP hand-offs, hence 11.5x;
the 1-thread figure is the fair one. Vectorising wins where per-step work is small (per-step overhead of the
loop: optimizer.step in Python, one dispatch per tensor); for MNIST-sized models the K stacked parameter sets
fall out of cache and vmapped convolutions become grouped convolutions, slower than the loop on a CPU.

Flower hook (for the lead): ``--flower`` also times ``python -m fedleak.cli flower-sim digits-quick`` against
``python -m fedleak.cli train digits-quick`` end to end (--flower-rounds rounds each), per round from the
``time`` field of their metrics.jsonl, with ``train`` both as the per-client loop (``fl.vectorize=off``) and as
configured (``auto``: stacked for digits-quick).

Usage: python benchmarks/training.py [--settings digits-quick,mnist-mlp,mnist-lenet] [--threads 1,2]
                                     [--repeat 3] [--mnist-batch 64] [--mnist-epochs 1] [--flower]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

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


def best_of(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        with Stopwatch(DEVICE) as sw:
            fn()
        times.append(sw.seconds)
    return min(times)


def max_difference(a: list[ParamDict], b: list[ParamDict]) -> float:
    return max(float((p[n].cpu() - q[n].cpu()).abs().max()) for p, q in zip(a, b) for n in p)


def bench(settings: list[Setting], threads: list[int], repeat: int) -> list[tuple[str, int, float, float]]:
    rows = []
    for s in settings:
        print(s.describe(), file=sys.stderr, flush=True)
        g0 = get_params(s.model)
        diff = max_difference(run_loop(s, g0), run_vectorized(s, g0))
        print(f"  max |loop - vectorised| over all local parameters: {diff:.2e}", file=sys.stderr, flush=True)
        for t in threads:
            torch.set_num_threads(t)
            loop = best_of(lambda: run_loop(s, g0), repeat)
            vec = best_of(lambda: run_vectorized(s, g0), repeat)
            print(f"  threads={t}: loop {loop:.3f} s, vectorised {vec:.3f} s", file=sys.stderr, flush=True)
            rows.append((s.name, t, loop, vec))
    return rows


FLOWER_COMMANDS = [  # (label, command, extra --set): the engine's loop, the engine as configured, Flower
    ("train (fl.vectorize=off)", "train", ["--set", "fl.vectorize=off"]),
    ("train (fl.vectorize=auto: stacked)", "train", []),
    ("flower-sim (per-client ClientApp)", "flower-sim", []),
]


def flower_vs_train(rounds: int) -> list[tuple[str, float, float]]:
    """(label, wall seconds end to end, mean per-round `time` from metrics.jsonl) for train (loop and
    vectorised) and flower-sim."""
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
            out.append((label, wall, sum(per_round) / len(per_round) if per_round else float("nan")))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", default="digits-quick,mnist-mlp,mnist-lenet")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--mnist-batch", type=int, default=64)
    ap.add_argument("--mnist-epochs", type=int, default=1)
    ap.add_argument("--flower", action="store_true", help="also time flower-sim vs train end to end (the hook)")
    ap.add_argument("--flower-rounds", type=int, default=3)
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
    rows = bench([on_device(makers[n]()) for n in names], [int(t) for t in a.threads.split(",")], a.repeat)
    if rows:
        table(rows, a.repeat)
    if a.flower:  # ---- Flower hook: end-to-end train vs flower-sim ----
        print(f"\n| command (digits-quick, {a.flower_rounds} rounds) | wall (s) | per round from metrics.jsonl (s) |")
        print("|---|---|---|")
        for command, wall, per_round in flower_vs_train(a.flower_rounds):
            print(f"| {command} | {wall:.1f} | {per_round:.3f} |")


def table(rows: list[tuple[str, int, float, float]], repeat: int) -> None:
    where = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else (platform.processor() or platform.machine())
    print(f"\nlocal training, one round (best of {repeat}); {where}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, torch {torch.__version__}\n")
    print("| setting | threads | loop (s/round) | vectorised (s/round) | speed-up |")
    print("|---|---|---|---|---|")
    for name, t, loop, vec in rows:
        print(f"| {name} | {t} | {loop:.3f} | {vec:.3f} | {loop / vec:.2f}x |")


if __name__ == "__main__":
    main()
