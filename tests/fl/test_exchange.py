"""`fedleak export` / `fedleak import`: a fedleak run exported to the open layout and imported again gives the
original run's round files bit for bit (and the same attack metrics); damaged inputs each give one error line that
names the file, and leave no run behind."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import SRC, assert_one_error_line, tiny_config
from fedleak.errors import ConfigError, StoreError
from fedleak.fl.export import export_run
from fedleak.fl.importer import import_federation
from fedleak.signals import store
from fedleak.signals.tensorfile import encode_tensors, read_tensors


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from fedleak.fl.simulation import train

    root = tmp_path_factory.mktemp("exchange")
    run = train(tiny_config(signals__keep_models=True), root / "run", quiet=True)
    export_run(run, root / "layout")
    return run, root / "layout"


def _same_round_files(a, b) -> None:
    rounds = store.recorded_rounds(a)
    assert rounds and store.recorded_rounds(b) == rounds
    for r in rounds:
        x, y = store.read_npz(store.round_path(a, r), ""), store.read_npz(store.round_path(b, r), "")
        assert sorted(x) == sorted(y) and "margin" in x
        for k in x:
            assert x[k].dtype == y[k].dtype and x[k].shape == y[k].shape, k
            assert x[k].tobytes() == y[k].tobytes(), f"round {r}: '{k}' differs"  # bit for bit, NaN rows included


def test_export_then_import_is_bit_identical(exported, tmp_path):
    from fedleak.attacks.mia import evaluate
    from fedleak.signals.loading import load_signals

    run, layout = exported
    m = json.loads((layout / "manifest.json").read_text())
    assert m["format"] == "fedleak-federation" and m["version"] == 1 and m["num_clients"] == 3
    assert [r["round"] for r in m["rounds"]] == store.recorded_rounds(run)
    # the client files are the kept uploads, with their client id and example count as metadata
    tensors, meta = read_tensors(layout / "round_0001" / "client_0002.safetensors")
    split = store.read_split(run)
    assert meta == {"round": "1", "client": "2", "examples": str(len(split[2]))}
    assert m["rounds"][1]["clients"][2] == {"id": 2, "examples": len(split[2])}
    out = import_federation(layout, tmp_path / "imported")
    _same_round_files(run, out)
    for name in ("candidates.npz", "split.npz"):
        assert (run / name).read_bytes() == (out / name).read_bytes() or \
            all(np.array_equal(v, store.read_npz(out / name, "")[k]) for k, v in store.read_npz(run / name, "").items())
    # the metrics of the aggregated model are the engine's: FedAvg over the same uploads with the same weights
    orig = {r["round"]: r for r in store.read_metrics(run)}
    for rec in store.read_metrics(out):
        assert rec["test_acc"] == orig[rec["round"]]["test_acc"]
        assert rec["client_test_acc"] == orig[rec["round"]]["client_test_acc"]
    a = evaluate(load_signals(run), rotate=False).metrics["attacks"]
    b = evaluate(load_signals(out), rotate=False).metrics["attacks"]
    assert a == b and "fedmia-i-margin" in a


@pytest.mark.slow
def test_cli_export_import_attack_report(exported, tmp_path):
    run, _ = exported
    env = {"PYTHONPATH": str(SRC), "FEDLEAK_QUIET": "1", "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg"}
    cli = [sys.executable, "-m", "fedleak.cli"]
    for args in (["export", str(run), "--out", str(tmp_path / "lay")],
                 ["import", str(tmp_path / "lay"), "--out", str(tmp_path / "imp")],
                 ["attack", str(tmp_path / "imp"), "-q"], ["report", str(tmp_path / "imp")]):
        p = subprocess.run([*cli, *args], capture_output=True, text=True, env=env)
        assert p.returncode == 0, (args, p.stderr)
    _same_round_files(run, tmp_path / "imp")
    assert (tmp_path / "imp" / "report.html").is_file()
    # into an existing run: refused, nothing touched
    p = subprocess.run([*cli, "import", str(tmp_path / "lay"), "--out", str(tmp_path / "imp")],
                       capture_output=True, text=True, env=env)
    assert_one_error_line(p.returncode, p.stderr, str(tmp_path / "imp"), "not an empty folder")


def _copy(layout, tmp_path):
    dst = tmp_path / "layout"
    shutil.copytree(layout, dst)
    return dst


def _damaged(exported, tmp_path, damage):
    layout = _copy(exported[1], tmp_path)
    damage(layout)
    with pytest.raises((StoreError, ConfigError)) as e:
        import_federation(layout, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written, not even an empty folder
    msg = str(e.value)
    assert "\n" not in msg and "nothing was imported" in msg or "not valid JSON" in msg, msg
    return msg


def test_truncated_safetensors(exported, tmp_path):
    def cut(d):
        p = d / "round_0002" / "client_0001.safetensors"
        p.write_bytes(p.read_bytes()[:-7])

    msg = _damaged(exported, tmp_path, cut)
    assert "round_0002/client_0001.safetensors is truncated" in msg


def test_header_cut_in_half(exported, tmp_path):
    def cut(d):
        p = d / "round_0000" / "global.safetensors"
        p.write_bytes(p.read_bytes()[:40])

    assert "round_0000/global.safetensors is truncated" in _damaged(exported, tmp_path, cut)


def test_wrong_shape(exported, tmp_path):
    def reshape(d):
        p = d / "round_0001" / "client_0000.safetensors"
        t, meta = read_tensors(p)
        name = sorted(t)[0]
        t[name] = t[name].reshape(-1)[:-1].clone()
        p.write_bytes(encode_tensors(t, meta))

    msg = _damaged(exported, tmp_path, reshape)
    assert "round_0001/client_0000.safetensors has '" in msg and "the model's is" in msg


def test_missing_client(exported, tmp_path):
    msg = _damaged(exported, tmp_path, lambda d: (d / "round_0001" / "client_0002.safetensors").unlink())
    assert "round_0001/client_0002.safetensors is missing" in msg


def test_example_count_mismatch(exported, tmp_path):
    def edit(d):
        m = json.loads((d / "manifest.json").read_text())
        m["rounds"][0]["clients"][1]["examples"] += 1
        (d / "manifest.json").write_text(json.dumps(m))

    msg = _damaged(exported, tmp_path, edit)
    assert "round_0000/client_0001.safetensors says examples" in msg


def test_bad_manifest_json(exported, tmp_path):
    def garble(d):
        (d / "manifest.json").write_text((d / "manifest.json").read_text()[:-30])

    msg = _damaged(exported, tmp_path, garble)
    assert "manifest.json is not valid JSON" in msg


def test_manifest_key_and_data_mismatch(exported, tmp_path):
    def drop(d):
        m = json.loads((d / "manifest.json").read_text())
        del m["candidates"]["owner"]
        (d / "manifest.json").write_text(json.dumps(m))

    assert "'candidates.owner'" in _damaged(exported, tmp_path, drop)

    def other_seed(d):  # the synthetic data depends on the seed: the candidates' labels no longer match
        m = json.loads((d / "manifest.json").read_text())
        m["config"]["seed"] = 4
        (d / "manifest.json").write_text(json.dumps(m))

    assert "'candidates.labels' disagree with dataset" in _damaged(exported, tmp_path / "b", other_seed)


@pytest.mark.slow
def test_cli_damaged_file_one_line(exported, tmp_path):
    layout = _copy(exported[1], tmp_path)
    p = layout / "round_0002" / "client_0000.safetensors"
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    r = subprocess.run([sys.executable, "-m", "fedleak.cli", "import", str(layout), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert_one_error_line(r.returncode, r.stderr, "round_0002/client_0000.safetensors", "truncated")


def test_export_needs_kept_models(tmp_path):
    from fedleak.fl.simulation import train

    run = train(tiny_config(fl__rounds=1), tmp_path / "run", quiet=True)
    with pytest.raises(StoreError, match="models is missing.*signals.keep_models=true"):
        export_run(run, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_batchnorm_run_round_trips_with_its_running_statistics(tmp_path):
    """A BatchNorm model's uploads carry running statistics; export writes them and import needs and uses them
    (the clients' losses are taken with the statistics each client uploaded), so the round files match bit for bit."""
    from fedleak.fl.simulation import train

    cfg = tiny_config(signals__keep_models=True, model__name="convnet64", fl__rounds=2,
                      model__options={"norm": "batch", "width": 4}, data__synthetic__size=12)
    run = train(cfg, tmp_path / "run", quiet=True)
    layout = tmp_path / "layout"
    export_run(run, layout)
    tensors, _ = read_tensors(layout / "round_0001" / "client_0000.safetensors")
    assert "norms.0.running_mean" in tensors and "norms.0.num_batches_tracked" in tensors
    _same_round_files(run, import_federation(layout, tmp_path / "imported"))
    p = layout / "round_0001" / "client_0001.safetensors"  # without its statistics the upload is refused
    t, meta = read_tensors(p)
    p.write_bytes(encode_tensors({n: v for n, v in t.items() if "running_var" not in n}, meta))
    with pytest.raises(StoreError, match="client_0001.safetensors lacks"):
        import_federation(layout, tmp_path / "imported2")
