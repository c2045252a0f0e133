"""Bad configs through the real CLI entry point: one ``error:`` line naming the file or key, exit 2, no traceback.

``run_cli`` calls ``fedleak.cli.main`` (the ``fedleak`` console script) in-process with a real argv; one test
runs ``python -m fedleak.cli`` in a subprocess to check the same contract end to end.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import assert_one_error_line
from fedleak.cli import main

BASE = {
    "name": "bad-input",
    "seed": 1,
    "data": {"name": "synthetic", "synthetic": {"n_train": 60, "n_test": 20, "num_classes": 3, "size": 8}},
    "partition": {"num_clients": 3},
    "candidates": {"n_test": 10, "n_other": 5},
    "model": {"name": "mlp", "options": {"hidden": [8]}},
    "fl": {"rounds": 2, "batch_size": 10, "lr": 0.05},
    "signals": {"every": 1},
}


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``fedleak <args>``."""
    monkeypatch.setattr(sys, "argv", ["fedleak", *args])
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr()
    code = e.value.code if isinstance(e.value.code, int) else (0 if e.value.code is None else 1)
    return code, out.out, out.err


def write_config(path: Path, raw: dict | None = None, **sections) -> Path:
    cfg = json.loads(json.dumps(raw if raw is not None else BASE))
    for key, value in sections.items():
        node = cfg
        parts = key.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    path.write_text(yaml.safe_dump(cfg))
    return path


# ------------------------------------------------------------------------------------------- the file itself


@pytest.mark.parametrize(
    "content,needle",
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "is not a text file"),
        (b"fl:\n  lr: 0.1\n\x00\x00", "is not a text file"),
        (b"- fl\n- data\n", "top level must be a mapping"),
        (b"42\n", "top level must be a mapping"),
        (b"just a sentence\n", "top level must be a mapping"),
        (b"", "is empty"),
        (b"# only a comment\n\n", "is empty"),
    ],
)
def test_config_file_that_is_not_a_yaml_mapping(tmp_path, monkeypatch, capsys, content, needle):
    path = tmp_path / "cfg.yaml"
    path.write_bytes(content)
    out = tmp_path / "run"
    code, _, err = run_cli(monkeypatch, capsys, "train", str(path), "--out", str(out))
    assert_one_error_line(code, err, needle, str(path))
    assert not out.exists()  # an empty file does not silently run the default experiment


def test_config_path_that_is_a_directory(tmp_path, monkeypatch, capsys):
    d = tmp_path / "configs.yaml"
    d.mkdir()
    code, _, err = run_cli(monkeypatch, capsys, "train", str(d), "--out", str(tmp_path / "run"))
    assert_one_error_line(code, err, "is a directory", str(d))


def test_explicit_empty_mapping_means_all_defaults(tmp_path):
    from fedleak.config import ExperimentConfig, load_config

    path = tmp_path / "defaults.yaml"
    path.write_text("{}\n")
    assert load_config(path) == ExperimentConfig()


# ---------------------------------------------------------------------------------------- non-finite numbers

NON_FINITE_KEYS = [
    ("fl", "lr"),
    ("fl", "momentum"),
    ("fl", "weight_decay"),
    ("fl", "participation"),
    ("fl", "schedule", "gamma"),
    ("partition", "beta"),
    ("data", "test_fraction"),
    ("data", "synthetic", "noise"),
    ("defense", "params", "sigma"),
    ("model", "options", "dropout"),
]


@pytest.mark.parametrize("loc", NON_FINITE_KEYS, ids=lambda loc: ".".join(loc))
@pytest.mark.parametrize("text", [".inf", "-.inf", ".nan"])
def test_non_finite_numbers_in_the_file_are_refused(tmp_path, monkeypatch, capsys, loc, text):
    raw = json.loads(json.dumps(BASE))
    node = raw
    for part in loc[:-1]:
        node = node.setdefault(part, {})
    node[loc[-1]] = "@@"
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw).replace("'@@'", text))
    assert not math.isfinite(_get(yaml.safe_load(path.read_text()), loc))  # the file really holds it
    code, _, err = run_cli(monkeypatch, capsys, "train", str(path), "--out", str(tmp_path / "run"))
    key = ".".join(loc)
    assert_one_error_line(code, err, f"'{key}': must be a finite number", str(path))
    assert not (tmp_path / "run").exists()


def _get(raw, loc):
    for part in loc:
        raw = raw[part]
    return raw


