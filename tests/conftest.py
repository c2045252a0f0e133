from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("FEDLEAK_QUIET", "1")

# Unit roundoffs (machine epsilon) of the two float types: every float32 tolerance in the suite is a multiple of
# EPS32 derived from the size of the computation, never a number read off one machine's result.
EPS32 = float(torch.finfo(torch.float32).eps)  # 2**-23
EPS64 = float(torch.finfo(torch.float64).eps)  # 2**-52


def rounding_tol(n: float, scale, *, eps: float = EPS32, k: float = 8.0):
    """Rounding tolerance ``k · eps · √n · scale`` for a result built from sums of ``n`` terms of size ``scale``.

    ``scale`` is the magnitude of the summed terms (e.g. ``‖g‖·‖Δ‖`` for a dot product ``g·Δ``, which bounds
    ``Σ|g_i Δ_i|``), not of the result, so cancellation is accounted for. ``√n`` is the growth of rounding errors in
    a length-``n`` sum in any order (sequential, pairwise, SIMD-blocked: whatever kernel a CPU picks); ``k`` leaves
    room for a handful of chained operations. Works elementwise on arrays/tensors of ``scale``.
    """
    return k * eps * math.sqrt(n) * scale


def longest_sum(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Length of the longest sum in a forward/backward of ``model`` on one sample of ``x``: the ``n`` of rounding_tol.

    Conv2d: ``C_in·k²/groups`` (forward), ``C_out·k²/groups`` (input gradient), ``H_out·W_out`` (weight gradient);
    Linear: in/out features and the positions it is applied at; GroupNorm: one group; any other layer holding
    parameters: its whole per-sample input (an upper bound).
    """
    sizes = [1]

    def hook(mod: torch.nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        inp = inputs[0]
        if isinstance(mod, torch.nn.Conv2d):
            kk = mod.kernel_size[0] * mod.kernel_size[1]
            sizes.extend([mod.in_channels * kk // mod.groups, mod.out_channels * kk // mod.groups,
                          out.shape[-1] * out.shape[-2]])
        elif isinstance(mod, torch.nn.Linear):
            sizes.extend([mod.in_features, mod.out_features, inp[0].numel() // mod.in_features])
        elif isinstance(mod, torch.nn.GroupNorm):
            sizes.append(inp[0].numel() // mod.num_groups)
        elif any(True for _ in mod.parameters(recurse=False)):
            sizes.append(inp[0].numel())

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    return max(sizes)


def _f64(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().to("cpu", torch.float64).numpy()
    return np.asarray(a, dtype=np.float64)


def assert_within(actual, expected, tol, what: str = "") -> None:
    """``|actual − expected| ≤ tol`` elementwise (``tol`` a number or an array broadcasting against the values)."""
    a, e, t = _f64(actual), _f64(expected), _f64(tol)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    err = np.abs(a - e)
    ratio = err / np.maximum(t, np.finfo(np.float64).tiny)
    worst = np.unravel_index(int(np.argmax(ratio)), ratio.shape) if ratio.size else ()
    report = os.environ.get("FEDLEAK_TOL_REPORT")  # diagnostics: append the worst err/tol of every check
    if report and ratio.size:
        with open(report, "a") as f:
            f.write(f"{os.environ.get('PYTEST_CURRENT_TEST', '?').split(' ')[0]}\t{what}\t{float(ratio[worst]):.4g}\n")
    assert np.all(err <= t), (
        f"{what}: |actual - expected| exceeds the tolerance at {int((err > t).sum())} of {err.size} entries; "
        f"worst at {worst}: err {err[worst]:.3e} vs tol {np.broadcast_to(t, err.shape)[worst]:.3e}"
    )


#: the repository root and its src/ (tests live in subfolders mirroring src/fedleak; use these, not parents[n])
REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present (CI has it)")
    return SHARED_DATA


def tiny_config(**over):
    """A seconds-long synthetic experiment for engine tests."""
    from fedleak.config import parse_config

    raw = {
        "name": "tiny",
        "seed": 3,
        "data": {"name": "synthetic", "synthetic": {"n_train": 120, "n_test": 40, "num_classes": 4, "channels": 1, "size": 8}},
        "partition": {"num_clients": 3},
        "candidates": {"n_test": 20, "n_other": 10},
        "model": {"name": "mlp", "options": {"hidden": [16]}},
        "fl": {"rounds": 3, "batch_size": 8, "lr": 0.1},
        "signals": {"every": 1},
    }
    for key, value in over.items():
        node = raw
        parts = key.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return parse_config(raw)


def assert_one_error_line(code: int, err: str, *needles: str) -> str:
    """A CLI failure as issue #10 requires: exit 2, one `error:` line holding every needle, no traceback."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


class DiagModel(torch.nn.Module):
    """r = x ⊙ a (12 features, a = linspace(0.5, 2)) into Linear(12, 3): a representation Jacobian that is
    diagonal (row i is a_i e_i), for Soteria cases with a closed form."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.linspace(0.5, 2.0, 12))
        self.fc = torch.nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1) * self.a)


def naive_k(member: np.ndarray, scores: np.ndarray, target: float) -> int:
    """Most members flagged by any threshold 'score >= v' that flags at most target * n_neg non-members."""
    pos, neg = scores[member], scores[~member]
    best = 0
    for v in np.unique(scores):
        if np.sum(neg >= v) <= target * neg.size + 1e-9:
            best = max(best, int(np.sum(pos >= v)))
    return best
