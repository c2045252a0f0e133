"""Your own model and dataset by import path (issue #13 item 1): accepted forms, checked against independent
computations, and every bad module through the real CLI (``fedleak.cli.main``) as one ``error:`` line, exit 2.

Each test writes its modules into its own ``tmp_path`` under a unique module name (Python caches imported
modules by name) and runs from there, so the working directory is what puts them on the import path.
"""

from __future__ import annotations

import itertools
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import assert_one_error_line
from fedleak.attacks.mia.names import ATTACKS
from fedleak.cli import main

_ids = itertools.count()

BASE = {
    "name": "byo",
    "seed": 2,
    "data": {"name": "synthetic", "synthetic": {"n_train": 60, "n_test": 20, "num_classes": 3, "size": 8}},
    "partition": {"num_clients": 3},
    "candidates": {"n_test": 10, "n_other": 5},
    "model": {"name": "mlp", "options": {"hidden": [8]}},
    "fl": {"rounds": 1, "batch_size": 10, "lr": 0.05},
    "signals": {"every": 1},
}

NETS = """
import torch
from torch import nn

def good(num_classes, input_shape, hidden=8):
    c, h, w = input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

def with_kwargs(num_classes, input_shape, **options):
    return good(num_classes, input_shape, **options)

def one_arg(num_classes):
    return None

def returns_int(num_classes, input_shape):
    return 42

def raises(num_classes, input_shape):
    raise KeyError("no such layer")

def wrong_classes(num_classes, input_shape):
    return good(num_classes + 2, input_shape)

NOT_CALLABLE = 3
"""

DATA = """
import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

def _xy(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = (torch.rand(n, 1, 8, 8, generator=g) * 0.5 + y.view(-1, 1, 1, 1) / 4.0).clamp(0, 1)
    return x, y

def four(n=60, seed=0):
    x, y = _xy(n + 20, seed)
    return x[:n], y[:n], x[n:], y[n:]

def labels_out_of_range():
    x, y = _xy(40)
    y = y.clone(); y[5] = -1
    return x[:30], y[:30], x[30:], y[30:]

class WithClasses(Dataset):
    classes = ["a", "b", "c"]
    def __init__(self, x, y): self.x, self.y = x, y
    def __len__(self): return len(self.y)
    def __getitem__(self, i): return self.x[i], int(self.y[i])

def classes_exceeded():
    x, y = _xy(40)
    y = y.clone(); y[7] = 3
    return WithClasses(x[:30], y[:30]), WithClasses(x[30:], y[30:])

def nan_images():
    x, y = _xy(40)
    x = x.clone(); x[3, 0, 2, 2] = float("nan")
    return x[:30], y[:30], x[30:], y[30:]

def normalised():
    x, y = _xy(40)
    return (x - 0.5) / 0.25, y, x, y

def label_count():
    x, y = _xy(40)
    return x[:30], y[:29], x[30:], y[30:]

def test_shape():
    x, y = _xy(40)
    return x[:30], y[:30], x[30:, :, :4, :4], y[30:]

def float_labels():
    x, y = _xy(40)
    return x[:30], y[:30].float(), x[30:], y[30:]

def three_things():
    return 1, 2, 3

def takes_nothing():
    return four()

def pil_like():
    return TensorDataset(torch.zeros(4, 8, 8, dtype=torch.uint8), torch.zeros(4)), TensorDataset(torch.zeros(2, 1))
"""


def _module(tmp_path: Path, stem: str, source: str) -> str:
    """Write ``source`` as a uniquely named module in ``tmp_path``; its name."""
    name = f"{stem}_{next(_ids)}_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    return name


def _cli(monkeypatch, capsys, tmp_path: Path, **sections) -> tuple[int, str, str]:
    """``fedleak train cfg.yaml -o run`` from ``tmp_path`` with sections replaced; (exit code, stdout, stderr)."""
    cfg = json.loads(json.dumps(BASE))
    cfg.update(sections)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.setattr(sys, "argv", ["fedleak", "train", "cfg.yaml", "-o", "run", "-q"])
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr()
    return int(e.value.code or 0), out.out, out.err


