"""Time every membership attack on a stored run of 30 rounds x 10 clients x 15,000 candidates.

    .venv/bin/python benchmarks/attacks.py [--rounds 30] [--clients 10] [--per-client 5000] [--repeat 3]

The store is written by the toy-model generator (fedleak.fl.toy) through the real
run-store API, in the official candidate layout: the target's 5,000 samples, 1,000 samples of each
of the 9 other clients and 1,000 test samples = 15,000 candidates. Prints one line per step with
the best of ``--repeat`` wall-clock times.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from fedleak.attacks.mia import ATTACKS, evaluate, run_attacks
from fedleak.fl.toy import generate_toy_run
from fedleak.metrics.roc import roc_metrics
from fedleak.signals.loading import load_signals


def best_of(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--per-client", type=int, default=5000)
    ap.add_argument("--other", type=int, default=1000, help="candidates per non-target client")
    ap.add_argument("--test", type=int, default=1000, help="test candidates")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", type=Path, default=None, help="write the store here and keep it")
    args = ap.parse_args()

    tmp = None
    if args.keep is None:
        tmp = tempfile.TemporaryDirectory(prefix="fedleak-bench-")
        run_dir = Path(tmp.name) / "run"
    else:
        run_dir = args.keep
    rows: list[tuple[str, float, str]] = []
    t = time.perf_counter()
    generate_toy_run(
        run_dir, num_clients=args.clients, per_client=args.per_client, n_other=args.other,
        n_test=max(args.test, 10 * args.test), n_test_cand=args.test, rounds=args.rounds, shift=0.2,
    )
    rows.append(("generate the store (toy model)", time.perf_counter() - t, "once"))
    dt, sig = best_of(lambda: load_signals(run_dir), args.repeat)
    R, K, N = sig.loss.shape
    rows.append((f"load_signals  [R={R}, K={K}, N={N}]", dt, ""))

    labels = sig.members()
    for name in ATTACKS:
        dt, s = best_of(lambda: run_attacks(sig, name)[name], args.repeat)
        m = roc_metrics(labels, s)
        rows.append((f"attack {name}", dt, f"AUC {m.auc:.3f}, TPR@0.1% {100 * m.tpr[0.001]:.2f}%"))
    for agg in ("mean-log", "stouffer", "fisher"):
        dt, _ = best_of(lambda: run_attacks(sig, "fedmia-ii", aggregation=agg)["fedmia-ii"], args.repeat)
        rows.append((f"attack fedmia-ii, aggregation {agg}", dt, ""))
    dt, _ = best_of(lambda: run_attacks(sig, "fedmia-ii", outlier_filter=True)["fedmia-ii"], args.repeat)
    rows.append(("attack fedmia-ii, 3-sigma filter", dt, ""))
    dt, _ = best_of(lambda: run_attacks(sig, "fedmia-ii", robust=True)["fedmia-ii"], args.repeat)
    rows.append(("attack fedmia-ii, robust median/MAD null", dt, ""))
    dt, _ = best_of(lambda: run_attacks(sig), args.repeat)
    rows.append(("all 10 attacks (run_attacks)", dt, ""))
    s = run_attacks(sig, "fedmia-ii")["fedmia-ii"]
    dt, _ = best_of(lambda: roc_metrics(labels, s), args.repeat)
    rows.append(("roc_metrics of one attack", dt, ""))
    dt, _ = best_of(lambda: evaluate(sig, rotate=False), 1)
    rows.append(("evaluate: all attacks + per-round curves", dt, ""))
    dt, _ = best_of(lambda: evaluate(sig, rotate=True, per_round=False), 1)
    rows.append((f"evaluate: all attacks x {K} rotating targets", dt, ""))

    w = max(len(r[0]) for r in rows)
    print(f"{'step':<{w}}  {'seconds':>8}  note")
    print("-" * (w + 40))
    for name, sec, note in rows:
        print(f"{name:<{w}}  {sec:8.3f}  {note}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
