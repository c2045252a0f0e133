"""dpsgd: per-sample clipping and noise against a naive autograd loop; ε against the accountant."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import assert_within, longest_sum, rounding_tol, tiny_config
from rdp_reference import epsilon
from fedleak.defenses.dpsgd import DPSGD, clip_and_noise, per_sample_grads
from fedleak.models.functional import soft_cross_entropy
from fedleak.signals.compute import flat_params


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
    before = flat_params(m).double().numpy()
    d = DPSGD({"noise_multiplier": 0.0, "max_grad_norm": C})
    d.transform_batch(x, y, 4, torch.Generator())
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    d.training_step(m, x, y, soft_cross_entropy, opt)
    after = flat_params(m).double().numpy()
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


def _reference_bounds(q, sigma, steps, delta=1e-5):
    """dp-accounting's RDP ε lies in [reference, reference · 1.01] (tests/defenses/test_dp_accounting.py)."""
    ref = epsilon(q, sigma, steps, delta)
    return ref - 1e-9, ref * 1.01


@pytest.mark.parametrize("sampling", ["poisson", "shuffle"])
def test_dpsgd_in_the_engine_reports_epsilon_of_the_accountant(tmp_path, sampling):
    from fedleak.fl.simulation import train
    from fedleak.signals.store import read_metrics, read_split

    cfg = tiny_config(fl__rounds=2, fl__local_epochs=2, signals__rounds=[1],
                      defense={"name": "dpsgd", "params": {"noise_multiplier": 1.1, "max_grad_norm": 1.0,
                                                           "sampling": sampling}})
    run = train(cfg, tmp_path / "r", quiet=True)
    sizes = {len(c) for c in read_split(run)}
    for rec in read_metrics(run):
        r = rec["round"]
        bounds = [_reference_bounds(min(1.0, 8 / n), 1.1, (r + 1) * 2 * math.ceil(n / 8)) for n in sizes]
        lo, hi = max(b[0] for b in bounds), max(b[1] for b in bounds)
        assert lo <= rec["privacy"]["epsilon"] <= hi
        assert rec["privacy"]["level"] == "sample"
        assert rec["privacy"]["accountant"] == "dp-accounting RDP"
        assert rec["privacy"]["sampling"] == sampling
        assert rec["privacy"]["proven_bound"] is (sampling == "poisson")
    opacus = pytest.importorskip("opacus.accountants")
    n = min(sizes)
    acc = opacus.RDPAccountant()
    for _ in range(2 * 2 * math.ceil(n / 8)):
        acc.step(noise_multiplier=1.1, sample_rate=8 / n)
    if len(sizes) == 1:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = acc.get_epsilon(1e-5)
        assert ref - 1e-9 <= read_metrics(run)[-1]["privacy"]["epsilon"] <= ref * 1.01


def test_dpsgd_pld_accountant_is_reported_and_tighter():
    cfg = tiny_config(defense={"name": "dpsgd", "params": {"noise_multiplier": 1.0, "accountant": "pld"}})
    d = DPSGD(cfg.defense.params, cfg)
    d.client_sizes.add(40)
    rec = d.privacy_spent(2)
    assert rec["accountant"] == "dp-accounting PLD"
    # PLD is an upper bound that is tighter than RDP (test_dp_accounting.py checks it against Opacus's PRV)
    assert rec["epsilon"] < epsilon(8 / 40, 1.0, 3 * math.ceil(40 / 8), 1e-5)


# ------------------------------------------------------------------------------------------ batch formation