@pytest.fixture
def mods(tmp_path):
    return _module(tmp_path, "nets", NETS), _module(tmp_path, "data", DATA)


# ------------------------------------------------------------------------------------------ models: bad modules

@pytest.mark.parametrize("attr, needles", [
    ("one_arg", ["signature (num_classes)", "factory(num_classes, input_shape)"]),
    ("returns_int", ["returned an int, not a torch.nn.Module"]),
    ("raises", ["raised KeyError", "no such layer"]),
    ("wrong_classes", ["output has shape (1, 5), expected (1, 3)"]),
    ("NOT_CALLABLE", ["is an int, not a callable"]),
    ("goood", ["has no attribute 'goood'", "closest: 'good'"]),
])
def test_a_bad_model_factory_is_one_line_naming_it(monkeypatch, capsys, tmp_path, mods, attr, needles):
    nets, _ = mods
    code, _, err = _cli(monkeypatch, capsys, tmp_path, model={"name": f"{nets}:{attr}"})
    assert_one_error_line(code, err, f"'{nets}:{attr}'", *needles)
    assert not (tmp_path / "run" / "config.yaml").exists()  # nothing half-made left as a run


def test_a_module_that_is_not_there_or_does_not_import(monkeypatch, capsys, tmp_path):
    code, _, err = _cli(monkeypatch, capsys, tmp_path, model={"name": "no_such_pkg_xyz.nets:make"})
    assert_one_error_line(code, err, "no module named 'no_such_pkg_xyz'", str(tmp_path), "PYTHONPATH")
    broken = _module(tmp_path, "broken", "def make(num_classes, input_shape):\n    return (\n")
    code, _, err = _cli(monkeypatch, capsys, tmp_path, model={"name": f"{broken}:make"})
    assert_one_error_line(code, err, f"importing module '{broken}' failed: SyntaxError")
    needs = _module(tmp_path, "needs", "import not_installed_dep_xyz\n")
    code, _, err = _cli(monkeypatch, capsys, tmp_path, data={"name": f"{needs}:load"})
    assert_one_error_line(code, err, f"importing module '{needs}' failed", "not_installed_dep_xyz")


def test_an_unknown_plain_name_suggests_an_import_path(monkeypatch, capsys, tmp_path):
    code, _, err = _cli(monkeypatch, capsys, tmp_path, model={"name": "vgg"})
    assert_one_error_line(code, err, "unknown model 'vgg'", "package.module:attribute")
    code, _, err = _cli(monkeypatch, capsys, tmp_path, model={"name": "@make:abc"})
    assert_one_error_line(code, err, "model '@make:abc' was a Python object given to fedleak.api in another process")


def test_a_factory_with_options_and_kwargs_builds_the_users_network(monkeypatch, capsys, tmp_path, mods):
    from fedleak.models import build_model

    nets, _ = mods
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    torch.manual_seed(0)
    model = build_model(f"{nets}:with_kwargs", 4, (1, 6, 6), hidden=5)
    torch.manual_seed(0)
    want = sys.modules[nets].good(4, (1, 6, 6), hidden=5)  # the same factory called directly, same seed
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in want.named_parameters()]
    for (_, a), (_, b) in zip(model.named_parameters(), want.named_parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="unexpected keyword argument 'depth'"):
        build_model(f"{nets}:good", 4, (1, 6, 6), depth=3)


# ------------------------------------------------------------------------------------------- data: bad loaders