@pytest.mark.parametrize("value", [".inf", ".nan", "-.Inf", "inf", "nan"])
def test_non_finite_lr_from_set_is_blamed_on_the_override(tmp_path, monkeypatch, capsys, value):
    path = write_config(tmp_path / "cfg.yaml")
    code, _, err = run_cli(monkeypatch, capsys, "train", str(path), "--set", f"fl.lr={value}", "-o", str(tmp_path / "r"))
    line = assert_one_error_line(code, err, f"--set 'fl.lr={value}'", "'fl.lr'")
    assert str(path) not in line


def test_defense_params_reject_non_finite_and_float_ints():
    """The defenses' own params models (used when a DefenseConfig is built in code, not only from YAML)."""
    from fedleak.config import ConfigError
    from fedleak.defenses.params import FLOAT, FLOATS, INT, DefenseParams, Field, param, parse_params

    class Spec(DefenseParams):
        s: param(FLOAT) = Field(0.1)
        f: param(FLOATS) = Field([0.5, 0.6])
        k: param(INT) = Field(4)

    assert parse_params("d", {"s": "1e-3", "k": 7}, Spec) == {"s": 1e-3, "f": [0.5, 0.6], "k": 7}
    for bad in ({"s": float("inf")}, {"s": float("nan")}, {"s": "inf"}, {"f": [0.5, float("inf")]}):
        with pytest.raises(ConfigError, match="must be a finite number"):
            parse_params("d", bad, Spec)
    for bad in ({"k": 1e20}, {"k": 4.0}, {"k": float("inf")}, {"s": 10**400}):
        with pytest.raises(ConfigError, match=f"parameter '{next(iter(bad))}' must be of type"):
            parse_params("d", bad, Spec)
    with pytest.raises(ConfigError, match=r"^defense 'd': parameter 'k' must not be null$"):
        parse_params("d", {"k": None}, Spec)


# ------------------------------------------------------------------------------------------- absurd sizes


@pytest.mark.parametrize(
    "override,needle",
    [
        ("fl.rounds=1.0e+20", "'fl.rounds': must be a whole number"),
        ("fl.rounds=1e20", "'fl.rounds': must be a whole number"),
        ("fl.rounds=20.0", "'fl.rounds': must be a whole number"),
        ("fl.rounds=1000000000000000", "'fl.rounds': must be less than or equal to 100000"),
        ("partition.num_clients=1000000", "'partition.num_clients': must be less than or equal to 10000"),
        ("fl.local_epochs=100000000", "'fl.local_epochs': must be less than or equal to 10000"),
        ("fl.batch_size=10000000", "'fl.batch_size': must be less than or equal to 65536"),
        ("fl.eval_batch_size=10000000", "'fl.eval_batch_size': must be less than or equal to 65536"),
        ("data.image_size=100000", "'data.image_size': must be less than or equal to 1024"),
        ("signals.chunk_size=1000000000", "'signals.chunk_size': must be less than or equal to 65536"),
        ("signals.batch_size=1000000000", "'signals.batch_size': must be less than or equal to 65536"),
        ("candidates.n_test=1e3", "'candidates.n_test': must be a whole number"),
        ("candidates.n_other=10000000000", "'candidates.n_other': must be less than or equal to 100000000"),
        ("fl.threads=100000", "'fl.threads': must be less than or equal to 1024"),
        ("seed=-1", "'seed': must be greater than or equal to 0"),
        ("fl.schedule={kind: milestones, milestones: [1.5]}", "'fl.schedule.milestones.0': must be a whole number"),
        ("fl.schedule={kind: milestones, milestones: [5000]}", "'fl.schedule.milestones': [5000] are not rounds"),
        ("fl.schedule.gamma=10", "'fl.schedule.gamma': 10 grows fl.lr=0.05 past 1e300"),
    ],
)
def test_absurd_sizes_are_refused_before_anything_runs(tmp_path, monkeypatch, capsys, override, needle):
    path = write_config(tmp_path / "cfg.yaml", fl__rounds=1000)
    t0 = time.perf_counter()
    code, _, err = run_cli(monkeypatch, capsys, "train", str(path), "--set", override, "-o", str(tmp_path / "r"))
    assert_one_error_line(code, err, f"--set '{override}'", needle)
    assert time.perf_counter() - t0 < 30  # refused up front, not after allocating
    assert not (tmp_path / "r").exists()


