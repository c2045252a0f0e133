"""fedleak.api (issue #13 item 2): the docs/api.md example as written, what a run records about Python objects,
resuming with the same / different objects, and an ``@`` name outside its process."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import REPO, SRC, assert_one_error_line
from fedleak import api

pytestmark = pytest.mark.filterwarnings("ignore:.*only this Python process can rebuild it")
from fedleak.errors import ConfigError, DataError, StoreError
from test_byo import brute_tpr, naive_auc

SMALL = {
    "name": "api",
    "seed": 4,
    "partition": {"num_clients": 3},
    "candidates": {"n_test": 15, "n_other": 10},
    "fl": {"rounds": 2, "batch_size": 10, "lr": 0.05},
    "signals": {"every": 1},
}


def _tensors(n_train: int = 60, n_test: int = 20, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n_train + n_test) % 3
    x = (torch.rand(n_train + n_test, 1, 6, 6, generator=g) * 0.5 + y.view(-1, 1, 1, 1) / 4.0).clamp(0, 1)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def notebook_net(num_classes, input_shape, hidden=8):
    c, h, w = input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


notebook_net.__module__ = "__main__"  # as if defined in a notebook cell


def _in_process_cfg(**over):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return api.config(model=notebook_net, data=_tensors(**over), config=SMALL)


@pytest.mark.slow
def test_the_docs_example_runs_as_written_and_its_numbers_recompute(tmp_path, monkeypatch):
    text = (REPO / "docs" / "api.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {"__name__": "__main__"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(code, "docs/api.md", "exec"), scope)  # noqa: S102 - our own documentation
    res = scope["res"]
    assert isinstance(res, api.RunResult) and res.report_html == Path("runs/api-example/report.html")
    assert res.report_html.is_file() and res.config.model.name.startswith("@make_net:")
    assert res.config.data.name.startswith("@tensors:") and len(res.notes) == 2
    scores = np.load(res.attack_dir / "scores.npz", allow_pickle=False)
    member = scores["member"].astype(bool)
    s = np.nan_to_num(scores["fedmia_ii"].astype(np.float64), nan=-np.inf)
    assert res.auc("fedmia-ii") == pytest.approx(naive_auc(member, s), abs=1e-12)
    assert res.tpr("fedmia-ii", 0.001) == pytest.approx(brute_tpr(member, s, 0.001), abs=1e-12)
    np.testing.assert_array_equal(res.attack_result.scores["fedmia-ii"], scores["fedmia_ii"])
    assert api.load(res.run_dir).metrics == json.loads((res.attack_dir / "metrics.json").read_text())


def test_names_record_import_paths_and_sha256s(tmp_path, monkeypatch):
    (tmp_path / "apinets_rec.py").write_text(textwrap.dedent("""
        from torch import nn
        def make(num_classes, input_shape):
            return nn.Linear(1, 1)
        class Zoo:
            @staticmethod
            def wide(num_classes, input_shape):
                return nn.Linear(1, 1)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    import apinets_rec

    assert api.model_name(apinets_rec.make) == "apinets_rec:make"
    assert api.model_name(apinets_rec.Zoo.wide) == "apinets_rec:Zoo.wide"
    source = textwrap.dedent(__import__("inspect").getsource(notebook_net))
    assert api.model_name(notebook_net) == f"@notebook_net:{hashlib.sha256(source.encode()).hexdigest()}"

    a, b = api.data_name(_tensors()), api.data_name(_tensors())
    changed = list(_tensors())
    changed[2] = changed[2].clone()
    changed[2][0, 0, 0, 0] += 0.25
    assert a == b and re.fullmatch(r"@tensors:[0-9a-f]{64}", a) and api.data_name(tuple(changed)) != a
    # the same arrays as a pair of torch datasets are the same data
    x_tr, y_tr, x_te, y_te = _tensors()
    pair = (torch.utils.data.TensorDataset(x_tr, y_tr), torch.utils.data.TensorDataset(x_te, y_te))
    assert api.data_name(pair) == a
    with pytest.raises(DataError, match=r"y_train has labels -1\.\.2"):  # checked like a loader's result
        api.data_name((x_tr, torch.where(y_tr == 1, -1, y_tr), x_te, y_te))
    cfg = _in_process_cfg()
    assert [n.split(" is ")[0] for n in api.notes(cfg)] == ["model.name", "data.name"]
    # in-process objects resolve by their @ names but stay out of listings and "choose from" messages
    from fedleak.data.registry import DATASETS, describe_datasets
    from fedleak.models import MODELS, build_model

    assert not [n for n in MODELS.names() + DATASETS.names() if n.startswith("@")]
    assert not [d for d in describe_datasets(tmp_path) if d["name"].startswith("@")]
    assert "@" not in MODELS.unknown("vgg")
    kw = api.model_name(lambda num_classes, input_shape, **o: notebook_net(num_classes, input_shape, **o))
    assert kw.startswith("@test_names") and ".<lambda>:" in kw and [p.shape[0] for p in build_model(kw, 3, (1, 6, 6), hidden=5).parameters()] == [5, 5, 3, 3]
    assert api.notes(api.config(config=SMALL)) == ()


