"""Record the "behaviour preserved" regression fixture (issue #11) with the current code.

Runs five small experiments through the public CLI (``python -m fedleak.cli``), each in a subprocess with a
pinned environment (``ATEN_CPU_CAPABILITY=default``, one OMP/MKL thread), and stores what they produced under
``tests/regression/data/<case>/``:

* MIA cases (``plain``, ``dpsgd``, ``sparse``): ``fedleak train digits-quick`` shortened to 3 rounds of 1 local
  epoch with signals every round, then ``fedleak attack``. Stored: a column subset (every ``STRIDE``-th candidate,
  all clients) of every float signal array of every recorded round and of the attack's per-candidate scores
  (``arrays.npz``, float arrays as they are); a sha256 of every full array of every ``.npz`` in the run
  directory and of the final model's tensors (``hashes.json``); ``attack/metrics.json``, ``metrics.jsonl`` and
  ``meta.json`` without their volatile keys (``json.json``).
* Inversion cases (``invert-dlg``, ``invert-ig``): ``fedleak invert`` with the ``dlg`` / ``ig-cifar`` presets on
  the generated ``synthetic`` dataset (16x16, no download), two images, a few iterations. Stored: the full
  truth/reconstruction pixels, their hashes and ``metrics.json`` without volatile keys.

``manifest.json`` beside the data holds the torch/numpy/python versions, the effective ATen CPU capability, the
CPU model and the exact commands. ``tests/regression/test_behaviour_preserved.py`` re-runs the same commands and
compares. Re-record only when a numeric change is intended:  ``python tests/regression/record.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DATA = HERE / "data"
FORMAT = 1
STRIDE = 4  # every 4th candidate column of the (clients, candidates) signal arrays is stored in full
VOLATILE = frozenset({"seconds", "time", "run_dir", "created", "git_revision", "versions"})
PINNED_ENV = {"ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "FEDLEAK_QUIET": "1", "PYTHONHASHSEED": "0"}

# 3 rounds, 1 local epoch: the preset's 5 local epochs at lr 0.05 / momentum 0.9 amplify float32 rounding
# differences between CPU kernels to 1-20 % of the signals by round 3 (measured: ATen default vs avx2), which
# would leave no meaningful tolerance on another CPU; with 1 epoch they stay below 1e-6 of each array's scale.
# fl.vectorize=off: the recording is of the per-client loop; fl.vectorize=auto (the default since issue #14)
# trains plain and sparse stacked, which agrees with it to float32 rounding only (measured: final model 4.5e-8,
# signals <= 2e-7 of their scale, attack metrics <= 4e-6), not bit for bit.
_SHORT = ["--set", "fl.rounds=3", "--set", "fl.local_epochs=1", "--set", "signals.every=1", "--set", "fl.threads=1",
          "--set", "fl.vectorize=off"]
MIA_CASES: dict[str, list[str]] = {
    "plain": [],
    # sampling pinned to shuffle (the batches this case was recorded with; poisson became the default in #12)
    "dpsgd": ["--set", "defense.name=dpsgd", "--set", "defense.params.noise_multiplier=0.7",
              "--set", "defense.params.max_grad_norm=1.0", "--set", "defense.params.sampling=shuffle"],
    "sparse": ["--set", "defense.name=sparse", "--set", "defense.params.p=0.9"],
}
_INVERT_COMMON = ["--dataset", "synthetic", "--images", "2", "--threads", "1", "--quiet"]
INVERT_CASES: dict[str, list[str]] = {
    # L-BFGS amplifies rounding differences quickly (1 step of 20 inner evaluations: 1e-3 between ATen kernels);
    # 3 steps of 3 evaluations stay within a few 1e-6 while still exercising the optimiser's history
    "invert-dlg": ["--preset", "dlg", "--iterations", "3", "--set", "attack.lbfgs_inner=3", *_INVERT_COMMON],
    "invert-ig": ["--preset", "ig-cifar", "--set", "normalization=auto", "--iterations", "20", *_INVERT_COMMON],
}
CASES = [*MIA_CASES, *INVERT_CASES]
_SIMD_PREFIXES = ("sse", "ssse", "avx", "fma", "f16c", "amx")


def pinned_env(capability: str | None = None) -> dict[str, str]:
    """The subprocess environment: this checkout's ``src`` first, pinned kernels/threads, no FEDLEAK_* leaks."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDLEAK_")}
    env.update(PINNED_ENV)
    if capability is not None:
        env["ATEN_CPU_CAPABILITY"] = capability
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH", "")) if p)
    return env


