"""Behaviour preserved (issue #11): the recorded CLI runs in tests/regression/data must come out the same.

Each case re-runs its ``fedleak`` commands in subprocesses with the recording's pinned environment
(``ATEN_CPU_CAPABILITY=default``, one OMP/MKL thread, this checkout's ``src`` first) and compares with the
fixture:

* bit-identical (array hashes, stored arrays, JSON values) when torch, numpy, the CPU model, its vector-ISA flags
  and the effective ATen capability match ``manifest.json``;
* otherwise within float32 tolerances derived from the values. Why a tolerance at all: even with
  ATEN_CPU_CAPABILITY=default (which only pins ATen's own vectorised kernels), another CPU makes MKL/oneDNN pick
  other GEMM/convolution kernels (blocking, FMA), so float32 sums round in another order and the last bits
  differ; training then carries the difference forward. The rules and their derivation are in ``compare.py``.

Environment knobs (for experiments, not CI): ``FEDLEAK_REGRESSION_CAPABILITY=avx2`` runs the commands with another
ATen capability (then the tolerance path is taken); ``FEDLEAK_REGRESSION_MODE=exact|tolerance`` forces a path.
To re-record after an intended numeric change: ``python tests/regression/record.py`` (see its docstring).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from .compare import Tolerance, compare_case, max_differences, tolerance_for
from .record import CASES, DATA, PINNED_ENV, environment, extract, load_case, pinned_env, run_case

MATCH_KEYS = ("torch", "numpy", "cpu_model", "simd_flags", "aten_capability")


def _manifest() -> dict:
    return json.loads((DATA / "manifest.json").read_text())


def _tolerance(ref: dict, case: str) -> Tolerance:
    return tolerance_for(ref, _manifest()["parameters"][case])


@pytest.fixture(scope="module")
def setup() -> tuple[dict[str, str], bool, str]:
    """The subprocess environment, whether the comparison is exact, and why."""
    env = pinned_env(os.environ.get("FEDLEAK_REGRESSION_CAPABILITY") or None)
    here, recorded = environment(env), _manifest()
    differ = [f"{k}: {here[k]!r} (recorded {recorded[k]!r})" for k in MATCH_KEYS if here[k] != recorded[k]]
    forced = os.environ.get("FEDLEAK_REGRESSION_MODE")
    exact = forced == "exact" if forced else not differ
    why = f"forced {forced}" if forced else ("same environment" if not differ else "; ".join(differ))
    return env, exact, why


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_cli_outputs_match_the_recording(case: str, setup, tmp_path: Path) -> None:
    env, exact, why = setup
    new = extract(case, run_case(case, tmp_path / case, env))
    ref = load_case(DATA / case)
    problems = compare_case(ref, new, None if exact else _tolerance(ref, case))
    mode = "bit-identical" if exact else "tolerance"
    assert not problems, (f"{case} ({mode}: {why}; max differences {max_differences(ref, new)}): "
                          f"{len(problems)} mismatches:\n" + "\n".join(problems[:25]))


def test_fixture_is_small_and_recorded_with_the_pinned_environment() -> None:
    total = sum(p.stat().st_size for p in DATA.rglob("*") if p.is_file())
    assert total < 2_000_000, f"fixture is {total} bytes"
    m = _manifest()
    assert m["env"] == PINNED_ENV and m["aten_capability"] == "DEFAULT"
    assert set(m["commands"]) == set(CASES) == set(m["parameters"])
    assert all(m[k] for k in ("torch", "numpy", "cpu_model"))
    assert m["parameters"]["plain"] == 64 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10  # digits-quick's MLP
    for case in CASES:
        ref = load_case(DATA / case)
        assert ref["hashes"] and ref["arrays"] and ref["json"]


# --- the comparison itself, on hand-made changes of the recorded data (no subprocess) ---


def _copy(case: dict) -> dict:
    return {"arrays": {k: v.copy() for k, v in case["arrays"].items()},
            "hashes": {k: dict(v) for k, v in case["hashes"].items()},
            "json": json.loads(json.dumps(case["json"]))}


def test_comparison_accepts_the_recording_itself_in_both_modes() -> None:
    for case in CASES:
        ref = load_case(DATA / case)
        assert compare_case(ref, _copy(ref), None) == []
        assert compare_case(ref, _copy(ref), _tolerance(ref, case)) == []


def test_comparison_flags_one_ulp_when_exact_and_only_real_changes_with_tolerance() -> None:
    ref = load_case(DATA / "plain")
    tol = _tolerance(ref, "plain")
    key = "signals/round_0002/loss"
    a = ref["arrays"][key]
    scale = float(np.max(np.abs(a)))

    one_ulp = _copy(ref)
    one_ulp["arrays"][key][0, 0] = np.nextafter(a[0, 0], np.float32(np.inf))
    assert any(key in p for p in compare_case(ref, one_ulp, None))
    assert compare_case(ref, one_ulp, tol) == []

    # just inside / just outside the float32 tolerance, relative to the array's scale
    for factor, flagged in ((0.5, False), (2.0, True)):
        moved = _copy(ref)
        moved["arrays"][key][3, 7] = np.float32(a[3, 7] + factor * tol.rtol * scale)
        assert any(key in p for p in compare_case(ref, moved, tol)) is flagged

    # an integer array (ids, membership) must match even with tolerance
    ids = _copy(ref)
    ids["hashes"]["candidates/owner"]["sha256"] = "0" * 64
    assert any("candidates/owner" in p for p in compare_case(ref, ids, tol))


def test_rank_metrics_may_move_one_member_step_and_no_more() -> None:
    ref = load_case(DATA / "plain")
    tol = _tolerance(ref, "plain")
    step = tol.rank_step
    counts = ref["json"]["counts"]["members_per_target"]
    assert step == pytest.approx(1 / min(counts)) and min(counts) == 60  # digits-quick: n_other = 60
    attack = ref["json"]["attack_metrics"]["attacks"]["fedmia-ii"]
    for delta, flagged in ((step, False), (2 * step, True)):
        new = _copy(ref)
        new["json"]["attack_metrics"]["attacks"]["fedmia-ii"]["tpr@1%"] = attack["tpr@1%"] + delta
        problems = compare_case(ref, new, tol)
        assert any("fedmia-ii/tpr@1%" in p for p in problems) is flagged
    # a non-rank value (a training loss) gets only the float32 tolerance
    new = _copy(ref)
    new["json"]["train_metrics"][2]["test_loss"] += 1e-3
    assert any("train_metrics/2/test_loss" in p for p in compare_case(ref, new, tol))
    # structure changes are always reported
    new = _copy(ref)
    del new["json"]["attack_metrics"]["attacks"]["avg-norm"]
    assert any("keys differ" in p for p in compare_case(ref, new, tol))