def test_model_too_large_is_refused_before_allocating(tmp_path, monkeypatch, capsys):
    path = write_config(tmp_path / "cfg.yaml")
    code, _, err = run_cli(
        monkeypatch, capsys, "train", str(path), "--set", "model.options={hidden: [1000000000, 1000000000]}",
        "-o", str(tmp_path / "r"),
    )
    # 64*1e9 + 1e9 + 1e9*1e9 + 1e9 + 1e9*3 + 3 parameters (8x8 grey images, 3 classes)
    n = 64 * 10**9 + 10**9 + 10**18 + 10**9 + 3 * 10**9 + 3
    assert_one_error_line(code, err, "model 'mlp'", f"{n:,} parameters", "above the limit")


# ------------------------------------------------------------------------------------ unknown keys, --set


def test_set_typo_is_blamed_on_the_override_with_the_closest_key(tmp_path, monkeypatch, capsys):
    path = write_config(tmp_path / "cfg.yaml")
    code, _, err = run_cli(monkeypatch, capsys, "train", str(path), "--set", "fl.rouds=5", "-o", str(tmp_path / "r"))
    line = assert_one_error_line(code, err, "--set 'fl.rouds=5'", "unknown key 'fl.rouds'", "did you mean 'fl.rounds'?")
    assert str(path) not in line  # the YAML file is fine


@pytest.mark.parametrize(
    "sections,needle",
    [
        ({"fl__rouds": 5}, "unknown key 'fl.rouds' (did you mean 'fl.rounds'?)"),
        ({"modle": {"name": "mlp"}}, "unknown key 'modle' (did you mean 'model'?)"),
        ({"fl__schedule__gama": 0.5}, "unknown key 'fl.schedule.gama' (did you mean 'fl.schedule.gamma'?)"),
        ({"signals__evry": 2}, "unknown key 'signals.evry' (did you mean 'signals.every'?)"),
        ({"fl__zzz": 1}, "unknown key 'fl.zzz'"),
    ],
)
def test_unknown_key_in_the_file_names_it_and_suggests(tmp_path, monkeypatch, capsys, sections, needle):
    path = write_config(tmp_path / "cfg.yaml", **sections)
    code, _, err = run_cli(monkeypatch, capsys, "train", str(path), "-o", str(tmp_path / "r"))
    line = assert_one_error_line(code, err, f"invalid config {path}", needle)
    assert "--set" not in line
    if "zzz" in needle:
        assert "did you mean" not in line


def test_file_and_set_problems_are_each_blamed_on_their_source(tmp_path, monkeypatch, capsys):
    path = write_config(tmp_path / "cfg.yaml", partition__scheme="pathological")
    code, _, err = run_cli(
        monkeypatch, capsys, "train", str(path), "-s", "signals.evry=3", "-s", "fl.lr=-1", "-o", str(tmp_path / "r")
    )
    line = assert_one_error_line(code, err)
    assert f"invalid config {path}: 'partition.scheme'" in line
    assert "invalid --set 'signals.evry=3': unknown key 'signals.evry' (did you mean 'signals.every'?)" in line
    assert "invalid --set 'fl.lr=-1': 'fl.lr': must be greater than 0" in line


@pytest.mark.parametrize(
    "override,needle",
    [
        ("fl.rounds", "must look like section.key=value"),
        (".rounds=3", "is not a key"),
        ("fl..rounds=3", "is not a key"),
        ("fl.lr=[1,", "the value is not valid YAML"),
        ("fl.lr.x=3", "'fl.lr'"),
    ],
)
def test_malformed_set(tmp_path, monkeypatch, capsys, override, needle):
    path = write_config(tmp_path / "cfg.yaml")
    code, _, err = run_cli(monkeypatch, capsys, "train", str(path), "--set", override, "-o", str(tmp_path / "r"))
    assert_one_error_line(code, err, f"--set '{override}'", needle)


# ---------------------------------------------------------------------------------------- defense.clients


@pytest.mark.parametrize("clients,bad", [([5], "[5]"), ([0, 3], "[3]"), ([-1], "[-1]")])
def test_defense_clients_must_exist(tmp_path, monkeypatch, capsys, clients, bad):
    path = write_config(tmp_path / "cfg.yaml", defense={"name": "perturb", "clients": clients})
    code, _, err = run_cli(monkeypatch, capsys, "train", str(path), "-o", str(tmp_path / "r"))
    assert_one_error_line(code, err, str(path), "'defense.clients'", f"client(s) {bad}", "0..2")


def test_defense_clients_via_set_and_duplicates(tmp_path, monkeypatch, capsys):
    path = write_config(tmp_path / "cfg.yaml")
    code, _, err = run_cli(monkeypatch, capsys, "train", str(path), "-s", "defense.clients=[1, 1]", "-o", str(tmp_path / "r"))
    assert_one_error_line(code, err, "--set 'defense.clients=[1, 1]'", "more than once")


