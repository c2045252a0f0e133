"""A damaged run directory is reported file by file, and deleted files come back identical on resume.

Every case damages a real trained run the way disks, crashes and people do (truncation, garbage, files of
another run, edits) and checks the one-line StoreError: it names the file, says what is still intact and
what to do; the advice is then followed and must work.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import SRC, tiny_config
from fedleak.config import load_config
from fedleak.fl.simulation import train
from fedleak.signals import store
from fedleak.signals.runconfig import read_run_config
from fedleak.signals.loading import load_signals
from fedleak.signals.store import StoreError, read_metrics, read_meta, round_path

ROUNDS = 4


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    train(tiny_config(fl__rounds=ROUNDS), run, quiet=True)
    return run


@pytest.fixture
def run(trained, tmp_path) -> Path:
    d = tmp_path / "run"
    shutil.copytree(trained, d)
    return d


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _retrain(run: Path) -> None:
    """What the messages tell the user to run: `fedleak train RUN/config.yaml --out RUN`."""
    train(load_config(str(run / "config.yaml")), run, quiet=True)


def _error(run: Path) -> str:
    with pytest.raises(StoreError) as e:
        load_signals(run)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_intact_run_loads_what_the_files_hold(run):
    sig = load_signals(run)
    assert list(sig.rounds) == list(range(ROUNDS))
    for r in range(ROUNDS):
        z = _arrays(round_path(run, r))
        for k in ("loss", "dot", "cos", "diff", "gnorm2", "ids", "dnorm2", "participated"):
            np.testing.assert_array_equal(getattr(sig, k)[r], z[k])
    c = _arrays(run / "candidates.npz")
    np.testing.assert_array_equal(sig.owner, c["owner"])
    assert sig.target == int(c["target"])


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _garbage(p: Path) -> None:
    p.write_bytes(np.random.default_rng(0).bytes(3000))


def _foreign(p: Path) -> None:
    np.savez(p, weights=np.ones(3))


def _wrong_shape(p: Path) -> None:
    z = _arrays(p)
    z["loss"] = z["loss"][:, :-1]
    np.savez(p, **z)


def _npy(p: Path) -> None:
    with open(p, "wb") as f:
        np.save(f, np.ones((3, 3)))


def _other_round(p: Path) -> None:
    shutil.copy(p.with_name("round_0000.npz"), p)


@pytest.mark.parametrize(
    "damage, why",
    [
        (_truncate, "is truncated or corrupt (not a valid .npz)"),
        (_garbage, "is not a .npz archive"),
        (lambda p: p.write_bytes(b""), "is empty"),
        (_foreign, "lacks arrays"),
        (_wrong_shape, "has 'loss' of shape (3, {n1}), the run has 3 clients x {n} candidates"),
        (_npy, "is a .npy array, not a .npz archive"),
        (_other_round, "holds round 0, not 2"),
    ],
    ids=["truncated", "garbage", "empty", "foreign", "wrong-shape", "npy", "other-round"],
)
def test_a_damaged_round_file_is_named_and_the_rest_declared_intact(run, damage, why):
    n = len(_arrays(run / "candidates.npz")["ids"])
    damage(round_path(run, 2))
    msg = _error(run)
    assert msg.startswith(f"{round_path(run, 2)} {why.format(n=n, n1=n - 1)}"), msg
    assert "the other 3 recorded rounds are intact" in msg
    assert f"fedleak train {run / 'config.yaml'} --out {run}" in msg


def test_every_damaged_round_file_is_listed(run):
    _truncate(round_path(run, 1))
    _garbage(round_path(run, 3))
    msg = _error(run)
    assert msg.startswith(f"{round_path(run, 1)} is truncated")
    assert "damaged too: round_0003.npz" in msg and "the other 2 recorded rounds are intact" in msg


def test_pickled_objects_in_a_round_file_are_never_unpickled(run, tmp_path):
    marker = tmp_path / "pwned"
    z = _arrays(round_path(run, 1))
    z["loss"] = np.array([_Payload(marker)], dtype=object)
    np.savez(round_path(run, 1), **z)  # numpy pickles the object array
    msg = _error(run)
    assert "round_0001.npz holds pickled Python objects" in msg
    assert not marker.exists()
    with np.load(round_path(run, 1), allow_pickle=True) as f:  # the payload is live: unpickling runs it
        f["loss"]
    assert marker.exists()


def test_candidates_of_another_run_are_named(run, tmp_path):
    other = tmp_path / "other"
    train(tiny_config(fl__rounds=1, candidates={"n_test": 10, "n_other": 5}), other, quiet=True)
    shutil.copy(other / "candidates.npz", run / "candidates.npz")
    msg = _error(run)
    assert msg.startswith(f"{run / 'candidates.npz'} has ") and "belongs to another run" in msg
    assert "the recorded rounds are intact" in msg


@pytest.mark.parametrize("name", ["candidates.npz", "split.npz", "meta.json"])
def test_a_deleted_fixed_file_is_recomputed_identically_on_resume(run, name):
    before = (run / name).read_bytes()
    (run / name).unlink()
    _retrain(run)
    if name.endswith(".npz"):
        a = _arrays(run / name)
        (run / "orig.npz").write_bytes(before)
        b = _arrays(run / "orig.npz")
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    else:
        old, new = json.loads(before), read_meta(run)
        for k in ("config_sha256", "config", "client_sizes", "n_candidates", "n_members", "recorded_rounds"):
            assert new[k] == old[k]


def test_garbage_candidates_split_and_meta(run):
    _garbage(run / "candidates.npz")
    msg = _error(run)
    assert msg.startswith(f"{run / 'candidates.npz'} is not a .npz archive") and "rounds are intact" in msg
    shutil.copy(run / "signals" / "round_0000.npz", run / "candidates.npz")  # a valid .npz, but not candidates
    assert "candidates.npz lacks arrays ['owner', 'target']" in _error(run)

    run2 = run.parent / "run2"
    shutil.copytree(run, run2)
    _truncate(run2 / "split.npz")
    with pytest.raises(StoreError, match=r"split\.npz is truncated or corrupt .*recompute it from the seed"):
        _retrain(run2)

    (run / "meta.json").write_text('{"seed": 3, "vers')
    with pytest.raises(StoreError, match=r"meta\.json is damaged \(not a JSON object\); the signals"):
        load_signals(run)


def test_deleting_the_damaged_files_and_resuming_recomputes_them_identically(run):
    """The advice of the messages works: the deleted round files come back bit for bit (replayed)."""
    want = {r: _arrays(round_path(run, r)) for r in (1, 2)}
    _truncate(round_path(run, 1))
    _garbage(round_path(run, 2))
    assert "round_0001.npz" in _error(run)
    round_path(run, 1).unlink()
    round_path(run, 2).unlink()
    metrics = (run / "metrics.jsonl").read_text()
    _retrain(run)
    for r, z in want.items():
        got = _arrays(round_path(run, r))
        assert got.keys() == z.keys()
        for k in z:
            np.testing.assert_array_equal(got[k], z[k], err_msg=f"round {r} {k}")
    assert (run / "metrics.jsonl").read_text() == metrics  # finished rounds are not redone
    assert list(load_signals(run).rounds) == list(range(ROUNDS))


def test_replay_recomputes_rounds_of_a_stateful_run_identically(tmp_path):
    """Kept optimizer state (momentum across rounds), DP-SGD noise and 2-round checkpoints: a deleted round
    file still comes back bit for bit, since the replay starts from round 0 like the original run."""
    cfg = tiny_config(fl__rounds=5, fl__fresh_optimizer=False, output__checkpoint_every=2,
                      defense={"name": "dpsgd", "params": {"noise_multiplier": 0.5, "max_grad_norm": 1.0}})
    run = tmp_path / "run"
    train(cfg, run, quiet=True)
    want = {r: _arrays(round_path(run, r)) for r in range(5)}
    for r in (1, 3):
        round_path(run, r).unlink()
    train(cfg, run, quiet=True)
    for r, z in want.items():
        got = _arrays(round_path(run, r))
        assert all(np.array_equal(got[k], z[k], equal_nan=True) for k in z), r


def test_metrics_lines(run):
    p = run / "metrics.jsonl"
    lines = p.read_text().splitlines()
    p.write_text("\n".join(lines) + "\n" + lines[-1][:20])  # cut by a crash mid-write: no newline after it
    assert [m["round"] for m in read_metrics(run)] == list(range(ROUNDS))
    p.write_text("\n".join([lines[0], "garbage{", *lines[1:]]) + "\n")
    with pytest.raises(StoreError, match=r"metrics\.jsonl line 2 is damaged .*delete that line"):
        read_metrics(run)
    p.write_text("\n".join([lines[0], "[1, 2]", *lines[1:]]) + "\n")  # valid JSON, not a round record
    with pytest.raises(StoreError, match="line 2 is damaged"):
        read_metrics(run)


# --------------------------------------------------------------------------- config fingerprint


def test_meta_pins_the_trained_config(run):
    meta = read_meta(run)
    raw = yaml.safe_load((run / "config.yaml").read_text())
    canon = json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert meta["config_sha256"] == hashlib.sha256(canon.encode()).hexdigest()
    assert meta["config"] == raw


def test_an_edited_config_is_refused_by_every_reader(run):
    from fedleak.report.document import setup_rows

    p = run / "config.yaml"
    text = p.read_text()
    p.write_text("# my notes\n" + yaml.safe_dump(yaml.safe_load(text), sort_keys=True))  # layout only: fine
    load_signals(run)
    raw = yaml.safe_load(text)
    raw["candidates"]["target_client"] = 2
    raw["partition"]["num_clients"] = 5
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    msg = _error(run)
    assert msg.startswith(f"{p} was edited after training (differs at ")
    assert "candidates.target_client: 0 -> 2" in msg and "partition.num_clients: 3 -> 5" in msg
    with pytest.raises(StoreError, match="was edited after training"):
        setup_rows(run, {})  # the report's setup table
    with pytest.raises(StoreError, match="was edited after training"):
        train(load_config(str(p)), run, quiet=True)  # resume
    p.write_text(yaml.safe_dump(read_meta(run)["config"], sort_keys=False))  # the advice: restore from meta.json
    assert list(load_signals(run).rounds) == list(range(ROUNDS))


def test_a_garbage_config_is_named(run):
    (run / "config.yaml").write_text("name: [unclosed\n  fl: {")
    msg = _error(run)
    assert msg.startswith(f"{run / 'config.yaml'} is damaged (not valid YAML")
    assert "meta.json keeps the trained config under 'config'" in msg


def test_an_older_run_without_fingerprint_loads_with_one_warning(run, capsys):
    meta = read_meta(run)
    del meta["config_sha256"], meta["config"]
    (run / "meta.json").write_text(json.dumps(meta))
    raw = yaml.safe_load((run / "config.yaml").read_text())
    raw["name"] = "renamed"
    (run / "config.yaml").write_text(yaml.safe_dump(raw))
    load_signals(run)
    load_signals(run)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: ") and "cannot be checked" in err[0]
    assert read_run_config(run)["name"] == "renamed"


# --------------------------------------------------------------------------- checkpoint


class _Payload:
    """Unpickling this creates ``marker`` (the shape of a real attack: code runs on load)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil_checkpoint(path: Path, marker: Path) -> None:
    ck = torch.load(path, weights_only=True)
    ck["global"] = {**ck["global"], "extra": _Payload(marker)}
    torch.save(ck, path)


