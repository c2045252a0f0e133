"""The FedAvg engine with ``fl.vectorize``: the stacked engine inside ``fedleak train`` against the per-client loop.

The stacked computation sums in another order than the loop, so the two agree to float32 rounding, not bit for
bit; every tolerance below is derived from the sizes of the sums involved (``conftest.rounding_tol``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import assert_within, longest_sum, rounding_tol, tiny_config
from fedleak.fl.federation import build_federation
from fedleak.fl.simulation import choose_engine, train
from fedleak.metrics.roc import roc_auc, roc_curve, tpr_at_fpr
from fedleak.signals.loading import load_signals
from fedleak.signals.store import read_metrics

EPS32 = float(torch.finfo(torch.float32).eps)
OPTIMIZERS = {
    "sgd": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
    "adam": {"optimizer": "adam", "lr": 0.01, "weight_decay": 5e-4},
    "adamw": {"optimizer": "adamw", "lr": 0.01, "weight_decay": 1e-2},
}
PARTITIONS = {
    "iid": {"num_clients": 3},
    "dirichlet": {"num_clients": 4, "scheme": "dirichlet", "beta": 0.5, "min_size": 2},
}


def _cfg(mode: str, opt: str = "sgd", partition: str = "iid", rounds: int = 1, **over):
    fl = {"rounds": rounds, "batch_size": 8, "local_epochs": 2, "vectorize": mode, **OPTIMIZERS[opt]}
    return tiny_config(fl=fl, partition=PARTITIONS[partition], **over)


def _final(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "final_model.pt", weights_only=True)


@pytest.mark.numerics
@pytest.mark.parametrize("partition", sorted(PARTITIONS))
@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_one_round_vectorised_equals_the_loop(tmp_path, opt, partition):
    """One round of ``fedleak train``: the global model and the clients' training losses agree to float32
    rounding. Each of the T local steps rounds sums of at most ``longest_sum`` terms at the scale of the values
    the step handles (the parameters and their movement), so the parameters may differ by
    ``rounding_tol(T · longest_sum, max|θ0| + max|θ − θ0|)``; a different batch, order or optimizer rule would
    move them by ~lr per step, far above that."""
    on, off = train(_cfg("on", opt, partition), tmp_path / "on", quiet=True), train(
        _cfg("off", opt, partition), tmp_path / "off", quiet=True)
    fed = build_federation(_cfg("off", opt, partition))
    theta0 = {n: p.detach() for n, p in fed.model.named_parameters()}
    a, b = _final(on), _final(off)
    assert a.keys() == b.keys() == theta0.keys()
    steps = 2 * max(-(-len(c) // 8) for c in fed.clients)
    n = longest_sum(fed.model, fed.data.normalize(fed.data.train.x[:1]))
    scale = max(float(t.abs().max()) for t in theta0.values()) + max(
        float((b[k] - theta0[k]).abs().max()) for k in b)
    for k in a:
        assert not torch.equal(b[k], theta0[k]), f"{k} did not train"
        assert_within(a[k], b[k], rounding_tol(steps * n, scale), f"global {k} ({opt}, {partition})")
    la, lb = read_metrics(on)[0]["client_train_loss"], read_metrics(off)[0]["client_train_loss"]
    assert la.keys() == lb.keys()
    for c in la:  # means of float32 losses of models that differ by rounding only
        assert abs(la[c] - lb[c]) <= rounding_tol(steps * n, abs(lb[c])), (c, la[c], lb[c])


def _pair_flip_bound(s: np.ndarray, members: np.ndarray, others: np.ndarray, d: float) -> float:
    """Largest |ΔAUC| when every score moves by at most d: only member/non-member pairs closer than 2d can
    change order."""
    gap = np.abs(s[members][:, None] - s[others][None, :])
    return float((gap <= 2 * d).sum()) / gap.size


def _tpr_flip_bound(s: np.ndarray, members: np.ndarray, others: np.ndarray, d: float, fpr: float) -> float:
    """Largest |ΔTPR@fpr| when every score moves by at most d: the threshold (an order statistic of the
    non-member scores) moves by at most d, so only members within 2d of it can cross it."""
    neg = np.sort(s[others])[::-1]
    k = int(np.floor(fpr * len(neg) + 1e-9))
    tau = neg[min(k, len(neg) - 1)]
    return float((np.abs(s[members] - tau) <= 2 * d).sum()) / members.sum()


@pytest.mark.numerics
def test_short_run_attack_metrics_agree(tmp_path):
    """Three rounds, then the attacks' scores: the engines' signals differ by rounding, so the scores differ by
    some small d. The tolerance on AUC is the fraction of member/non-member pairs whose scores are within 2d of
    each other (only those can swap), on TPR@FPR the fraction of members within 2d of the threshold — computed
    from the loop's scores, not tuned."""
    from fedleak.attacks.mia.attacks import run_attacks

    runs = {m: train(_cfg(m, rounds=3), tmp_path / m, quiet=True) for m in ("on", "off")}
    sig = {m: load_signals(r) for m, r in runs.items()}
    names = ["blackbox-loss", "grad-cosine", "fedmia-ii"]
    scores = {m: run_attacks(sig[m], names) for m in runs}
    members, others = sig["off"].members(), sig["off"].owner == -1
    labels = members[members | others]
    for name in names:
        s_on, s_off = scores["on"][name], scores["off"][name]
        d = float(np.nanmax(np.abs(s_on - s_off)))
        assert d <= 1e-3 * float(np.nanmax(np.abs(s_off))), (name, d)  # the engines agree to rounding
        auc_on, auc_off = (roc_auc(labels, s[members | others]) for s in (s_on, s_off))
        assert abs(auc_on - auc_off) <= _pair_flip_bound(s_off, members, others, d), (name, auc_on, auc_off)
        for fpr in (0.1, 0.5):
            t_on, t_off = (tpr_at_fpr(*roc_curve(labels, s[members | others])[:2], fpr) for s in (s_on, s_off))
            assert abs(t_on - t_off) <= _tpr_flip_bound(s_off, members, others, d, fpr), (name, fpr, t_on, t_off)


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"), FEDLEAK_QUIET="1")
    return subprocess.run([sys.executable, "-m", "fedleak.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300, cwd=tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("defense", [
    ["--set", "defense.name=dpsgd", "--set", "defense.params.noise_multiplier=0.5",
     "--set", "defense.params.max_grad_norm=1.0"],
    ["--set", "defense.name=mixup"],
])
def test_on_with_a_defense_that_changes_training_is_one_error_line(tmp_path, defense):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tiny_config(fl={"rounds": 1}).model_dump(mode="json")))
    p = _cli(tmp_path, "train", str(path), "-q", "-o", str(tmp_path / "r"), "--set", "fl.vectorize=on", *defense)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: fl.vectorize=on"), p.stderr
    assert "changes local training" in lines[0] and "fl.vectorize=auto" in lines[0]
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "r" / "config.yaml").exists()  # refused before the run directory was initialised


