"""mixup / augment / sampling / augment+sampling / instahide: what the model actually receives."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from conftest import rounding_tol, tiny_config
from fedleak.config import ConfigError, DefenseConfig
from fedleak.defenses.data import Augment, MixUp, Sampling, augment_sampling, flip, random_crop, rotate
from fedleak.defenses.instahide import InstaHide
from fedleak.defenses import Defense, build_defense
from fedleak.fl.local import local_update


def _batch(B=16, C=3, H=8, seed=0, ncls=5):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, C, H, H, generator=g), torch.randint(0, ncls, (B,), generator=g)


class Recorder(torch.nn.Module):
    """A linear model that records every input batch it sees."""

    def __init__(self, d, ncls):
        super().__init__()
        self.fc = torch.nn.Linear(d, ncls)
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.fc(x.flatten(1))


def _run_local(defense, x, y, ncls=5, batch_size=8, epochs=1):
    model = Recorder(x[0].numel(), ncls)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    fl = tiny_config(fl__batch_size=batch_size, fl__local_epochs=epochs).fl
    calls = []
    orig_tb, orig_ts = defense.transform_batch, defense.training_step

    def tb(xb, yb, nc, gen):
        out = orig_tb(xb, yb, nc, gen)
        calls.append({"x": xb.clone(), "y": yb.clone(), "out_x": out[0].clone(), "out_y": out[1].clone(),
                      "last": dict(getattr(defense, "last", {}))})
        return out

    labels = []

    def ts(model_, xb, yb, loss_fn, opt):
        labels.append(yb.clone())
        return orig_ts(model_, xb, yb, loss_fn, opt)

    defense.transform_batch, defense.training_step = tb, ts
    norm = lambda t: (t - 0.5) / 0.25
    local_update(model, params, x, y, fl=fl, lr=0.1, num_classes=ncls, normalize=norm, defense=defense,
                 gen=torch.Generator().manual_seed(3))
    return model.seen, calls, labels, norm


# ------------------------------------------------------------------------------------------------ mixup

def test_mixup_model_receives_the_mixed_inputs_and_soft_labels():
    x, y = _batch()
    seen, calls, labels, norm = _run_local(MixUp({"alpha": 1.0}), x, y)
    assert len(seen) == len(calls) == 2
    for got, c, lab in zip(seen, calls, labels):
        lam, perm = c["last"]["lam"], c["last"]["perm"]
        assert 0 < lam < 1
        expect_x = lam * c["x"] + (1 - lam) * c["x"][perm]
        torch.testing.assert_close(got, norm(expect_x))
        assert not torch.allclose(got, norm(c["x"]))
        oh = F.one_hot(c["y"], 5).float()
        torch.testing.assert_close(lab, lam * oh + (1 - lam) * oh[perm])


def test_mixup_labels_only_reproduces_the_original():
    x, y = _batch()
    seen, calls, labels, norm = _run_local(MixUp({"alpha": 0.5, "labels_only": True}), x, y)
    for got, c in zip(seen, calls):
        torch.testing.assert_close(got, norm(c["x"]))  # the clean inputs
    # soft-label CE equals the original's lam*CE(y) + (1-lam)*CE(y[perm])
    logits = torch.randn(8, 5)
    c, lab = calls[0], labels[0]
    from fedleak.models.functional import soft_cross_entropy

    lam, perm = c["last"]["lam"], c["last"]["perm"]
    ref = lam * F.cross_entropy(logits, c["y"]) + (1 - lam) * F.cross_entropy(logits, c["y"][perm])
    torch.testing.assert_close(soft_cross_entropy(logits, lab), ref)


def test_mixup_lambda_follows_beta():
    m = MixUp({"alpha": 0.4})
    gen = torch.Generator().manual_seed(0)
    x, y = _batch(B=2)
    lams = [m.transform_batch(x, y, 5, gen) and m.last["lam"] for _ in range(3000)]
    assert stats.kstest(lams, stats.beta(0.4, 0.4).cdf).pvalue > 1e-3


# ---------------------------------------------------------------------------------------------- augment

def test_random_crop_is_a_window_of_the_zero_padded_image():
    x, _ = _batch(B=20)
    out, off = random_crop(x, 3, torch.Generator().manual_seed(1))
    xp = np.pad(x.numpy(), ((0, 0), (0, 0), (3, 3), (3, 3)))
    assert off.min() >= 0 and off.max() <= 6 and len(set(map(tuple, off.tolist()))) > 5
    for i, (r, c) in enumerate(off.tolist()):
        np.testing.assert_array_equal(out[i].numpy(), xp[i, :, r : r + 8, c : c + 8])


@pytest.mark.numerics  # grid_sample and the colour maths run vectorised float32 kernels
def test_flips_rotation_and_colour():
    x, _ = _batch(B=64)
    torch.testing.assert_close(Augment({"recipe": "none", "hflip": 1.0}).augment(x, torch.Generator()), x.flip(3))
    torch.testing.assert_close(Augment({"recipe": "none", "vflip": 1.0}).augment(x, torch.Generator()), x.flip(2))
    which = torch.rand(64, generator=torch.Generator().manual_seed(0)) < 0.5
    out = flip(x, which, 3)
    assert all(torch.equal(out[i], x[i].flip(2) if which[i] else x[i]) for i in range(64))
    # rotation by exactly 90 degrees lands pixel centres on pixel centres (up to float32 rounding of coordinates
    # of size H and of the 4-tap bilinear sum of [0, 1] pixels): equals rot90
    H = x.shape[-1]
    torch.testing.assert_close(rotate(x, torch.full((64,), 90.0)), torch.rot90(x, 1, (2, 3)),
                               atol=rounding_tol(4, H), rtol=0)
    torch.testing.assert_close(rotate(x, torch.zeros(64)), x, atol=rounding_tol(4, H), rtol=0)
    # brightness: one factor per sample within [1-b, 1+b]
    xs = x * 0.5
    b = Augment({"recipe": "none", "brightness": 0.3}).augment(xs, torch.Generator().manual_seed(2))
    ratio = (b / xs).flatten(1)
    assert torch.allclose(ratio, ratio[:, :1], atol=1e-5)
    assert ratio.min() >= 0.7 - 1e-6 and ratio.max() <= 1.3 + 1e-6 and ratio[:, 0].std() > 0.05
    # contrast keeps the grey mean of every image (no clipping at these values)
    from fedleak.defenses.data import grey

    xc = 0.4 + 0.2 * x
    c = Augment({"recipe": "none", "contrast": 0.5}).augment(xc, torch.Generator().manual_seed(2))
    torch.testing.assert_close(grey(c).mean((1, 2, 3)), grey(xc).mean((1, 2, 3)), atol=1e-5, rtol=0)


def test_augment_recipe_reaches_the_model_and_unknown_params_fail():
    x, y = _batch()
    seen, calls, _, norm = _run_local(Augment({"recipe": "fedmia"}), x, y)
    for got, c in zip(seen, calls):
        torch.testing.assert_close(got, norm(c["out_x"]))
        assert not torch.allclose(c["out_x"], c["x"])
        assert c["out_x"].min() >= 0 and c["out_x"].max() <= 1
    with pytest.raises(ConfigError, match="unknown parameter.*allowed: brightness"):
        Augment({"shear": 3})


# --------------------------------------------------------------------------------------------- sampling

def _seen_rows(defense, rounds, cfg):
    """Run the engine; return the set of train rows the model saw in each round, per client."""
    from fedleak.fl.federation import build_federation

    fed = build_federation(cfg)
    xs = fed.data.train.x.flatten(1)
    seen = {}
    orig = defense.transform_batch
    state = {}

    def tb(xb, yb, nc, gen):
        rows = [int(torch.nonzero((xs == r).all(1))[0]) for r in xb.flatten(1)]
        seen.setdefault(state["key"], set()).update(rows)
        return orig(xb, yb, nc, gen)

    defense.transform_batch = tb
    from fedleak.fl.local import local_update as lu
    from fedleak.seeding import Purpose, np_rng, torch_gen

    params = {n: p.detach().clone() for n, p in fed.model.named_parameters()}
    for r in range(rounds):
        for k in range(cfg.partition.num_clients):
            state["key"] = (r, k)
            idx = defense.select_data(fed.clients[k], r, np_rng(cfg.seed, Purpose.DATA_SELECT, r, k))
            it = torch.as_tensor(idx)
            lu(fed.model, params, fed.data.train.x[it], fed.data.train.y[it], fl=cfg.fl, lr=0.1,
               num_classes=fed.data.num_classes, normalize=fed.data.normalize, defense=defense,
               gen=torch_gen(cfg.seed, Purpose.LOCAL, r, k))
    return fed, seen


@pytest.mark.parametrize("mode", ["per-round", "fixed"])
def test_sampling_trains_on_a_fraction_p(mode):
    cfg = tiny_config(fl__local_epochs=2, defense={"name": "sampling", "params": {"p": 0.3, "mode": mode}})
    d = build_defense(cfg.defense, cfg)
    fed, seen = _seen_rows(d, 3, cfg)
    for k, own in enumerate(fed.clients):
        subsets = [seen[(r, k)] for r in range(3)]
        for s in subsets:
            assert len(s) == int(0.3 * len(own)) and s <= set(own.tolist())
        if mode == "fixed":
            assert subsets[0] == subsets[1] == subsets[2]
        else:
            assert subsets[0] != subsets[1]


def test_sampling_subset_size_floor_and_at_least_one():
    s = Sampling({"p": 0.01})
    out = s.select_data(np.arange(50), 0, np.random.default_rng(0))
    assert len(out) == 1  # the original would silently train on everything here
    with pytest.raises(ConfigError):
        Sampling({"p": 0.0})


def test_augment_plus_sampling_applies_both():
    d = augment_sampling({"p": 0.5, "mode": "fixed", "recipe": "flip", "hflip": 1.0}, tiny_config())
    out = d.select_data(np.arange(40), 0, np.random.default_rng(0))
    assert len(out) == 20
    x, y = _batch()
    xa, ya = d.transform_batch(x, y, 5, torch.Generator())
    torch.testing.assert_close(xa, x.flip(3))
    nested = augment_sampling({"augment": {"recipe": "none", "vflip": 1.0}, "sampling": {"p": 0.25}}, None)
    assert len(nested.select_data(np.arange(40), 0, np.random.default_rng(0))) == 10
    with pytest.raises(ConfigError, match="augment\\+sampling.*unknown parameter.*zoom"):
        build_defense(DefenseConfig(name="augment+sampling", params={"zoom": 1}), tiny_config())


# -------------------------------------------------------------------------------------------- instahide

@pytest.mark.numerics
def test_instahide_one_sign_mask_on_the_final_k_mix():
    x, y = _batch(B=32, ncls=5)
    ih = InstaHide({"k": 3, "max_coef": [0.5, 0.65]})
    xo, yo = ih.transform_batch(x, y, 5, torch.Generator().manual_seed(4))
    lam, perms, mask = ih.last["lam"], ih.last["perms"], ih.last["mask"]
    # coefficients: positive, sum to one, largest in [0.5, 0.65]
    assert (lam > 0).all() and torch.allclose(lam.sum(1), torch.ones(32))
    assert (lam.max(1).values >= 0.5).all() and (lam.max(1).values <= 0.65).all()
    assert torch.equal(perms[0], torch.arange(32)) and all(sorted(p.tolist()) == list(range(32)) for p in perms)
    # independent k-sample mix in [-1, 1]
    c = 2 * x.double().numpy() - 1  # the reference mix in float64
    mix = sum(lam[:, j].double().numpy()[:, None, None, None] * c[perms[j].numpy()] for j in range(3))
    enc = 2 * xo.double().numpy() - 1
    tol = rounding_tol(3, 1.0)  # a 3-term float32 mix of values in [-1, 1], mapped to [0, 1] and back
    np.testing.assert_allclose(np.abs(enc), np.abs(mix), rtol=0, atol=tol)
    # signs follow one ±1 mask per encoded image, applied to the final mix
    m = mask.numpy()
    assert set(np.unique(m)) == {-1.0, 1.0} and abs((m < 0).mean() - 0.5) < 0.02
    nz = np.abs(mix) > tol  # signs are only defined where the mix is not within rounding of zero
    np.testing.assert_array_equal(np.sign(enc)[nz], (m * np.sign(mix))[nz])
    # soft labels: the same coefficients on the partners' one-hot labels
    oh = F.one_hot(y, 5).double().numpy()
    np.testing.assert_allclose(yo.numpy(), sum(lam[:, j].double().numpy()[:, None] * oh[perms[j].numpy()]
                                               for j in range(3)), rtol=0, atol=tol)
    assert xo.min() >= 0 and xo.max() <= 1


def test_instahide_reaches_the_model_and_validates():
    x, y = _batch()
    seen, calls, labels, norm = _run_local(InstaHide({"k": 2}), x, y)
    for got, c, lab in zip(seen, calls, labels):
        torch.testing.assert_close(got, norm(c["out_x"]))
        assert lab.dtype.is_floating_point
    with pytest.raises(ConfigError, match="max_coef"):
        InstaHide({"k": 4, "max_coef": [0.1, 0.2]})