@pytest.mark.parametrize("attr, needles", [
    ("labels_out_of_range", ["y_train has labels -1..2, outside 0..2"]),
    ("classes_exceeded", ["y_train has labels 0..3, outside 0..2", "(num_classes 3)"]),
    ("nan_images", ["x_train holds 1 NaN or infinite value(s)"]),
    ("normalised", ["x_train has pixel values in [-1.", "unnormalised pixels in [0, 1]"]),
    ("label_count", ["y_train has shape (29,) for 30 images"]),
    ("test_shape", ["x_train images are (1, 8, 8) but x_test images are (1, 4, 4)"]),
    ("float_labels", ["y_train is torch.float32; labels must be integer"]),
    ("three_things", ["returned a 3-tuple", "(x_train, y_train, x_test, y_test)"]),
    ("pil_like", ["train[0] holds a torch.uint8 tensor image", "ToTensor"]),
])
def test_a_bad_loader_result_is_one_line_naming_the_loader(monkeypatch, capsys, tmp_path, mods, attr, needles):
    _, data = mods
    code, _, err = _cli(monkeypatch, capsys, tmp_path, data={"name": f"{data}:{attr}"})
    assert_one_error_line(code, err, f"dataset loader '{data}:{attr}'", *needles)
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_loader_options_must_fit_its_signature(monkeypatch, capsys, tmp_path, mods):
    _, data = mods
    code, _, err = _cli(monkeypatch, capsys, tmp_path, data={"name": f"{data}:takes_nothing", "options": {"n": 5}})
    assert_one_error_line(code, err, f"'{data}:takes_nothing' has the signature ()", "data.options")
    code, _, err = _cli(monkeypatch, capsys, tmp_path, data={"name": "digits", "options": {"n": 5}})
    assert_one_error_line(code, err, "data.options ['n']", "dataset 'digits' takes none")


def test_a_defense_by_import_path_must_be_a_defense(monkeypatch, capsys, tmp_path):
    mod = _module(tmp_path, "defs", "def not_a_defense(params, cfg):\n    return 'hello'\n")
    code, _, err = _cli(monkeypatch, capsys, tmp_path, defense={"name": f"{mod}:not_a_defense"})
    assert_one_error_line(code, err, f"defense '{mod}:not_a_defense' built a str, not a fedleak.defenses.Defense")