def test_auto_vectorises_a_small_model_and_says_so_once(tmp_path, capsys):
    train(_cfg("auto", rounds=3), tmp_path / "auto", quiet=False)
    err = capsys.readouterr().err
    said = [ln for ln in err.splitlines() if "fl.vectorize" in ln]
    assert said == ["[fedleak] tiny: fl.vectorize=auto: training the 3 clients of each round as one stacked "
                    "computation"], err


def test_auto_keeps_the_loop_where_it_does_not_pay_and_says_why_once(tmp_path, capsys):
    """An MLP 64-2048-1024-4 (3 x 2.2 M stacked parameters, 4.46 MFLOP per sample): a Linear/ReLU chain, stacked at
    batch 8 (35.7 MFLOP per client step), one by one at batch 16 (71.4 MFLOP > CPU_MAX_CHAIN_STEP_FLOPS)."""
    big = {"name": "mlp", "options": {"hidden": [2048, 1024]}}
    assert choose_engine(build_federation(_cfg("auto", model=big)))[0] is True
    cfg = _cfg("auto", rounds=2, model=big, fl__batch_size=16)
    assert choose_engine(build_federation(cfg))[0] is False
    train(cfg, tmp_path / "auto", quiet=False)
    said = [ln for ln in capsys.readouterr().err.splitlines() if "fl.vectorize" in ln]
    assert len(said) == 1 and "training the clients one by one" in said[0] and "71.4 MFLOP" in said[0]
    assert choose_engine(build_federation(_cfg("off")))[0] is False


