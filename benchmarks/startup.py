"""Start-up cost of the CLI: CPU time of ``fedleak --help`` next to ``python -c "import torch"``, side by side.

Each command runs in a fresh interpreter (``sys.executable``), interleaved A, B, A, B, ...; the child's user+system
CPU time is read from ``resource.getrusage(RUSAGE_CHILDREN)`` around each run, and the median of ``--repeat`` runs is
printed with the ratio. Goal (issue #14): ``fedleak --help`` and config validation cost <= 0.25 of ``import torch``.
Commands are imported lazily (``fedleak.cli.COMMANDS``), so none of the fedleak rows imports torch; measured on the
project machine (2 shared cores, heavily loaded: wall times are not meaningful, CPU times are), median of 5:
``import torch`` 1.71 s CPU, ``fedleak --help`` 0.18 s (0.11 of it), ``fedleak train <typo>`` 0.25 s (0.14);
before the lazy table ``fedleak --help`` cost 1.44x ``import torch``.

Usage: python benchmarks/startup.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BAD_CONFIG = "fl:\n  rouds: 5\n"  # a typo: validation must fail with a one-line error


def cpu_seconds(cmd: list[str]) -> tuple[float, float, int]:
    """(child CPU seconds, wall seconds, exit code) of one run of ``cmd``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    rc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall, rc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bad = Path(tmp) / "typo.yaml"
        bad.write_text(BAD_CONFIG)
        cmds = {
            "python -c 'import torch'": [sys.executable, "-c", "import torch"],
            "python -c 'pass' (interpreter alone)": [sys.executable, "-c", "pass"],
            "fedleak --help": [sys.executable, "-m", "fedleak.cli", "--help"],
            "fedleak invert --help": [sys.executable, "-m", "fedleak.cli", "invert", "--help"],
            "fedleak train <config with a typo>": [sys.executable, "-m", "fedleak.cli", "train", str(bad), "--out",
                                                   str(Path(tmp) / "run")],
        }
        cpu: dict[str, list[float]] = {k: [] for k in cmds}
        wall: dict[str, list[float]] = {k: [] for k in cmds}
        for name, cmd in cmds.items():  # warm the file cache once
            cpu_seconds(cmd)
        for _ in range(args.repeat):
            for name, cmd in cmds.items():
                c, w, _rc = cpu_seconds(cmd)
                cpu[name].append(c)
                wall[name].append(w)
    ref = statistics.median(cpu["python -c 'import torch'"])
    print(f"median of {args.repeat} interleaved runs, {sys.executable}\n")
    print("| command | CPU time | wall time | CPU / import torch |")
    print("|---|---:|---:|---:|")
    for name in cmds:
        c, w = statistics.median(cpu[name]), statistics.median(wall[name])
        print(f"| `{name}` | {c:.2f} s | {w:.2f} s | {c / ref:.2f} |")
    ratio = statistics.median(cpu["fedleak --help"]) / ref
    print(f"\nRATIO: fedleak --help costs {ratio:.2f} of import torch (goal <= 0.25)")


if __name__ == "__main__":
    main()