def test_a_defense_by_import_path_is_built_with_its_params_and_acts(tmp_path, monkeypatch):
    from conftest import tiny_config
    from fedleak.defenses import build_defense
    from fedleak.fl.simulation import train
    from fedleak.signals.loading import load_signals

    mod = _module(tmp_path, "defs", """
        from fedleak.defenses import Defense

        class Halve(Defense):
            name = "halve"
            def transform_update(self, delta, gen, ctx=None):
                return {k: v * self.params["factor"] for k, v in delta.items()}
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = tiny_config(defense={"name": f"{mod}:Halve", "params": {"factor": 0.5}}, fl__rounds=1)
    d = build_defense(cfg.defense, cfg)
    assert type(d).__name__ == "Halve" and d.params == {"factor": 0.5}
    # the server receives half of each update: |Δ|² is a quarter of the undefended run's (same seed, same data)
    plain = load_signals(train(tiny_config(fl__rounds=1), tmp_path / "plain", quiet=True))
    halved = load_signals(train(cfg, tmp_path / "halved", quiet=True))
    np.testing.assert_allclose(halved.dnorm2, plain.dnorm2 / 4, rtol=1e-5)


# ------------------------------------------------------------------------------------------ data: accepted forms

def _load(tmp_path: Path, monkeypatch, source: str, **data) -> "object":
    from fedleak.config import DataConfig
    from fedleak.data import load_dataset

    mod = _module(tmp_path, "forms", source)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # fedleak appends the working directory: undo afterwards
    return load_dataset(DataConfig(name=f"{mod}:load", **data), seed=7)


def test_uint8_and_three_dim_images_are_scaled_and_given_a_channel(tmp_path, monkeypatch):
    ds = _load(tmp_path, monkeypatch, """
        import numpy as np
        def load(seed):
            rng = np.random.default_rng(seed)
            x = rng.integers(0, 256, size=(30, 5, 5), dtype=np.uint8)
            y = np.arange(30) % 4
            return x[:20], y[:20], x[20:], y[20:]
    """, normalization="none")
    x = np.random.default_rng(7).integers(0, 256, size=(30, 5, 5), dtype=np.uint8)  # the seed is passed on
    assert ds.input_shape == (1, 5, 5) and ds.num_classes == 4
    np.testing.assert_array_equal(ds.train.x.numpy()[:, 0], x[:20].astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(ds.test.y.numpy(), np.arange(20, 30) % 4)
    assert ds.train.y.dtype == torch.int64 and ds.mean == (0.0,) and ds.std == (1.0,)


def test_a_torch_dataset_pair_is_materialised_with_its_classes_and_dataset_statistics(tmp_path, monkeypatch):
    ds = _load(tmp_path, monkeypatch, """
        import torch
        class Squares(torch.utils.data.Dataset):
            classes = ["a", "b", "c", "d", "e"]          # 5 classes although only 0..2 occur
            def __init__(self, n, off): self.n, self.off = n, off
            def __len__(self): return self.n
            def __getitem__(self, i):
                v = (i + self.off) / 100.0
                return torch.full((2, 3, 3), v), torch.tensor((i + self.off) % 3)
        def load(n_train=12):
            return Squares(n_train, 0), Squares(4, 50)
    """, options={"n_train": 10})
    assert ds.num_classes == 5 and ds.class_names == ["a", "b", "c", "d", "e"]
    assert len(ds.train) == 10 and len(ds.test) == 4
    values = np.arange(10) / 100.0
    np.testing.assert_allclose(ds.train.x[:, 1, 2, 0].numpy(), values, rtol=1e-6)
    np.testing.assert_array_equal(ds.train.y.numpy(), np.arange(10) % 3)
    # normalization "default" for your data: the training set's own per-channel statistics (float64 by hand)
    assert ds.mean == pytest.approx((values.mean(),) * 2) and ds.std == pytest.approx((values.std(),) * 2)


def test_a_fedleak_dataset_of_uint8_pixels_is_scaled(tmp_path, monkeypatch):
    ds = _load(tmp_path, monkeypatch, """
        import torch
        from fedleak.data.base import Dataset, Split
        def load():
            x = (torch.arange(12 * 9) % 256).to(torch.uint8).reshape(12, 1, 3, 3)
            y = torch.arange(12) % 2
            return Dataset("u8", Split(x[:8], y[:8]), Split(x[8:], y[8:]), 2, (0.5,), (0.25,))
    """)
    want = ((np.arange(108) % 256).astype(np.float32) / np.float32(255)).reshape(12, 1, 3, 3)
    np.testing.assert_array_equal(ds.train.x.numpy(), want[:8])
    np.testing.assert_array_equal(ds.test.x.numpy(), want[8:])


def test_a_fedleak_dataset_keeps_its_statistics_and_the_size_options_apply(tmp_path, monkeypatch):
    ds = _load(tmp_path, monkeypatch, """
        import torch
        from fedleak.data.base import Dataset, Split
        def load():
            x = (torch.arange(40 * 16) / 1024.0).reshape(40, 1, 4, 4)  # exact in float32
            y = torch.arange(40) % 2
            return Dataset("mine", Split(x[:30], y[:30]), Split(x[30:], y[30:]), 2, (0.25,), (0.5,), ["no", "yes"])
    """, max_train=20, max_test=5)
    assert ds.mean == (0.25,) and ds.std == (0.5,) and ds.class_names == ["no", "yes"]
    assert len(ds.train) == 20 and len(ds.test) == 5
    np.testing.assert_array_equal(ds.train.x.numpy(), (np.arange(640) / 1024.0).reshape(40, 1, 4, 4)[:20])


def test_config_yaml_of_a_plain_run_is_unchanged_by_data_options():
    from fedleak.config import dump_config, parse_config

    text = dump_config(parse_config(BASE))
    assert "options: {}" not in text.split("model:")[0]  # data.options omitted when empty (config hashes kept)
    with_opts = dump_config(parse_config({**BASE, "data": {"name": "m:load", "options": {"n": 3}}}))
    assert yaml.safe_load(with_opts)["data"]["options"] == {"n": 3}


# ------------------------------------------------------------------------------------------ the example, end to end

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "byo"


def naive_auc(member: np.ndarray, scores: np.ndarray) -> float:
    """P(a member outscores a non-member), ties counting one half: every (member, non-member) pair."""
    pos, neg = scores[member], scores[~member]
    return float(((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean())


def brute_tpr(member: np.ndarray, scores: np.ndarray, fpr: float) -> float:
    """Largest TPR over all thresholds (every distinct score, predicted member at >=) whose FPR is <= fpr."""
    best = 0.0
    for t in np.unique(scores):
        pred = scores >= t
        if pred[~member].mean() <= fpr:
            best = max(best, float(pred[member].mean()))
    return best


@pytest.mark.slow
def test_the_byo_example_runs_end_to_end_and_its_metrics_recompute(tmp_path):
    import shutil
    import subprocess

    from conftest import SRC
    from fedleak.metrics.roc import fpr_key

    work = tmp_path / "byo"
    shutil.copytree(EXAMPLE, work, ignore=shutil.ignore_patterns("runs", "__pycache__"))
    # -P: the working directory is not put on sys.path by Python, so fedleak's own lookup is what finds my_nets
    cmd = [sys.executable, "-P", "-m", "fedleak.cli", "run", "config.yaml", "-o", "run", "-q",
           "--set", "fl.rounds=2", "--set", "fl.local_epochs=1", "--set", "signals.every=1"]
    env = {**__import__("os").environ, "PYTHONPATH": str(SRC), "FEDLEAK_QUIET": "1"}
    res = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr
    run = work / "run"
    assert (run / "report.html").is_file() and (run / "report.md").is_file()

    meta = json.loads((run / "meta.json").read_text())
    x_tr, y_tr, x_te, y_te = _example_data(work)
    assert meta["dataset"]["name"] == "my_data:load"
    assert (meta["dataset"]["n_train"], meta["dataset"]["n_test"]) == (len(y_tr), len(y_te)) == (1348, 449)
    assert meta["dataset"]["input_shape"] == [1, 16, 16] and meta["dataset"]["num_classes"] == 10
    final = torch.load(run / "final_model.pt", weights_only=True)
    assert {k: tuple(v.shape) for k, v in final.items()} == {  # the example's SmallCNN, width 8, 16x16 inputs
        "conv.weight": (8, 1, 3, 3), "conv.bias": (8,), "head.weight": (10, 8 * 8 * 8), "head.bias": (10,)}

    metrics = json.loads((run / "attack" / "metrics.json").read_text())
    scores = np.load(run / "attack" / "scores.npz", allow_pickle=False)
    member = scores["member"].astype(bool)
    assert member.sum() == metrics["n_members"] > 0 and (~member).sum() == metrics["n_nonmembers"] > 0
    assert len(metrics["attacks"]) == len(ATTACKS)  # every attack, margins included
    for name, m in metrics["attacks"].items():
        s = np.nan_to_num(scores[name.replace("-", "_")].astype(np.float64), nan=-np.inf)
        assert m["auc"] == pytest.approx(naive_auc(member, s), abs=1e-12), name
        for f in metrics["fpr_targets"]:
            assert m[fpr_key(f)] == pytest.approx(brute_tpr(member, s, f), abs=1e-12), (name, f)


def _example_data(work: Path):
    sys.path.insert(0, str(work))
    try:
        import my_data  # the example's own loader, called as fedleak calls it (seed = the config's seed 0)

        return my_data.load(test_fraction=0.25, size=16, seed=0)
    finally:
        sys.path.remove(str(work))
        sys.modules.pop("my_data", None)


def test_the_examples_two_loader_forms_give_the_same_dataset(monkeypatch):
    from fedleak.config import DataConfig
    from fedleak.data import load_dataset

    monkeypatch.chdir(EXAMPLE)
    monkeypatch.setattr(sys, "path", list(sys.path))
    opts = {"size": 16, "test_fraction": 0.25}
    try:
        a = load_dataset(DataConfig(name="my_data:load", options=opts), seed=0)
        b = load_dataset(DataConfig(name="my_data:load_datasets", options=opts), seed=0)
    finally:
        sys.modules.pop("my_data", None)
    assert a.name == "my_data:load" and b.name == "my_data:load_datasets"
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y) and a.num_classes == b.num_classes == 10
    assert b.class_names == [str(d) for d in range(10)] and a.mean == b.mean and a.std == b.std