def test_on_with_a_training_defense_is_a_config_error_and_auto_falls_back():
    from fedleak.errors import ConfigError

    with pytest.raises(ConfigError, match="fl.vectorize=on cannot be used: defense 'mixup' changes local training"):
        choose_engine(build_federation(_cfg("on", defense={"name": "mixup"})))
    used, why = choose_engine(build_federation(_cfg("auto", defense={"name": "mixup"})))
    assert not used and "fl.vectorize=auto: training the clients one by one" in why


def test_carried_optimizer_state_two_rounds(tmp_path):
    """fresh_optimizer=false: the carried per-client Adam state is used in round 1 by either engine."""
    cfgs = {m: _cfg(m, "adam", rounds=2, **{"fl__fresh_optimizer": False}) for m in ("on", "off")}
    runs = {m: train(c, tmp_path / m, quiet=True) for m, c in cfgs.items()}
    fed = build_federation(cfgs["off"])
    theta0 = {n: p.detach() for n, p in fed.model.named_parameters()}
    a, b = _final(runs["on"]), _final(runs["off"])
    steps = 2 * 2 * max(-(-len(c) // 8) for c in fed.clients)
    n = longest_sum(fed.model, fed.data.normalize(fed.data.train.x[:1]))
    scale = max(float(t.abs().max()) for t in theta0.values()) + max(float((b[k] - theta0[k]).abs().max()) for k in b)
    for k in a:
        assert_within(a[k], b[k], rounding_tol(steps * n, scale), f"global {k}")


@pytest.mark.numerics
@pytest.mark.parametrize("defense", [
    {"name": "sampling"},  # select_data: each client's data of the round from its DATA_SELECT stream
    {"name": "dp-gaussian", "clients": [0, 2]},  # transform_update with the DEFENSE stream, on some clients only
])
def test_update_and_data_defenses_vectorise_with_the_loops_streams(tmp_path, defense):
    """Defenses that act on the data selection or on the upload (not on local training) are vectorised, and the
    result is the loop's to the rounding tolerance of test_one_round_vectorised_equals_the_loop: same streams,
    same selected rows, same noise. (Defenses with a threshold on the update, e.g. quant or prune, are left out:
    a rounding difference may move one entry across it.)"""
    cfgs = {m: _cfg(m, rounds=1, defense=defense) for m in ("on", "off")}
    assert choose_engine(build_federation(cfgs["on"]))[0]
    runs = {m: train(c, tmp_path / m, quiet=True) for m, c in cfgs.items()}
    fed = build_federation(cfgs["off"])
    theta0 = {n: p.detach() for n, p in fed.model.named_parameters()}
    a, b = _final(runs["on"]), _final(runs["off"])
    steps = 2 * max(-(-len(c) // 8) for c in fed.clients)
    n = longest_sum(fed.model, fed.data.normalize(fed.data.train.x[:1]))
    scale = max(float(t.abs().max()) for t in theta0.values()) + max(float((b[k] - theta0[k]).abs().max()) for k in b)
    for k in a:
        assert not torch.equal(b[k], theta0[k])
        assert_within(a[k], b[k], rounding_tol(steps * n, scale), f"global {k} ({defense['name']})")


@pytest.mark.parametrize("name, shape, options", [
    ("mlp", (1, 8, 8), {"hidden": [256, 128]}), ("mlp", (1, 28, 28), {}), ("lenet_dlg", (1, 28, 28), {}),
    ("lenet_soteria", (3, 32, 32), {}), ("convnet64", (3, 32, 32), {"width": 8}), ("alexnet_cifar", (3, 32, 32), {}),
    ("resnet18_gn", (3, 32, 32), {}), ("resnet20_bn", (3, 32, 32), {}),
])
def test_forward_flops_equal_torch_flop_counter(name, shape, options):
    """auto's cost estimate from forward hooks equals torch's FlopCounterMode on every zoo model (the reference;
    too slow to load for the decision itself)."""
    from torch.utils.flop_counter import FlopCounterMode

    from fedleak.fl.vectorized_policy import forward_flops
    from fedleak.models import build_model

    model = build_model(name, 10, shape, **options).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros((1, *shape)))
    assert forward_flops(model, shape) == counter.get_total_flops() > 0