def test_train_resumes_with_the_same_objects_and_refuses_different_data(tmp_path):
    run = tmp_path / "run"
    first = api.train(_in_process_cfg(), run)
    lines = (run / "metrics.jsonl").read_text()
    again = api.train(_in_process_cfg(), run)  # same objects: a resume that has nothing left to do
    assert again.run_dir == first.run_dir and (run / "metrics.jsonl").read_text() == lines
    with pytest.raises((ConfigError, StoreError), match="config"):
        api.train(_in_process_cfg(seed=1), run)  # other tensors, other name: not this run
    assert (run / "metrics.jsonl").read_text() == lines
    with pytest.raises(ConfigError, match="not been attacked"):
        api.load(run).attacks
    res = api.attack(run, ["fedmia-ii", "loss-series"], rotate=False, figures=False)
    assert set(res.attacks) == {"fedmia-ii", "loss-series"} and res.attack_dir == run / "attack" / "fedmia-ii+loss-series"
    with pytest.raises(ConfigError, match="no TPR at FPR 0.5"):
        res.tpr("fedmia-ii", 0.5)


@pytest.mark.slow
def test_an_at_name_outside_its_process_is_one_line(tmp_path):
    run = tmp_path / "run"
    api.train(_in_process_cfg(), run)
    env = {**os.environ, "PYTHONPATH": str(SRC), "FEDLEAK_QUIET": "1"}
    res = subprocess.run([sys.executable, "-m", "fedleak.cli", "train", str(run / "config.yaml"), "-o", str(run)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert_one_error_line(res.returncode, res.stderr, "dataset '@tensors:",  # the data is loaded before the model
                          "was a Python object given to fedleak.api in another process")
    # attacking and reporting need no model: the CLI can do them on an API run
    res = subprocess.run([sys.executable, "-m", "fedleak.cli", "report", str(run), "-q"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert api.load(run).report_html == run / "report.html"


def test_config_from_a_preset_mapping_and_overrides(tmp_path, monkeypatch):
    from fedleak.config import load_config

    (tmp_path / "apinets_cfg.py").write_text("def make(num_classes, input_shape, width=2):\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import apinets_cfg

    preset = load_config("digits-quick")
    cfg = api.config("digits-quick", model=apinets_cfg.make, config={"model": {"options": {"width": 4}}},
                     set=["fl.rounds=3"])
    assert (cfg.model.name, cfg.model.options) == ("apinets_cfg:make", {"width": 4})  # not merged with mlp's
    assert cfg.fl.rounds == 3 and cfg.data == preset.data and cfg.partition == preset.partition
    same = api.config("digits-quick", model=preset.model.name, config={"fl": {"rounds": 3}})
    assert same.model == preset.model and same.fl.rounds == 3  # the base's own model keeps its options
    assert api.config(preset) == preset and api.config({"seed": 5}).seed == 5
    with pytest.raises(ConfigError, match="fl.rounds"):
        api.config(config={"fl": {"rounds": 0}})