@pytest.mark.parametrize("kind", ["truncated", "random", "malicious", "other-model"])
def test_a_bad_checkpoint_gets_fedleaks_own_message(run, tmp_path, kind):
    ck = run / "checkpoint.pt"
    marker = tmp_path / "pwned"
    if kind == "truncated":
        _truncate(ck)
    elif kind == "random":
        _garbage(ck)
    elif kind == "malicious":
        _evil_checkpoint(ck, marker)
    else:
        other = tmp_path / "other"
        train(tiny_config(fl__rounds=1, model={"name": "mlp", "options": {"hidden": [8]}}), other, quiet=True)
        shutil.copy(other / "checkpoint.pt", ck)
    with pytest.raises(StoreError) as e:
        _retrain(run)
    msg = str(e.value)
    assert msg.startswith(f"{ck} is ") and "delete it to restart training from round 0" in msg
    assert "weights_only" not in msg and "\n" not in msg
    assert not marker.exists()
    if kind == "malicious":  # the payload is live: an unsafe load would have run it
        torch.load(ck, weights_only=False)
        assert marker.exists()


@pytest.mark.slow
def test_cli_on_a_malicious_checkpoint_prints_one_line_and_runs_nothing(run, tmp_path):
    marker = tmp_path / "pwned"
    _evil_checkpoint(run / "checkpoint.pt", marker)
    env = dict(os.environ, FEDLEAK_QUIET="1", PYTHONPATH=str(SRC))
    p = subprocess.run(
        [sys.executable, "-m", "fedleak.cli", "train", str(run / "config.yaml"), "--out", str(run)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {run / 'checkpoint.pt'} is not a fedleak checkpoint")
    assert "weights_only" not in p.stderr and "Traceback" not in p.stderr
    assert not marker.exists()


def test_deleting_a_bad_checkpoint_restarts_and_reproduces_the_run(run, trained):
    _garbage(run / "checkpoint.pt")
    (run / "checkpoint.pt").unlink()
    _retrain(run)
    for r in range(ROUNDS):
        a, b = _arrays(round_path(run, r)), _arrays(round_path(trained, r))
        assert all(np.array_equal(a[k], b[k]) for k in b)
    assert [m["test_acc"] for m in read_metrics(run)] == [m["test_acc"] for m in read_metrics(trained)]


def test_results_without_config_are_not_continued_under_another_config(run):
    (run / "config.yaml").unlink()
    with pytest.raises(StoreError, match=r"config\.yaml is missing but .* holds training results"):
        train(tiny_config(fl__rounds=ROUNDS, fl__lr=0.5), run, quiet=True)
    assert store.recorded_rounds(run) == list(range(ROUNDS))


# --------------------------------------------------------------------------- full disk, read-only directory


def _fail_writes_to(monkeypatch, name: str, err: int) -> None:
    """Make fsync of the file named ``name`` (a run file, or its .tmp) fail like a full/read-only disk."""
    real = os.fsync

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(name):
            raise OSError(err, os.strerror(err))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def _same_as(run: Path, ref: Path) -> None:
    assert store.recorded_rounds(run) == store.recorded_rounds(ref)
    for r in store.recorded_rounds(ref):
        a, b = _arrays(round_path(run, r)), _arrays(round_path(ref, r))
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in b), r
    assert [m["round"] for m in read_metrics(run)] == list(range(ROUNDS))
    assert [m["test_acc"] for m in read_metrics(run)] == [m["test_acc"] for m in read_metrics(ref)]


@pytest.mark.parametrize("name", ["round_0002.npz.tmp", "metrics.jsonl", "checkpoint.pt.tmp", "final_model.pt.tmp"])
@pytest.mark.parametrize("err", [28, 30], ids=["ENOSPC", "EROFS"])
def test_a_failed_write_is_one_line_leaves_no_tmp_and_the_run_resumes(tmp_path, trained, monkeypatch, name, err):
    run, cfg = tmp_path / "run", tiny_config(fl__rounds=ROUNDS)
    train(cfg, run, quiet=True, stop_after=2)
    _fail_writes_to(monkeypatch, name, err)
    with pytest.raises(StoreError) as e:
        train(cfg, run, quiet=True)
    msg = str(e.value)
    target = name.removesuffix(".tmp")
    assert msg.startswith(f"cannot write {run}/") and f"{target}: {os.strerror(err)}" in msg and "\n" not in msg
    last = ROUNDS - 1 if target == "final_model.pt" else 2
    assert f"training stopped in round {last}" in msg
    assert f"resumes at round {last + 1 if target == 'final_model.pt' else 2}" in msg
    assert not list(run.rglob("*.tmp")) and not (run / ".lock").exists()
    # the round's metrics line is cut back when its own write fails; written before a failed checkpoint, it
    # stays (the round did finish) and is redone on resume
    kept = {"round_0002.npz": 2, "metrics.jsonl": 2, "checkpoint.pt": 3, "final_model.pt": ROUNDS}[target]
    assert [m["round"] for m in read_metrics(run)] == list(range(kept))
    monkeypatch.undo()
    train(cfg, run, quiet=True)
    _same_as(run, trained)
    assert (run / "final_model.pt").is_file()


@pytest.fixture
def tmpfs(tmp_path):
    """A 2 MiB tmpfs (a real small disk that can also be made read-only); needs root and mount."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the monkeypatched ENOSPC/EROFS test covers the same code)")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); the monkeypatched test covers the same code")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(mnt: Path, leave_pages: int) -> Path:
    filler = mnt / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    os.truncate(filler, max(0, filler.stat().st_size - leave_pages * 4096))
    return filler


def test_a_really_full_disk(tmpfs, trained):
    run, cfg = tmpfs / "run", tiny_config(fl__rounds=ROUNDS)
    train(cfg, run, quiet=True, stop_after=1)
    filler = _fill(tmpfs, leave_pages=0)
    from fedleak.runlock import RunLockError

    with pytest.raises(RunLockError, match=rf"cannot create the lock file {run}/\.lock: No space left on device"):
        train(cfg, run, quiet=True)
    os.truncate(filler, filler.stat().st_size - 3 * 4096)  # room for the lock and a bit: fails mid-run
    with pytest.raises(StoreError) as e:
        train(cfg, run, quiet=True)
    assert str(e.value).startswith(f"cannot write {run}/") and "No space left on device" in str(e.value)
    assert "`fedleak train` with the same --out resumes at round" in str(e.value)
    assert not list(run.rglob("*.tmp")) and not (run / ".lock").exists()
    filler.unlink()
    train(cfg, run, quiet=True)
    _same_as(run, trained)


@pytest.mark.slow
def test_a_read_only_run_directory(tmpfs, trained):
    run, cfg = tmpfs / "run", tiny_config(fl__rounds=ROUNDS)
    train(cfg, run, quiet=True, stop_after=1)
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    env = dict(os.environ, FEDLEAK_QUIET="1", PYTHONPATH=str(SRC))
    (tmpfs.parent / "c.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    for out in (run, tmpfs / "new"):
        p = subprocess.run([sys.executable, "-m", "fedleak.cli", "train", str(tmpfs.parent / "c.yaml"), "--out",
                            str(out)], capture_output=True, text=True, env=env, timeout=300)
        assert p.returncode == 2 and "Traceback" not in p.stderr
        assert p.stderr.strip() == (f"error: cannot create the lock file {out}/.lock: Read-only file system; "
                                    "choose a writable --out")
    subprocess.run(["mount", "-o", "remount,rw", str(tmpfs)], check=True)
    train(cfg, run, quiet=True)
    _same_as(run, trained)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["attack", "report", "summarize"])
def test_the_cli_readers_print_one_line_naming_the_damaged_file(run, command):
    _truncate(round_path(run, 1))
    env = dict(os.environ, FEDLEAK_QUIET="1", PYTHONPATH=str(SRC))
    p = subprocess.run([sys.executable, "-m", "fedleak.cli", command, str(run)], capture_output=True, text=True,
                       env=env, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {round_path(run, 1)} is truncated or corrupt"), p.stderr
    assert "the other 3 recorded rounds are intact" in lines[0]
