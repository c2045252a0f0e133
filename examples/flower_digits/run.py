"""Run the example federation in Flower's simulation engine and write a fedleak run directory.

    .venv/bin/python examples/flower_digits/run.py --out runs/flower-digits
    .venv/bin/fedleak attack runs/flower-digits && .venv/bin/fedleak report runs/flower-digits
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/flower-digits", help="fedleak run directory to create")
    ap.add_argument("--rounds", type=int, default=None, help="server rounds (default: fl.rounds of fedleak.yaml)")
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs for Ray (default: all, at most 5)")
    args = ap.parse_args()

    # the ClientApps run in Ray worker processes: let them import this example package
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    sys.path.insert(0, str(HERE))
    os.environ["FEDLEAK_FLOWER_OUT"] = str(Path(args.out).resolve())
    from flwr.simulation import run_simulation

    from flower_digits.client_app import app as client_app
    from flower_digits.server_app import app as server_app
    from flower_digits.task import load_cfg

    cfg = load_cfg()
    if args.rounds:
        os.environ["FEDLEAK_FLOWER_ROUNDS"] = str(args.rounds)
    K = cfg.partition.num_clients
    ncpu = args.num_cpus or max(1, min(os.cpu_count() or 1, K))
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=K,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": ncpu, "num_gpus": 0, "include_dashboard": False},
        },
    )
    print(f"fedleak run directory: {args.out}")


if __name__ == "__main__":
    main()
