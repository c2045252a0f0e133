"""Gradient inversion: victim/attacker separation, label recovery, costs, optimiser options, FedAvg, adaptive."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fedleak.attacks.inversion import (
    GradientInversion,
    GradientMatcher,
    InversionConfig,
    LocalHyper,
    client_update,
    dlg_config,
    idlg_config,
    infer_labels,
    invert,
    milestones,
    read_out_features,
    reference_cost,
    total_variation,
)
from conftest import assert_within, longest_sum, rounding_tol
from fedleak.defenses.gradient import GradientPruning, Soteria, representation_fn
from fedleak.metrics.image import mse

pytestmark = pytest.mark.numerics  # float32 gradients, costs and optimiser trajectories throughout


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: thread sync costs more than it saves on a busy machine
    yield
    torch.set_num_threads(n)


class Tiny(nn.Module):
    def __init__(self, c=1, classes=5, act=nn.Sigmoid):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, 4, 3, 2, 1), act())
        self.fc = nn.Linear(4 * 4 * 4, classes)

    def forward(self, x):
        return self.fc(self.body(x).flatten(1))


def _tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return Tiny(**kw)


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


def _cost_floor(model):
    """Float32 rounding of a cosine matching cost (O(1) terms summed over the P gradient entries): what "zero" is."""
    return rounding_tol(_n_params(model), 1.0)


# -- victim side ----------------------------------------------------------------------------------------------


def test_server_view_holds_only_update_state_and_declared_side_info():
    model = _tiny()
    x, y = torch.rand(2, 1, 8, 8), torch.tensor([1, 3])
    view, truth = client_update(model, x, y, labels_known=False)
    assert view.side.labels is None and view.side.num_images == 2 and view.side.num_classes == 5
    assert view.kind == "gradient" and view.side.local is None
    m64 = copy.deepcopy(model).double()  # float64 reference gradient
    ref = torch.autograd.grad(F.cross_entropy(m64(x.double()), y), list(m64.parameters()))
    tol = rounding_tol(longest_sum(model, x), max(float(g.abs().max()) for g in ref))
    for (name, p), g in zip(model.named_parameters(), ref):
        assert_within(view.update[name], g, tol, name)
        assert torch.equal(view.params[name], p.detach())
    assert torch.equal(truth.x, x) and torch.equal(truth.y, y)
    known, _ = client_update(model, x, y, labels_known=True)
    assert torch.equal(known.side.labels, y)


def test_fedavg_local_update_equals_a_plain_sgd_loop():
    model = _tiny(1)
    x, y = torch.rand(5, 1, 8, 8), torch.tensor([0, 1, 2, 3, 4])
    local = LocalHyper(steps=4, lr=0.05, batch_size=2)
    view, _ = client_update(model, x, y, local=local)
    assert view.kind == "update"
    # independent: a deep copy trained with torch.optim.SGD on the same batch schedule
    import copy

    ref = copy.deepcopy(model).double()  # in float64
    opt = torch.optim.SGD(ref.parameters(), lr=0.05)
    order = [[0, 1], [2, 3], [4, 0], [1, 2]]  # (t*b + j) mod N
    for idx in order:
        opt.zero_grad()
        F.cross_entropy(ref(x[idx].double()), y[idx]).backward()
        opt.step()
    # float32 local training rounds every step's gradient (longest_sum terms) and every parameter update
    scale = max(float(p.detach().abs().max()) for p in model.parameters())
    tol = rounding_tol(longest_sum(model, x) * len(order), scale)
    for (name, p0), p1 in zip(model.named_parameters(), ref.parameters()):
        assert_within(view.update[name], p0.detach().double() - p1.detach(), tol, name)


# -- labels and closed-form read-out -------------------------------------------------------------------------


@pytest.mark.parametrize("act", [nn.Sigmoid, nn.ReLU])
@pytest.mark.parametrize("method", ["rowsum", "bias"])
def test_idlg_label_equals_true_label(act, method):
    for seed in range(6):
        model = _tiny(seed, act=act)
        for label in range(5):
            x = torch.rand(1, 1, 8, 8)
            view, _ = client_update(model, x, torch.tensor([label]))
            assert int(infer_labels(view.update, model, 1, method)[0]) == label


def test_bias_labels_for_a_batch_with_distinct_labels():
    model = _tiny(3)
    y = torch.tensor([4, 0, 2])
    view, _ = client_update(model, torch.rand(3, 1, 8, 8), y)
    assert sorted(infer_labels(view.update, model, 3, "bias").tolist()) == [0, 2, 4]


def test_closed_form_readout_recovers_representation_and_soteria_mask():
    model = _tiny(2)
    x, y = torch.rand(1, 1, 8, 8), torch.tensor([1])
    r_true = representation_fn(copy.deepcopy(model).double(), "fc")(x.double()).detach()[0]  # float64
    # r = ∂L/∂W_j / ∂L/∂b_j: the float32 gradients' rounding (longest_sum terms) at the features' scale
    tol = rounding_tol(longest_sum(model, x), float(r_true.abs().max()))
    view, _ = client_update(model, x, y)
    ro = read_out_features(view, model)
    assert_within(ro.r[0], r_true, tol, "read-out r")
    assert ro.leaked_fraction == 1.0
    # under Soteria the unpruned features still leak exactly, and the mask is visible
    view, truth = client_update(model, x, y, transform=Soteria(rate=60))
    ro = read_out_features(view, model)
    mask = truth.transform_info["mask"]
    assert torch.equal(ro.known, mask)
    assert_within(ro.r[0][mask], r_true[mask], tol, "read-out r under Soteria")
    assert ro.leaked_fraction == pytest.approx(1 - truth.transform_info["pruned_fraction"])


# -- costs -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cost", ["sim", "simlocal", "l2", "l1"])
@pytest.mark.parametrize("weights", ["equal", "linear", "exp"])
def test_vectorised_cost_equals_per_layer_loop(cost, weights):
    g = torch.Generator().manual_seed(0)
    shapes = {"a.weight": (4, 3), "a.bias": (4,), "b.weight": (2, 4, 3, 3), "b.bias": (2,)}
    target = {k: torch.randn(s, generator=g, dtype=torch.float64) for k, s in shapes.items()}
    dummy = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes.values()]
    m = GradientMatcher(target, cost, weights)
    w = {"equal": [1, 1, 1, 1], "linear": [1, 0.75, 0.5, 0.25],
         "exp": list(np.exp(-np.arange(4.0)))}[weights]
    ref = reference_cost(dummy, list(target.values()), cost, w)
    assert float(m(dummy)) == pytest.approx(float(ref), rel=1e-10)
    if cost in ("sim", "simlocal"):  # cosine costs ignore the scale of the dummy gradient
        assert float(m([3.7 * d for d in dummy])) == pytest.approx(float(ref), rel=1e-10)


def test_cosine_is_scale_invariant_and_l2_exposes_a_loss_scale_mismatch():
    model = _tiny(4)
    x, y = torch.rand(1, 1, 8, 8), torch.tensor([2])
    # the original GS victim used 0.5·CE while the attacker uses CE (inversion.md §2.1)
    view, _ = client_update(model, x, y, loss_fn=lambda z, t: 0.5 * F.cross_entropy(z, t))
    for cost, expect_zero in (("sim", True), ("l2", False)):
        gi = GradientInversion(model, view, InversionConfig(cost=cost, labels="rowsum"))
        c = gi.matching_cost(x, None)
        assert (abs(c) < _cost_floor(model)) == expect_zero, (cost, c)


def test_excluded_layer_is_ignored_and_mask_zeros_masks():
    g = torch.Generator().manual_seed(1)
    target = {"fc.weight": torch.randn(3, 4, generator=g), "fc.bias": torch.randn(3, generator=g),
              "conv.weight": torch.randn(2, 2, generator=g)}
    dummy = {k: torch.randn(v.shape, generator=g) for k, v in target.items()}
    m = GradientMatcher(target, "sim", exclude=["fc.weight"])
    other = dict(target, **{"fc.weight": torch.randn(3, 4, generator=g)})
    assert float(m(dummy)) == pytest.approx(float(GradientMatcher(other, "sim", exclude=["fc.weight"])(dummy)))
    ref = reference_cost([dummy["fc.bias"].double(), dummy["conv.weight"].double()],
                         [target["fc.bias"].double(), target["conv.weight"].double()])  # float64
    assert float(m(dummy)) == pytest.approx(float(ref), abs=rounding_tol(3 + 4, 1.0))  # O(1) cosine terms
    assert GradientMatcher(target, "sim", exclude=["fc"]).names == ["conv.weight"]  # a module name drops both
    with pytest.raises(ValueError, match="matches no parameter"):
        GradientMatcher(target, exclude=["nope"])
    # masked cosine == plain cosine on the non-zero coordinates only
    masked = dict(target, **{"fc.weight": target["fc.weight"] * torch.tensor([1.0, 0.0, 1.0, 0.0])})
    mm = GradientMatcher(masked, "sim", mask_zeros=True)
    keep = torch.cat([v.flatten() for v in masked.values()]) != 0
    t = torch.cat([v.flatten() for v in masked.values()])[keep].double()
    d = torch.cat([dummy[k].flatten() for k in masked])[keep].double()
    assert float(mm(dummy)) == pytest.approx(float(1 - F.cosine_similarity(d, t, 0)), abs=rounding_tol(len(t), 1.0))


def test_total_variation_against_numpy():
    x = torch.rand(2, 3, 5, 6, generator=torch.Generator().manual_seed(0))
    a = x.double().numpy()  # float64 reference
    ref = np.abs(np.diff(a, axis=3)).mean() + np.abs(np.diff(a, axis=2)).mean()
    # float32 means of non-negative terms over the x.numel() differences: relative rounding of that sum
    assert float(total_variation(x)) == pytest.approx(ref, rel=rounding_tol(x.numel(), 1.0))
    dw, dh = np.diff(a, axis=3)[:, :, :-1, :], np.diff(a, axis=2)[:, :, :, :-1]
    iso = np.sqrt(dw**2 + dh**2 + 1e-8).mean()
    assert float(total_variation(x, "iso")) == pytest.approx(iso, rel=rounding_tol(x.numel(), 1.0))


# -- attacks -----------------------------------------------------------------------------------------------------


def test_dlg_recovers_image_and_label_on_a_tiny_model():
    model = _tiny(0)
    x, y = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(7)), torch.tensor([2])
    view, _ = client_update(model, x, y)
    rec = invert(model, view, dlg_config(iterations=25))
    assert rec.label_source == "joint" and rec.labels.tolist() == [2]
    assert float(mse(rec.x, x)) < 1e-4


def test_idlg_uses_analytic_label_and_stops_early():
    model = _tiny(0)
    x, y = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(8)), torch.tensor([4])
    view, _ = client_update(model, x, y)
    rec = invert(model, view, idlg_config(iterations=100))
    assert rec.label_source == "rowsum" and rec.labels.tolist() == [4]
    assert rec.iterations_run < 100  # early stop below 1e-6, checked every iteration
    assert float(mse(rec.x, x)) < 1e-4


def test_joint_labels_are_per_image_and_returned_after_optimisation():
    model = _tiny(5)
    x, y = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(9)), torch.tensor([3, 0])
    view, _ = client_update(model, x, y)
    gi = GradientInversion(model, view, dlg_config(iterations=40))
    gen = torch.Generator().manual_seed(0)  # trial 0 draws x̂ first, then the label logits
    torch.randn(2, 1, 8, 8, generator=gen)
    template = torch.randn(2, 5, generator=gen).argmax(-1)
    assert sorted(template.tolist()) != [0, 3]  # so returning the template (breaching's bug) would fail
    rec = gi.run()
    assert sorted(rec.labels.tolist()) == [0, 3]
    assert rec.score < 1e-3


def test_fedavg_multistep_attack_unrolls_local_steps():
    model = _tiny(6)
    x, y = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(10)), torch.tensor([1, 2])
    local = LocalHyper(steps=3, lr=0.5, batch_size=1)
    view, _ = client_update(model, x, y, local=local, labels_known=True)
    cfg = InversionConfig(cost="l2", optimizer="lbfgs", lr=1.0, iterations=30, schedule="none", signed=False,
                          boxed=False, tv=0.0, labels="known")
    gi = GradientInversion(model, view, cfg)
    # the attacker's unrolled update equals the victim's at the truth: to float32 rounding of the parameters over
    # the local steps, squared and summed over the P entries of the l2 cost
    scale = max(float(p.detach().abs().max()) for p in model.parameters())
    floor = _n_params(model) * rounding_tol(longest_sum(model, x) * local.steps, scale) ** 2
    assert gi.matching_cost(x, None) < floor
    rec = gi.run()
    assert float(mse(rec.x, x).max()) < 1e-3


def _one_step(model, view, **kw):
    base = dict(iterations=1, schedule="none", tv=0.0, boxed=False, labels="known", init="randn", seed=3)
    gi = GradientInversion(model, view, InversionConfig(**{**base, **kw}))
    x0 = gi._init(torch.Generator().manual_seed(3 * 1_000_003)).requires_grad_(True)
    total, _ = gi.objective(x0, None)
    (g,) = torch.autograd.grad(total, x0)
    return x0.detach(), g, gi.run().x


def test_sgd_and_lbfgs_honour_the_learning_rate_and_signed_gradients():
    model = _tiny(7)
    view, _ = client_update(model, torch.rand(1, 1, 8, 8), torch.tensor([1]), labels_known=True)
    # one float32 update x − s: the optimiser may round it differently (e.g. a fused multiply-add), so the two
    # agree to the rounding of a few operations at the scale |x| + |s| (n = 1)
    x0, g, x1 = _one_step(model, view, optimizer="sgd", lr=0.37, momentum=0.0, signed=False)
    assert_within(x1, x0 - 0.37 * g, rounding_tol(1, x0.abs() + 0.37 * g.abs()), "sgd")  # the original: 0.01
    x0, g, x1 = _one_step(model, view, optimizer="sgd", lr=0.05, momentum=0.0, signed=True)
    assert_within(x1, x0 - 0.05 * torch.sign(g), rounding_tol(1, x0.abs() + 0.05), "signed sgd")
    # L-BFGS's first inner step is lr·min(1, 1/‖g‖₁)·(−g): a different lr changes it (the original ignored lr)
    x0, g, xa = _one_step(model, view, optimizer="lbfgs", lr=1e-3, lbfgs_inner=1, signed=False)
    step = 1e-3 * min(1.0, 1.0 / float(g.abs().sum()))
    tol = rounding_tol(1, x0.abs() + step * g.abs())
    assert_within(xa, x0 - step * g, tol, "lbfgs")
    assert ((step * g).abs() > tol).any()  # the step itself is resolved by that tolerance


def test_box_constraint_and_step_schedule():
    assert milestones(24_000) == [9000, 15000, 21000] and all(isinstance(m, int) for m in milestones(24_000))
    model = _tiny(8)
    view, _ = client_update(model, torch.rand(1, 1, 8, 8), torch.tensor([0]), labels_known=True,
                            mean=(0.5,), std=(0.25,))
    rec = invert(model, view, InversionConfig(iterations=8, lr=1.0, tv=0.0, labels="known"))
    assert rec.x.min() >= -2.0 - 1e-6 and rec.x.max() <= 2.0 + 1e-6  # [0,1] pixels in normalised space
    gi = GradientInversion(model, view, InversionConfig(iterations=8, lr=1.0))
    opt = gi._optimizer([torch.zeros(1, requires_grad=True)])
    sched = gi._scheduler(opt)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([1, 1, 1, 0.1, 0.1, 0.01, 0.01, 0.001])  # milestones 3, 5, 7


def test_restarts_pick_the_best_finite_trial(monkeypatch):
    model = _tiny(9)
    view, _ = client_update(model, torch.rand(1, 1, 8, 8), torch.tensor([0]), labels_known=True)
    gi = GradientInversion(model, view, InversionConfig(iterations=1, restarts=4))
    fake = {0: math.inf, 1: 0.5, 2: 0.2, 3: 0.9}  # trial 0 diverged (NaN scored as inf)

    def run_trial(k, progress=None):
        return torch.full((1, 1, 8, 8), float(k)), None, fake[k], [], 1

    monkeypatch.setattr(gi, "run_trial", run_trial)
    rec = gi.run()
    assert rec.best_trial == 2 and rec.score == 0.2 and float(rec.x.mean()) == 2.0
    assert rec.trial_scores == [math.inf, 0.5, 0.2, 0.9]


def test_keep_best_returns_lowest_objective_iterate():
    model = _tiny(10)
    view, _ = client_update(model, torch.rand(1, 1, 8, 8), torch.tensor([3]), labels_known=True)
    cfg = InversionConfig(iterations=15, lr=0.5, schedule="none", tv=0.0, labels="known", keep_best=True,
                          optimizer="sgd", momentum=0.0, signed=True, boxed=False)
    gi = GradientInversion(model, view, cfg)
    rec = gi.run()
    best_logged = min(v for _, v in rec.history)
    assert gi._objective_value(rec.x, None) <= best_logged + _cost_floor(model)


def test_drop_layer_objective_ignores_the_soteria_layer():
    model = _tiny(11)
    x, y = torch.rand(1, 1, 8, 8), torch.tensor([2])
    view, truth = client_update(model, x, y, transform=Soteria(rate=80), labels_known=True)
    full = GradientInversion(model, view, InversionConfig(labels="known"))
    drop = GradientInversion(model, view, InversionConfig(labels="known", exclude=["fc.weight"]))
    assert full.matching_cost(x, None) > 1e-3  # the mask makes the truth look wrong to the plain attack
    assert drop.matching_cost(x, None) < _cost_floor(model)  # ...but not to the adaptive one


def test_pruning_and_soteria_apply_to_fedavg_updates():
    model = _tiny(12)
    x, y = torch.rand(3, 1, 8, 8), torch.tensor([0, 1, 2])
    view, truth = client_update(model, x, y, transform=GradientPruning(rate=50), local=LocalHyper(2, 0.1))
    assert truth.transform_info["pruned_fraction"] == pytest.approx(0.5, abs=0.02)
    view, truth = client_update(model, x, y, transform=Soteria(rate=50), local=LocalHyper(2, 0.1))
    assert (view.update["fc.weight"][:, ~truth.transform_info["mask"]] == 0).all()


# -- many one-image attacks optimised together --------------------------------------------------------------


def _views(n, transform=None, labels_known=True, seed=13):
    model = _tiny(seed)
    g = torch.Generator().manual_seed(seed)
    xs = torch.rand(n, 1, 8, 8, generator=g)
    ys = torch.tensor([0, 3, 1, 4][:n])
    views = [client_update(model, xs[i : i + 1], ys[i : i + 1], transform=transform, labels_known=labels_known,
                           mean=(0.5,), std=(0.25,))[0] for i in range(n)]
    return model, views


@pytest.mark.parametrize("case", ["adam-sim-tv-box", "sgd-joint-weighted-masked"])
def test_parallel_attacks_equal_one_by_one(case):
    from fedleak.attacks.inversion.parallel import ParallelInversion

    if case == "adam-sim-tv-box":
        model, views = _views(3)
        cfg = InversionConfig(iterations=6, lr=0.05, signed=False, tv=1e-2, boxed=True, labels="known",
                              keep_best=True)
    else:
        model, views = _views(3, transform=GradientPruning(rate=30), labels_known=False)
        cfg = InversionConfig(iterations=5, optimizer="sgd", lr=0.01, momentum=0.9, signed=False, boxed=False,
                              tv=0.0, cost="simlocal", layer_weights="linear", exclude=["fc.weight"],
                              mask_zeros=True, labels="joint", restarts=2, schedule="cosine")
    seeds = [11, 12, 13]
    par = ParallelInversion(model, views, cfg, seeds=seeds).run()
    # batched and one-by-one float32 runs may use other kernels: every iteration's step carries a gradient rounded
    # over longest_sum terms and rewrites x at its own scale, and those errors add up over the iterations
    n = longest_sum(model, torch.zeros(1, 1, 8, 8)) * cfg.iterations * cfg.restarts
    for v, s, rp in zip(views, seeds, par):
        rs = GradientInversion(model, v, cfg.model_copy(update={"seed": s})).run()
        assert_within(rp.x, rs.x, rounding_tol(n, float(rs.x.abs().max())), f"seed {s}")
        assert rp.best_trial == rs.best_trial and rp.labels.tolist() == rs.labels.tolist()
        assert rp.trial_scores == pytest.approx(rs.trial_scores, rel=rounding_tol(n, 1.0))
        assert [h[0] for h in rp.history] == [h[0] for h in rs.history]


def test_parallel_rejects_lbfgs_and_mixed_models():
    from fedleak.attacks.inversion.parallel import ParallelInversion

    model, views = _views(2)
    with pytest.raises(ValueError, match="Adam/SGD"):
        ParallelInversion(model, views, dlg_config())
    other = client_update(_tiny(99), torch.rand(1, 1, 8, 8), torch.tensor([1]), labels_known=True)[0]
    with pytest.raises(ValueError, match="same model state"):
        ParallelInversion(model, [views[0], other], InversionConfig(labels="known"))
