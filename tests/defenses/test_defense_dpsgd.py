"""dpsgd: per-sample clipping and noise against a naive autograd loop; ε against the accountant."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import assert_within, longest_sum, rounding_tol, tiny_config
from fedleak.defenses.accountant import epsilon
from fedleak.defenses.dpsgd import DPSGD, clip_and_noise, per_sample_grads
from fedleak.models.functional import soft_cross_entropy


def _model(seed=0, d=12, h=7, c=4):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(d, h), torch.nn.Tanh(), torch.nn.Linear(h, c))


def _naive(model, x, y):
    """Per-sample gradients by one autograd backward per sample, in float64 (on a float64 copy of the model)."""
    model, x = copy.deepcopy(model).double(), x.double()
    out = []
    for i in range(len(x)):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        out.append(torch.cat([p.grad.reshape(-1).clone() for p in model.parameters()]))
    return torch.stack(out)


@pytest.mark.numerics
def test_per_sample_gradients_match_autograd_one_by_one():
    m = _model()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(9, 12, generator=g), torch.randint(0, 4, (9,), generator=g)
    grads, losses = per_sample_grads(m, x, y, soft_cross_entropy)
    flat = torch.cat([grads[n].reshape(9, -1) for n, _ in m.named_parameters()], 1)
    ref = _naive(m, x, y)
    n = longest_sum(m, x)
    assert_within(flat, ref, rounding_tol(n, float(ref.abs().max())), "per-sample gradients")
    with torch.no_grad():
        z = copy.deepcopy(m).double()(x.double())
    ref_loss = F.cross_entropy(z, y, reduction="none")
    assert_within(losses, ref_loss, rounding_tol(n, 1.0 + ref_loss + 2 * z.abs().amax(1)), "losses")


@pytest.mark.numerics
def test_training_step_is_the_mean_of_clipped_gradients():
    m = _model()
    g = torch.Generator().manual_seed(2)
    x, y = 3 * torch.randn(10, 12, generator=g), torch.randint(0, 4, (10,), generator=g)
    G = _naive(m, x, y).numpy()
    C = float(np.median(np.linalg.norm(G, axis=1)))  # about half the samples get clipped
    expect = (G * np.minimum(1.0, C / np.linalg.norm(G, axis=1))[:, None]).mean(0)
    before = torch.cat([p.detach().reshape(-1) for p in m.parameters()]).double().numpy()
    d = DPSGD({"noise_multiplier": 0.0, "max_grad_norm": C})
    d.transform_batch(x, y, 4, torch.Generator())
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    d.training_step(m, x, y, soft_cross_entropy, opt)
    after = torch.cat([p.detach().reshape(-1) for p in m.parameters()]).double().numpy()
    # float32 per-sample gradients and norms (longest_sum / P terms) at the gradient scale, plus the rounding of
    # the float32 parameter update at the parameters' scale
    tol = rounding_tol(longest_sum(m, x) + G.shape[1], np.abs(G).max()) + rounding_tol(1, np.abs(before).max())
    assert_within(before - after, expect, tol, "SGD step")


@pytest.mark.numerics  # float32 randn takes another (vectorised) kernel per CPU capability
def test_noise_std_is_sigma_c_over_batch():
    torch.manual_seed(0)
    m = torch.nn.Linear(100, 100)
    x, y = torch.randn(8, 100), torch.randint(0, 100, (8,))
    grads, _ = per_sample_grads(m, x, y, soft_cross_entropy)
    clean, _ = clip_and_noise(grads, 0.5, 0.0, None)
    noisy, _ = clip_and_noise(grads, 0.5, 2.0, torch.Generator().manual_seed(3))
    resid = torch.cat([(noisy[n] - clean[n]).reshape(-1) for n in clean]).numpy()
    assert resid.std() == pytest.approx(2.0 * 0.5 / 8, rel=0.02)
    assert abs(resid.mean()) < 0.01 * resid.std() * 10


def test_dpsgd_in_the_engine_reports_epsilon_of_the_accountant(tmp_path):
    from fedleak.fl.simulation import train
    from fedleak.signals.store import read_metrics, read_split

    cfg = tiny_config(fl__rounds=2, fl__local_epochs=2, signals__rounds=[1],
                      defense={"name": "dpsgd", "params": {"noise_multiplier": 1.1, "max_grad_norm": 1.0}})
    run = train(cfg, tmp_path / "r", quiet=True)
    sizes = {len(c) for c in read_split(run)}
    for rec in read_metrics(run):
        r = rec["round"]
        expect = max(
            epsilon(min(1.0, 8 / n), 1.1, (r + 1) * 2 * math.ceil(n / 8), 1e-5) for n in sizes
        )
        assert rec["privacy"]["epsilon"] == pytest.approx(expect)
        assert rec["privacy"]["level"] == "sample"
    opacus = pytest.importorskip("opacus.accountants")
    n = min(sizes)
    acc = opacus.RDPAccountant()
    for _ in range(2 * 2 * math.ceil(n / 8)):
        acc.step(noise_multiplier=1.1, sample_rate=8 / n)
    if len(sizes) == 1:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert read_metrics(run)[-1]["privacy"]["epsilon"] == pytest.approx(acc.get_epsilon(1e-5), rel=1e-6)