def case_commands(case: str, out: Path) -> list[list[str]]:
    """The CLI argument lists of one case, writing into ``out``."""
    if case in MIA_CASES:
        run = str(out / "run")
        return [["train", "digits-quick", "--out", run, *_SHORT, *MIA_CASES[case], "--quiet"],
                ["attack", run, "--no-figures", "--quiet"]]
    if case in INVERT_CASES:
        return [["invert", "--out", str(out / "invert"), *INVERT_CASES[case]]]
    raise KeyError(f"unknown regression case {case!r}; choose from {CASES}")


def run_cli(args: list[str], env: dict[str, str], cwd: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "fedleak.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"fedleak {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")


def run_case(case: str, workdir: Path, env: dict[str, str]) -> Path:
    """Run one case's commands in ``workdir`` (also their cwd) and return ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    for args in case_commands(case, workdir):
        run_cli(args, env, workdir)
    return workdir


def array_digest(a: np.ndarray) -> str:
    """sha256 of dtype, shape and the C-order bytes (so a reshape or a dtype change also shows)."""
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}|{a.shape}|".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def strip_volatile(obj: Any) -> Any:
    """``obj`` without timing, path and version keys (at any depth)."""
    if isinstance(obj, dict):
        return {k: strip_volatile(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [strip_volatile(v) for v in obj]
    return obj


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _subset(a: np.ndarray) -> np.ndarray:
    """Every STRIDE-th entry along the candidate (last) axis; scalars and per-client vectors as they are."""
    return a[..., ::STRIDE] if a.ndim >= 1 and a.shape[-1] > 100 else a


def _is_float(a: np.ndarray) -> bool:
    return np.issubdtype(a.dtype, np.floating)


def _add_npz(name: str, arrays: dict[str, np.ndarray], subsets: dict, hashes: dict) -> None:
    for key, a in arrays.items():
        full = f"{name}/{key}"
        hashes[full] = _hash_entry(a)
        if _is_float(a):
            subsets[full] = _subset(a)


def _model_hashes(path: Path) -> dict[str, dict]:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    arrays = {f"final_model/{k}": v.numpy() for k, v in state.items()}
    return {k: _hash_entry(a) for k, a in arrays.items()}


def _hash_entry(a: np.ndarray) -> dict[str, Any]:
    return {"dtype": a.dtype.str, "shape": list(a.shape), "sha256": array_digest(a)}


def _member_counts(run: Path, num_clients: int) -> list[int]:
    """Members of each client among the candidates (the rank metrics' resolution when it is the target)."""
    owner = _load_npz(run / "candidates.npz")["owner"]
    return [int(np.sum(owner == t)) for t in range(num_clients) if np.any(owner == t)]


def extract_mia(workdir: Path) -> dict[str, Any]:
    run = workdir / "run"
    subsets: dict[str, np.ndarray] = {}
    hashes: dict[str, dict] = {}
    npzs = sorted(run.glob("signals/*.npz")) + [run / "candidates.npz", run / "split.npz", run / "attack/scores.npz"]
    for path in npzs:
        _add_npz(path.relative_to(run).with_suffix("").as_posix(), _load_npz(path), subsets, hashes)
    hashes.update(_model_hashes(run / "final_model.pt"))
    lines = (run / "metrics.jsonl").read_text().splitlines()
    docs = {
        "attack_metrics": json.loads((run / "attack/metrics.json").read_text()),
        "train_metrics": [json.loads(line) for line in lines if line.strip()],
        "meta": json.loads((run / "meta.json").read_text()),
    }
    docs["counts"] = {"members_per_target": _member_counts(run, len(docs["meta"]["client_sizes"]))}
    return {"arrays": subsets, "hashes": hashes, "json": strip_volatile(docs)}


def extract_invert(workdir: Path) -> dict[str, Any]:
    import torch

    out = workdir / "invert"
    rec = torch.load(out / "reconstructions.pt", map_location="cpu", weights_only=True)
    arrays = {k: rec[k].numpy() for k in ("truth", "reconstruction")}
    hashes = {k: _hash_entry(a) for k, a in arrays.items()}
    docs = {"invert_metrics": json.loads((out / "metrics.json").read_text()), "indices": list(rec["indices"])}
    return {"arrays": arrays, "hashes": hashes, "json": strip_volatile(docs)}


def extract(case: str, workdir: Path) -> dict[str, Any]:
    return extract_mia(workdir) if case in MIA_CASES else extract_invert(workdir)


def save_case(result: dict[str, Any], dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(dest / "arrays.npz", **result["arrays"])
    (dest / "hashes.json").write_text(json.dumps(result["hashes"], indent=1, sort_keys=True) + "\n")
    (dest / "json.json").write_text(json.dumps(result["json"], indent=1) + "\n")


def load_case(src: Path) -> dict[str, Any]:
    return {"arrays": _load_npz(src / "arrays.npz"),
            "hashes": json.loads((src / "hashes.json").read_text()),
            "json": json.loads((src / "json.json").read_text())}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def probe_versions(env: dict[str, str]) -> dict[str, str]:
    """Versions and the effective ATen CPU capability as the subprocesses see them."""
    code = ("import json, platform, numpy, torch; print(json.dumps({'torch': torch.__version__, "
            "'numpy': numpy.__version__, 'python': platform.python_version(), "
            "'aten_capability': torch.backends.cpu.get_cpu_capability()}))")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def simd_flags() -> list[str]:
    """The CPU's vector-ISA flags (what BLAS/oneDNN/ATen dispatch on); empty where /proc/cpuinfo is absent."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return sorted(f for f in line.split(":", 1)[1].split() if f.startswith(_SIMD_PREFIXES))
    except OSError:
        pass
    return []


def environment(env: dict[str, str]) -> dict[str, Any]:
    return {**probe_versions(env), "cpu_model": cpu_model(), "simd_flags": simd_flags(), "machine": platform.machine(),
            "env": {k: env[k] for k in PINNED_ENV}}


_COUNT_INVERT_MODEL = """
import json, sys
from fedleak.attacks.inversion.presets import InvertSpec
from fedleak.attacks.inversion.runner import load_images
from fedleak.models import build_model
spec = InvertSpec.model_validate(json.load(open(sys.argv[1]))["spec"])
pixels, _, k = load_images(spec)
model = build_model(spec.model, k, tuple(pixels.shape[1:]), **spec.model_options)
print(sum(p.numel() for p in model.parameters()))
"""


def model_parameters(case: str, workdir: Path, env: dict[str, str]) -> int:
    """The parameter count of the case's model: the length of its longest float32 reductions (tolerance scale)."""
    if case in MIA_CASES:
        return int(json.loads((workdir / "run/meta.json").read_text())["model"]["trainable_parameters"])
    proc = subprocess.run([sys.executable, "-c", _COUNT_INVERT_MODEL, str(workdir / "invert/metrics.json")],
                          env=env, capture_output=True, text=True, check=True)
    return int(proc.stdout.strip().splitlines()[-1])


def _git_revision() -> str | None:
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return proc.stdout.strip() or None


def record(dest: Path = DATA, cases: list[str] | None = None, capability: str | None = None) -> dict[str, Any]:
    """Run every case (or ``cases``) and (re)write ``dest``; returns the manifest.

    ``capability`` replaces ATEN_CPU_CAPABILITY=default (only for experiments; the fixture is recorded with default).
    """
    env = pinned_env(capability)
    old = json.loads((dest / "manifest.json").read_text()) if (dest / "manifest.json").exists() else {}
    manifest = {"format": FORMAT, **environment(env), "git_revision": _git_revision(), "stride": STRIDE,
                "volatile_keys": sorted(VOLATILE), "commands": old.get("commands", {}) if cases else {},
                "parameters": old.get("parameters", {}) if cases else {}}
    with tempfile.TemporaryDirectory(prefix="fedleak-regression-") as tmp:
        for case in cases or CASES:
            work = run_case(case, Path(tmp) / case, env)
            manifest["commands"][case] = [" ".join(["fedleak", *a]).replace(str(work), "<out>")
                                          for a in case_commands(case, work)]
            manifest["parameters"][case] = model_parameters(case, work, env)
            if (dest / case).exists():
                shutil.rmtree(dest / case)
            save_case(extract(case, work), dest / case)
            print(f"recorded {case}", flush=True)
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DATA, help="Destination folder (default: tests/regression/data).")
    parser.add_argument("--case", action="append", choices=CASES, help="Only these cases (repeatable).")
    parser.add_argument("--capability", help="ATEN_CPU_CAPABILITY for an experiment (default: default).")
    ns = parser.parse_args()
    print(json.dumps(record(ns.out, ns.case, ns.capability), indent=1))
