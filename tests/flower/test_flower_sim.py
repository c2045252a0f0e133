"""Equivalence: one config and seed through `fedleak train` and through Flower's simulation engine (Ray).

The Flower run is a real ``flwr.simulation.run_simulation``: ClientApps in Ray worker processes, models
serialised into ArrayRecords, Flower's FedAvg aggregating. Per-sample signals, utility and the final model
must match the in-process engine to float tolerance (rtol 1e-5, atol 1e-6; on one machine they are
bit-identical, the tolerance leaves room for BLAS differences between processes), and so must the
membership-attack metrics computed from the two run directories.
"""

import json

import numpy as np
import pytest
import yaml

pytest.importorskip("flwr")
pytest.importorskip("ray")

from conftest import tiny_config  # noqa: E402
from test_flower import assert_runs_match  # noqa: E402

from fedleak.fl.simulation import train  # noqa: E402


@pytest.mark.slow
def test_flower_sim_cli_matches_engine(tmp_path):
    from typer.testing import CliRunner

    from fedleak.cli import app

    cfg = tiny_config(partition__num_clients=4, fl__participation=0.5, fl__rounds=3, fl__threads=1)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    ref = train(cfg, tmp_path / "engine", quiet=True)

    runner = CliRunner()
    res = runner.invoke(app, ["flower-sim", str(path), "--out", str(tmp_path / "flower"), "--quiet", "--num-cpus", "2"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    out = tmp_path / "flower"
    assert_runs_match(ref, out)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["engine"] == "flower-sim" and "flwr" in meta["versions"]

    # the same run directory twice is refused (Flower runs cannot resume)
    res = runner.invoke(app, ["flower-sim", str(path), "--out", str(out), "--quiet"])
    assert res.exit_code != 0 and "cannot be resumed" in str(res.exception)

    # downstream tools read the Flower run unchanged, with the same numbers
    try:
        from fedleak.report.outputs import attack_dir
    except ImportError:
        pytest.skip("fedleak attack not available in this checkout")
    aucs = []
    for run in (ref, out):
        r = runner.invoke(app, ["attack", str(run), "--attacks", "grad-cosine,blackbox-loss,fedmia-ii", "--no-rotate"])
        assert r.exit_code == 0, r.output + repr(r.exception)
        # a subset of the attacks is written to its own folder, RUN/attack/<names>/
        m = json.loads((attack_dir(run, "grad-cosine,blackbox-loss,fedmia-ii") / "metrics.json").read_text())
        aucs.append({name: v["auc"] for name, v in m["attacks"].items()})
    assert aucs[0].keys() == aucs[1].keys() and aucs[0]
    for name in aucs[0]:
        assert abs(aucs[0][name] - aucs[1][name]) <= 1e-6, name
    assert np.isfinite(list(aucs[1].values())).all()