def _batches(d, n, B, epochs, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [b for _ in range(epochs) for b in d.local_batches(n, B, gen)]


def test_poisson_batches_include_each_sample_with_probability_q():
    from scipy.stats import binomtest, chisquare

    n, B, epochs = 205, 20, 40
    d = DPSGD({"sampling": "poisson"})
    batches = _batches(d, n, B, epochs)
    assert len(batches) == epochs * math.ceil(n / B)  # ceil(n/B) steps per epoch
    q = B / n
    counts = np.zeros(n, dtype=np.int64)
    for b in batches:
        assert b.dtype == torch.long and len(set(b.tolist())) == len(b)  # indices, no repeats within a step
        counts[b.numpy()] += 1
    trials = len(batches)
    # the total number of inclusions is Binomial(n·steps, q); each sample's count Binomial(steps, q)
    assert binomtest(int(counts.sum()), n * trials, q).pvalue > 1e-3
    assert chisquare(counts).pvalue > 1e-3  # no sample favoured (equal expected counts)
    sizes = np.array([len(b) for b in batches])
    assert sizes.min() < B < sizes.max()  # variable batch sizes
    assert d._expected == pytest.approx(q * n)


def test_batch_size_at_least_n_takes_every_sample_every_step():
    d = DPSGD({"sampling": "poisson"})
    batches = _batches(d, 7, 10, 3)
    assert len(batches) == 3 and all(b.tolist() == list(range(7)) for b in batches)
    assert d._expected == 7.0


def test_shuffle_batches_are_the_default_loop_bit_for_bit():
    """``sampling: shuffle`` draws exactly what the engine's loop drew before the hook existed: one randperm per
    epoch from the local stream, cut into batches of B."""
    from fedleak.defenses.base import Defense

    n, B = 23, 5
    gen = torch.Generator().manual_seed(4)
    expect = []
    for _ in range(3):
        perm = torch.randperm(n, generator=gen)
        expect += [perm[s : s + B] for s in range(0, n, B)]
    for d in (DPSGD({"sampling": "shuffle"}), Defense()):
        got = _batches(d, n, B, 3, seed=4)
        assert len(got) == len(expect) and all(torch.equal(a, b) for a, b in zip(got, expect))


def test_poisson_step_divides_the_clipped_sum_by_the_expected_batch_size():
    m = _model()
    g = torch.Generator().manual_seed(5)
    n, B = 40, 10  # q = 1/4, expected batch 10
    x, y = 3 * torch.randn(n, 12, generator=g), torch.randint(0, 4, (n,), generator=g)
    d = DPSGD({"noise_multiplier": 0.0, "max_grad_norm": 0.5})
    next(iter(d.local_batches(n, B, torch.Generator().manual_seed(0))))  # sets the client's q·n
    idx = torch.arange(7)  # a drawn batch of 7 != 10
    G = _naive(m, x[idx], y[idx]).numpy()
    expect = (G * np.minimum(1.0, 0.5 / np.linalg.norm(G, axis=1))[:, None]).sum(0) / 10.0
    before = flat_params(m).double().numpy()
    d.transform_batch(x[idx], y[idx], 4, torch.Generator())
    d.training_step(m, x[idx], y[idx], soft_cross_entropy, torch.optim.SGD(m.parameters(), lr=1.0))
    after = flat_params(m).double().numpy()
    tol = rounding_tol(longest_sum(m, x) + G.shape[1], np.abs(G).max()) + rounding_tol(1, np.abs(before).max())
    assert_within(before - after, expect, tol, "Poisson SGD step")


@pytest.mark.numerics  # float32 randn takes another (vectorised) kernel per CPU capability
def test_an_empty_poisson_batch_is_a_noise_only_step():
    torch.manual_seed(0)
    m = torch.nn.Linear(100, 100)
    d = DPSGD({"noise_multiplier": 2.0, "max_grad_norm": 0.5})
    next(iter(d.local_batches(50, 5, torch.Generator().manual_seed(0))))  # q·n = 5
    x, y = torch.zeros(0, 100), torch.zeros(0, dtype=torch.long)
    d.transform_batch(x, y, 100, torch.Generator().manual_seed(3))
    before = flat_params(m).clone()
    loss = d.training_step(m, x, y, soft_cross_entropy, torch.optim.SGD(m.parameters(), lr=1.0))
    assert math.isnan(loss)  # nothing to average; the local loop leaves it out
    step = (before - flat_params(m)).numpy()
    assert step.std() == pytest.approx(2.0 * 0.5 / 5, rel=0.03) and abs(step.mean()) < 0.05 * step.std()


def test_local_training_with_empty_poisson_batches_runs_and_averages_the_rest():
    from fedleak.fl.local import local_update
    from fedleak.config import FLConfig

    m = _model()
    g = torch.Generator().manual_seed(6)
    x, y = torch.rand(3, 12, generator=g), torch.randint(0, 4, (3,), generator=g)
    d = DPSGD({"noise_multiplier": 0.5, "max_grad_norm": 1.0})
    fl = FLConfig(batch_size=1, local_epochs=4, lr=0.1)  # q = 1/3: P(empty batch) = 8/27 per step
    sizes = [len(b) for b in _batches(DPSGD({}), 3, 1, 4, seed=11)]
    assert 0 in sizes and any(sizes)  # this stream draws empty and non-empty batches
    params, loss, _ = local_update(m, {k: v.detach().clone() for k, v in m.named_parameters()}, x, y, fl=fl,
                                   lr=0.1, num_classes=4, normalize=lambda t: t, defense=d,
                                   gen=torch.Generator().manual_seed(11))
    assert math.isfinite(loss) and all(bool(torch.isfinite(p).all()) for p in params.values())


def test_bad_sampling_and_accountant_are_named():
    from fedleak.config import ConfigError

    with pytest.raises(ConfigError, match="'sampling' must be one of poisson, shuffle"):
        DPSGD({"sampling": "poison"})
    with pytest.raises(ConfigError, match="'accountant' must be one of rdp, pld"):
        DPSGD({"accountant": "prv"})
