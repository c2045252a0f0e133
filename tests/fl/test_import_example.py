"""examples/import/plain_fedavg.py (a plain PyTorch FedAvg loop writing the import layout) imported, and the
imported signals checked against values computed directly from the script's own files: per-sample loss and logit
margin of every candidate under every upload (a float64 copy of the model, one sample at a time) and ||Δ_k||² in
float64 NumPy."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from conftest import REPO, SRC, assert_within, longest_sum, rounding_tol
from fedleak.fl.importer import import_federation
from fedleak.signals.loading import load_signals

pytestmark = [pytest.mark.numerics, pytest.mark.slow]  # a subprocess runs the example script


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("example")
    p = subprocess.run([sys.executable, str(REPO / "examples" / "import" / "plain_fedavg.py"), "--out",
                        str(root / "layout"), "--rounds", "2", "--clients", "3", "--epochs", "1"],
                       capture_output=True, text=True, env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr
    return root / "layout", import_federation(root / "layout", root / "run")


def _npz(path) -> dict[str, torch.Tensor]:
    with np.load(path, allow_pickle=False) as z:
        return {k: torch.from_numpy(z[k]) for k in z.files}


def test_imported_signals_match_the_scripts_files(imported):
    from fedleak.config import DataConfig
    from fedleak.data import load_dataset
    from fedleak.models import build_model

    layout, run = imported
    m = json.loads((layout / "manifest.json").read_text())
    sig = load_signals(run)
    data = load_dataset(DataConfig(**m["config"]["data"]), seed=m["config"]["seed"])
    model = build_model(m["config"]["model"]["name"], data.num_classes, data.input_shape,
                        **m["config"]["model"]["options"]).double().eval()
    ids = np.asarray(m["candidates"]["ids"])
    x = data.normalize(torch.cat([data.train.x, data.test.x])[ids]).double()
    y = torch.cat([data.train.y, data.test.y])[ids]
    assert np.array_equal(sig.cand_ids, ids) and sig.margin is not None
    n_sum = longest_sum(model.float(), x.float())
    model.double()
    for i, r in enumerate(m["rounds"]):
        glob = _npz(layout / f"round_{r['round']:04d}" / "global.npz")
        for c in r["clients"]:
            up = _npz(layout / f"round_{r['round']:04d}" / f"client_{c['id']:04d}.npz")
            with torch.no_grad():
                z = torch.func.functional_call(model, {n: t.double() for n, t in up.items()}, (x,))
            loss = F.cross_entropy(z, y, reduction="none")
            margin = [float(z[j, y[j]]) - math.log(sum(math.exp(float(v)) for c2, v in enumerate(z[j]) if c2 != y[j]))
                      for j in range(len(y))]
            tol = rounding_tol(n_sum, 1.0 + 2 * z.abs().amax(1))
            assert_within(sig.loss[i, c["id"]], loss, tol, "loss")
            assert_within(sig.margin[i, c["id"]], torch.tensor(margin), tol, "margin")
            d2 = sum(float(np.sum((glob[n].double().numpy() - up[n].double().numpy()) ** 2)) for n in glob)
            assert sig.dnorm2[i, c["id"]] == pytest.approx(d2, rel=rounding_tol(sum(t.numel() for t in glob.values()), 1.0))
    assert sig.participated.all() and np.allclose(sig.lr, 0.05)
    assert list(sig.rounds) == [0, 1]


def test_attack_runs_on_the_import(imported):
    from fedleak.attacks.mia import evaluate

    _, run = imported
    ev = evaluate(load_signals(run), rotate=False)
    assert {"fedmia-i", "fedmia-i-margin", "fedmia-ii"} <= set(ev.metrics["attacks"])
    assert ev.metrics["n_members"] > 0 and ev.metrics["n_nonmembers"] > 0