# ------------------------------------------------------------------------------------- model vs input size


def test_model_that_does_not_fit_the_images_says_the_size_it_needs(tmp_path, monkeypatch, capsys):
    path = write_config(tmp_path / "cfg.yaml", model={"name": "alexnet_cifar"})
    code, _, err = run_cli(monkeypatch, capsys, "train", str(path), "-o", str(tmp_path / "r"))
    assert_one_error_line(
        code, err, "model 'alexnet_cifar' needs images of at least 13x13", "the data's 8x8 is too small", "data.image_size=32"
    )
    assert not (tmp_path / "r").exists()
    # independent check of 13 = the smallest side: real forwards of the architecture itself
    from fedleak.models.alexnet import AlexNetCifar

    net = AlexNetCifar(3, in_channels=1)
    with torch.no_grad(), pytest.raises(RuntimeError):
        net(torch.zeros(1, 1, 12, 12))
    with torch.no_grad():
        assert net(torch.zeros(1, 1, 13, 13)).shape == (1, 3)


def test_model_fit_advice_is_followed_successfully(tmp_path):
    from fedleak.config import load_config
    from fedleak.fl.federation import build_federation

    path = write_config(tmp_path / "cfg.yaml", model={"name": "alexnet_cifar"}, data__image_size=32)
    fed = build_federation(load_config(path))
    assert fed.data.input_shape == (1, 32, 32)


def test_convnet_too_small_and_bad_options(tmp_path, monkeypatch, capsys):
    path = write_config(tmp_path / "cfg.yaml", model={"name": "convnet64"}, data__synthetic__size=6)
    code, _, err = run_cli(monkeypatch, capsys, "train", str(path), "-o", str(tmp_path / "r"))
    assert_one_error_line(code, err, "model 'convnet64' needs images of at least 9x9", "the data's 6x6 is too small")
    for options, needle in (({"hidden": 5}, "hidden must be a list of positive integers"),
                            ({"hidden": [1.5]}, "hidden must be a list of positive integers")):
        path = write_config(tmp_path / "cfg.yaml", model={"name": "mlp", "options": options})
        code, _, err = run_cli(monkeypatch, capsys, "train", str(path), "-o", str(tmp_path / "r"))
        assert_one_error_line(code, err, "model 'mlp'", needle)


def test_meta_build_leaves_weights_and_rng_unchanged():
    """The dry meta-device build must not move the global RNG: weights equal a plain constructor's."""
    from fedleak.models import build_model
    from fedleak.models.lenet import LeNetDLG
    from fedleak.models._common import uniform_init_

    torch.manual_seed(7)
    a = build_model("lenet_dlg", 10, (1, 8, 8))
    after_a = torch.rand(3)
    torch.manual_seed(7)
    b = LeNetDLG(10, (1, 8, 8))
    uniform_init_(b)
    after_b = torch.rand(3)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n
    assert torch.equal(after_a, after_b)


# ------------------------------------------------------------------------------------------ candidate counts


