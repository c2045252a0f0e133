"""Where torch computations run: parse and check a device name, set up its numerics, time it honestly.

One low-layer module (it imports only :mod:`fedleak.errors`; torch only inside functions, so the config layer can
check a device name without importing torch for ``cpu``) used by the engine (``fedleak train``/``run``: the model,
its data batches and the per-sample signals run on ``device``), ``fedleak invert`` and the benchmarks.

- :func:`check_device` — ``cpu``, ``cuda`` or ``cuda:N``, and that the GPU exists: a one-line
  :class:`~fedleak.errors.ConfigError` otherwise.
- :func:`setup_device` — check it and switch TF32 off (cuBLAS matmuls and cuDNN convolutions in full float32,
  ``torch.set_float32_matmul_precision("highest")``): with TF32 the per-sample signals lose three to four digits
  on an H200 (docs/gpu.md). Called for every device, the CPU included, so numerics never depend on where
  a process ran before.
- :func:`to_device` — a tensor, or dicts/lists/tuples of them, moved to a device (a no-op on the same device:
  ``Tensor.to`` returns the tensor itself, so a CPU run computes with exactly the tensors it did before).
- :func:`synchronize`, :class:`Stopwatch` — wall time that waits for queued GPU work at both ends.

Random draws never happen on the device: every generator of a run is a CPU ``torch.Generator`` or NumPy
generator (:mod:`fedleak.seeding`), and what it draws is moved to the device afterwards, so a seed gives the same
numbers on any device.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

from fedleak.errors import ConfigError

if TYPE_CHECKING:
    import torch

DEVICE_RE = re.compile(r"cpu|cuda(?::(\d+))?")
DEVICE_HELP = "'cpu', 'cuda' or 'cuda:N'"


def device_problem(name: str) -> str | None:
    """Why ``name`` is not a usable device here (one sentence ending in what to use), or None when it is."""
    m = DEVICE_RE.fullmatch(name)
    if m is None:
        return f"{name!r} is not a device; use {DEVICE_HELP}"
    if name == "cpu":
        return None
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if int(m.group(1) or 0) >= n:
        return f"{name!r} is not available (this machine has {n} CUDA device(s)); use 'cpu'"
    return None


def check_device(name: str, what: str = "--device") -> str:
    """``name`` if it is a usable device, else a :class:`ConfigError` naming ``what`` (the option or key)."""
    why = device_problem(name)
    if why is not None:
        raise ConfigError(f"{what}: {why}")
    return name


def disable_tf32() -> None:
    """Full float32 matmuls and convolutions on CUDA (TF32 off); the CPU default made explicit."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


def setup_device(name: str, what: str = "--device") -> "torch.device":
    """Check ``name`` (:func:`check_device`), switch TF32 off, and return the ``torch.device``."""
    import torch

    check_device(name, what)
    disable_tf32()
    return torch.device(name)


def to_device(obj: Any, device: "torch.device | str") -> Any:
    """``obj`` with every tensor in it (nested dicts, lists, tuples) moved to ``device``; other values as they are."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def module_device(module: "torch.nn.Module") -> "torch.device":
    """The device of a module's first parameter (or buffer); the CPU for a module without tensors."""
    import torch

    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def synchronize(device: "torch.device | str") -> None:
    """Wait until the work queued on ``device`` is done (CUDA); nothing to wait for on the CPU."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Wall-clock seconds of a ``with`` block, ``device`` synchronised on entry and exit (``.seconds``)."""

    def __init__(self, device: "torch.device | str" = "cpu") -> None:
        self.device = device
        self.seconds = float("nan")

    def __enter__(self) -> "Stopwatch":
        synchronize(self.device)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        synchronize(self.device)
        self.seconds = time.perf_counter() - self._t0


__all__ = [
    "DEVICE_HELP", "Stopwatch", "check_device", "device_problem", "disable_tf32", "module_device", "setup_device",
    "synchronize", "to_device",
]
