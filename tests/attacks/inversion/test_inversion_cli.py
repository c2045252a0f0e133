"""Presets, the experiment runner and ``fedleak invert`` (tiny images, a few iterations)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import longest_sum, rounding_tol
from fedleak.attacks.inversion.commands import build_spec
from fedleak.attacks.inversion.presets import PRESETS, InvertSpec, get_preset
from fedleak.attacks.inversion.runner import run_inversion
from fedleak.data.base import Dataset, Split
from fedleak.errors import FedleakError


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _toy_dataset(c=1, side=16, n=6, classes=4) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, c, side, side, generator=g)
    y = torch.arange(n) % classes
    return Dataset("toy", Split(x, y), Split(x.clone(), y.clone()), classes, (0.5,) * c, (0.25,) * c)


def test_presets_reproduce_the_original_settings():
    assert set(PRESETS) == {"dlg", "idlg", "soteria-dlg", "soteria-gs", "ig-cifar"}
    dlg = get_preset("dlg")
    a = dlg.attack
    assert (dlg.model, dlg.model_options, dlg.model_seed, dlg.dataset, dlg.normalization) == (
        "lenet_dlg", {"init": "uniform"}, 1234, "cifar100", "none")
    assert (a.cost, a.optimizer, a.lr, a.iterations, a.labels, a.tv, a.boxed, a.signed) == (
        "l2", "lbfgs", 1.0, 300, "joint", 0.0, False, False)
    assert a.lbfgs_inner == 20 and a.line_search == "none"  # torch.optim.LBFGS defaults
    assert get_preset("idlg").attack.labels == "rowsum"
    sd = get_preset("soteria-dlg")
    assert sd.model == "lenet_soteria" and sd.model_seed == 50 and sd.start_index == 25
    assert sd.defense == "soteria" and sd.defense_params == {"rate": 1.0, "denominator": "notebook"}
    gs = get_preset("soteria-gs")
    a = gs.attack
    assert gs.model == "convnet64" and gs.labels_known and gs.defense_params["denominator"] == "legacy"
    assert (a.optimizer, a.lr, a.signed, a.boxed, a.tv, a.iterations, a.schedule, a.cost, a.restarts) == (
        "adam", 0.1, True, True, 1e-4, 24_000, "step", "sim", 1)
    assert gs.mean_std()[1][0] == pytest.approx(0.24703224003314972)
    ig = get_preset("ig-cifar")
    assert (ig.attack.iterations, ig.attack.tv) == (4000, 1e-6)
    # the presets' models have the spec's parameter counts (inversion.md §1.1, §1.3)
    from fedleak.models import build_model

    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(build_model("lenet_dlg", 100, (3, 32, 32), init="uniform")) == 85_036
    assert count(build_model("lenet_soteria", 10, (3, 32, 32), init="uniform")) == 19_438


def test_build_spec_overrides_and_rejects_bad_settings():
    spec = build_spec("soteria-gs", defense="prune", pruning_rate=40, images=3, iterations=7,
                      overrides=["tv=1e-3", "attack.restarts=2", "batch_size=3"])
    assert spec.defense == "prune" and spec.defense_params == {"rate": 40}
    assert (spec.images, spec.attack.iterations, spec.attack.tv, spec.attack.restarts, spec.batch_size) == (
        3, 7, 1e-3, 2, 3)
    dp = build_spec("soteria-gs", defense="dp-laplace", noise_scale=0.1)
    assert dp.defense_params == {"scale": 0.1}
    assert build_spec("dlg", attack="ig").attack.optimizer == "adam"
    with pytest.raises(FedleakError, match="unknown inversion preset"):
        build_spec("dlgg")
    with pytest.raises(FedleakError, match="invalid inversion settings"):
        build_spec("dlg", overrides=["attack.tvv=1.0"])
    with pytest.raises(FedleakError, match="pruning-rate"):
        build_spec("dlg", defense="dp-gaussian", pruning_rate=10)
    with pytest.raises(FedleakError, match="defense 'soteria'"):
        build_spec("soteria-gs", defense_params=["denominatr=abs"])
    with pytest.raises(FedleakError, match="readout"):
        build_spec("soteria-gs", adaptive="readout", local_steps=2)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_runner_outputs_agree_with_an_independent_recomputation(tmp_path):
    spec = InvertSpec(model="lenet_dlg", model_options={"init": "uniform"}, normalization="none", images=3,
                      start_index=1, defense="prune", defense_params={"rate": 30},
                      attack=get_preset("dlg").attack.model_copy(update={"iterations": 1, "lbfgs_inner": 5}))
    res = run_inversion(spec, dataset=_toy_dataset(), out_dir=tmp_path)
    rows = _read_csv(tmp_path / "metrics.csv")
    saved = torch.load(tmp_path / "reconstructions.pt")
    ds = _toy_dataset()
    assert torch.equal(saved["truth"], ds.test.x[1:4]) and saved["indices"] == [1, 2, 3]
    for k, row in enumerate(rows):
        a, b = saved["reconstruction"][k].double().numpy(), saved["truth"][k].double().numpy()
        assert float(row["mse"]) == pytest.approx(np.mean((a - b) ** 2), rel=1e-6)
        assert float(row["psnr"]) == pytest.approx(10 * np.log10(1 / np.mean((a - b) ** 2)), rel=1e-6)
        assert 0.0 <= saved["reconstruction"][k].min() and saved["reconstruction"][k].max() <= 1.0
        assert int(row["label"]) == int(ds.test.y[k + 1])
        assert float(row["pruned_fraction"]) == pytest.approx(0.3, abs=0.01)
    meta = json.loads((tmp_path / "metrics.json").read_text())
    assert meta["summary"]["mse"]["mean"] == pytest.approx(np.mean([float(r["mse"]) for r in rows]))
    assert meta["summary"]["mse"]["median"] == pytest.approx(np.median([float(r["mse"]) for r in rows]))
    assert meta["spec"]["defense"] == "prune"
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert res["summary"]["label_accuracy"] == meta["summary"]["label_accuracy"]


def test_runner_batches_fedavg_and_adaptive_readout(tmp_path):
    base = dict(model="lenet_dlg", model_options={"init": "uniform"}, normalization="none", labels_known=True)
    ig = get_preset("ig-cifar").attack.model_copy(update={"iterations": 4})
    res = run_inversion(InvertSpec(**base, images=4, batch_size=2, local_steps=2, local_lr=0.1, attack=ig),
                        dataset=_toy_dataset())
    assert len(res["images"]) == 4 and res["summary"]["label_accuracy"] == 1.0  # labels declared known
    assert all(np.isnan(r["readout_leaked_fraction"]) for r in res["images"])  # no read-out for FedAvg batches
    res = run_inversion(InvertSpec(**base, images=2, defense="soteria", defense_params={"rate": 50},
                                   adaptive="readout", attack=ig), dataset=_toy_dataset())
    for r in res["images"]:  # half of the representation leaks exactly despite Soteria
        assert r["readout_leaked_fraction"] == pytest.approx(1 - r["pruned_fraction"])
        assert r["readout_rel_error"] < 1e-4


def test_cli_invert_writes_metrics_and_grid(tmp_path, shared_data, monkeypatch):
    from typer.testing import CliRunner

    from fedleak.cli import app

    monkeypatch.delenv("FEDLEAK_QUIET", raising=False)
    cifar = shared_data / "cifar-10-subset"
    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "invert", "--preset", "soteria-dlg", "--defense", "soteria", "--pruning-rate", "60", "--images", "1",
        "--iterations", "2", "--data-dir", str(cifar), "--out", str(out), "--threads", "1",
    ])
    assert result.exit_code == 0, result.output
    assert "mse" in result.output and "label accuracy" in result.output
    rows = _read_csv(out / "metrics.csv")
    assert len(rows) == 1 and rows[0]["index"] == "25"
    assert float(rows[0]["pruned_fraction"]) == pytest.approx(461 / 768)  # ⌈0.6·767⌉ features
    assert (out / "grid.png").exists() and (out / "metrics.json").exists()
    bad = CliRunner().invoke(app, ["invert", "--preset", "nope", "--out", str(out), "--quiet"])
    assert bad.exit_code != 0 and isinstance(bad.exception, FedleakError)


@pytest.mark.numerics
def test_runner_parallel_images_equal_sequential():
    ig = get_preset("ig-cifar").attack.model_copy(update={"iterations": 3})
    base = dict(model="lenet_dlg", model_options={"init": "uniform"}, normalization="none", images=3,
                defense="dp-gaussian", defense_params={"scale": 0.01}, attack=ig)
    seq = run_inversion(InvertSpec(**base, parallel=1), dataset=_toy_dataset())
    par = run_inversion(InvertSpec(**base, parallel=3), dataset=_toy_dataset())
    # batched vs one-by-one float32 kernels: gradients rounded over longest_sum terms, every iteration, on [0, 1]
    # pixels (as in test_inversion's parallel test)
    from fedleak.models import build_model

    model = build_model("lenet_dlg", 4, (1, 16, 16), init="uniform")
    n = longest_sum(model, torch.zeros(1, 1, 16, 16)) * ig.iterations
    assert torch.allclose(seq["pixels"]["reconstruction"], par["pixels"]["reconstruction"], rtol=0,
                          atol=rounding_tol(n, 1.0))
    for a, b in zip(seq["images"], par["images"]):
        assert a["mse"] == pytest.approx(b["mse"], rel=rounding_tol(n, 1.0))


def _run_main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    import sys

    from fedleak.cli import main

    monkeypatch.setattr(sys, "argv", ["fedleak", *args])
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def _no_attack(monkeypatch) -> list[str]:
    """Record (and refuse) any start of the attack: the dataset session is the first thing run_inversion builds."""
    import fedleak.attacks.inversion.runner as runner

    started: list[str] = []

    def session(*a, **k):
        started.append("session")
        raise AssertionError("the attack started before --out was checked")

    monkeypatch.setattr(runner, "_session", session)
    return started


@pytest.mark.parametrize("where", ["at", "above"])
def test_invert_out_with_a_file_in_the_way_fails_before_the_attack(tmp_path, monkeypatch, capsys, where):
    from conftest import assert_one_error_line

    monkeypatch.delenv("FEDLEAK_QUIET", raising=False)  # the progress bar would show if the attack began
    blocker = tmp_path / "taken"
    blocker.write_text("finished work\n")
    out = blocker if where == "at" else blocker / "sub"
    started = _no_attack(monkeypatch)
    code, stdout, err = _run_main(monkeypatch, capsys, "invert", "--preset", "dlg", "--dataset", "synthetic",
                                  "--images", "1", "--iterations", "100000", "--out", str(out))
    assert_one_error_line(code, err, str(out), "a file is in the way")
    assert started == [] and "invert" not in stdout  # no session, no progress bar: nothing ran
    assert blocker.read_text() == "finished work\n"


def test_invert_out_that_is_no_path_name_and_the_api_check(tmp_path, monkeypatch, capsys):
    from conftest import assert_one_error_line
    from fedleak.attacks.inversion.runner import prepare_out_dir
    from fedleak.signals.store import StoreError

    started = _no_attack(monkeypatch)
    long_name = tmp_path / ("x" * 300)  # longer than any file system allows one name to be
    code, _, err = _run_main(monkeypatch, capsys, "invert", "--preset", "dlg", "--dataset", "synthetic",
                             "--quiet", "--out", str(long_name))
    assert_one_error_line(code, err, str(long_name), "too long")
    with pytest.raises(StoreError, match="not a usable folder name"):
        prepare_out_dir("bad\x00name")  # (no shell can pass a NUL in an argument; the API can)
    blocker = tmp_path / "f"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="a file is in the way"):
        run_inversion(get_preset("dlg"), dataset=_toy_dataset(), out_dir=blocker / "out")
    assert started == []
    assert prepare_out_dir(tmp_path / "new" / "dir").is_dir() and not any((tmp_path / "new" / "dir").iterdir())