def _subprocess_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"), FEDLEAK_QUIET="1")
    return subprocess.run([sys.executable, "-m", "fedleak.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300, cwd=tmp_path)


@pytest.mark.slow
def test_capped_candidate_request_warns_and_meta_records_what_was_used(tmp_path):
    path = write_config(tmp_path / "cfg.yaml", candidates={"n_test": 5000, "n_other": 500}, fl__rounds=1)
    p = _subprocess_cli(tmp_path, "train", str(path), "-q", "-o", str(tmp_path / "r"))
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    warnings = [line for line in p.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2, p.stderr
    assert "candidates.n_test=5000 but the test split has 20 samples" in warnings[0]
    assert "candidates.n_other=500 but 2 other client(s) hold fewer samples (as few as 20)" in warnings[1]
    meta = json.loads((tmp_path / "r" / "meta.json").read_text())
    with np.load(tmp_path / "r" / "candidates.npz") as z:
        owner = z["owner"]
    # independent counts: 60 train / 3 clients = 20 each, 20 test samples (data.synthetic)
    assert meta["candidates_used"] == {"max_members": 20, "n_test": 20, "n_other": 20}
    assert (owner == -1).sum() == 20 and (owner == 0).sum() == 20
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert saved["candidates"]["n_test"] == 5000  # the request, as given (resume compares it)


def test_candidate_set_without_non_members_is_an_error(tmp_path, monkeypatch, capsys):
    path = write_config(tmp_path / "cfg.yaml", candidates={"n_test": 0, "n_other": 0})
    code, _, err = run_cli(monkeypatch, capsys, "train", str(path), "-o", str(tmp_path / "r"))
    assert_one_error_line(code, err, "no non-members", "candidates.n_test")


def test_target_client_without_samples_is_an_error():
    from fedleak.config import CandidatesConfig, ConfigError
    from fedleak.signals.candidates import build_candidates

    clients = [np.arange(0), np.arange(0, 10), np.arange(10, 20)]
    with pytest.raises(ConfigError, match="client 0 holds no training samples"):
        build_candidates(CandidatesConfig(target_client=0), clients, 20, 5, np.random.default_rng(0))


# --------------------------------------------------------------------------------------- diverging training


def test_nan_training_stops_naming_round_and_client_and_keeps_finished_rounds(tmp_path, monkeypatch, capsys):
    # rounds 0 and 1 train at lr 0.05; from round 2 on the lr is 5e6 and the loss overflows
    sched = {"kind": "milestones", "gamma": 1e8, "milestones": [1]}
    path = write_config(tmp_path / "cfg.yaml", fl__rounds=5, fl__schedule=sched)
    run = tmp_path / "r"
    code, _, err = run_cli(monkeypatch, capsys, "train", str(path), "-q", "-o", str(run))
    line = assert_one_error_line(code, err, "training diverged in round ", "client ", "use a smaller fl.lr")
    rnd = int(line.split("in round ")[1].split()[0])
    assert rnd >= 2
    from fedleak.signals.store import read_metrics

    rows = read_metrics(run)
    assert [r["round"] for r in rows] == list(range(rnd))
    assert torch.load(run / "checkpoint.pt", weights_only=True)["round"] == rnd - 1
    # the finished rounds are exactly those of a run that stops before the divergence
    ref = tmp_path / "ref"
    code, _, err = run_cli(monkeypatch, capsys, "train", str(path), "-q", "-s", f"fl.rounds={rnd}", "-o", str(ref))
    assert code == 0, err
    ref_rows = read_metrics(ref)
    for a, b in zip(rows, ref_rows):
        assert a["test_acc"] == b["test_acc"] and a["client_train_loss"] == b["client_train_loss"]
    # resuming the same run does not lose or redo the finished rounds, and stops at the same place
    code, _, err = run_cli(monkeypatch, capsys, "train", str(path), "-q", "-o", str(run))
    assert assert_one_error_line(code, err) == line
    assert [r["round"] for r in read_metrics(run)] == list(range(rnd))


def test_nan_training_under_dpsgd(tmp_path, monkeypatch, capsys):
    path = write_config(tmp_path / "cfg.yaml", fl__lr=1e30, defense={"name": "dpsgd"})
    code, _, err = run_cli(monkeypatch, capsys, "train", str(path), "-q", "-o", str(tmp_path / "r"))
    assert_one_error_line(code, err, "training diverged in round 0 (0-based), client ", "1e+30")


# ------------------------------------------------------------------------------------------------ inversion


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--set", "attack.lr=.inf"], "attack.lr must be a finite number"),
        (["--set", "tv=.nan"], "attack.tv must be a finite number"),
        (["--local-lr", "nan"], "local_lr"),
        (["--defense", "dp-gaussian", "--noise-scale", "inf"], "defense_params.scale must be a finite number"),
        (["--set", "attack.iterations=1.0e+20"], "attack.iterations must be a whole number"),
        (["--set", "attack.iterations=100000000"], "attack.iterations=100000000 is above the limit 1000000"),
        (["--images", "1000000000"], "images"),
    ],
)
def test_invert_rejects_non_finite_and_absurd_settings(tmp_path, monkeypatch, capsys, args, needle):
    code, _, err = run_cli(monkeypatch, capsys, "invert", "--preset", "dlg", "-o", str(tmp_path / "o"), "-q", *args)
    assert_one_error_line(code, err, "invalid inversion settings", needle)
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_subprocess_cli_binary_config_and_set_typo(tmp_path):
    binary = tmp_path / "weights.yaml"
    binary.write_bytes(bytes(range(256)))
    good = write_config(tmp_path / "good.yaml")
    for args, needles in (
        ([str(binary)], ["is not a text file", str(binary)]),
        ([str(good), "--set", "fl.rouds=5"], ["--set 'fl.rouds=5'", "did you mean 'fl.rounds'?"]),
    ):
        p = _subprocess_cli(tmp_path, "train", *args, "-o", str(tmp_path / "r"))
        assert_one_error_line(p.returncode, p.stderr, *needles)
