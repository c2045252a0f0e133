"""Soteria with ``jacobian="sketch"``: scores from random-probe JVPs, against independent computations.

* the mask is ``prune_mask`` of scores computed directly from ``row_norms_sketch`` with the same probes, and the
  scores match a float64 full Jacobian times the same (explicitly drawn) probes;
* on a diagonal map every Jacobian row has one non-zero entry, so Rademacher probes give the exact norms;
* with many Gaussian probes, the mask agrees with the exact mask outside a band around the threshold whose width
  follows from Chernoff bounds on ``χ²_m / m`` (union bound over all entries);
* a seed fixes the mask; bad params and the exact-method combination are refused with one line (CLI included);
* ``fedleak invert`` and ``fedleak run`` work end to end with the sketch.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import yaml
from torch import nn
from torch.nn import functional as F

from conftest import DiagModel, SRC, assert_within, longest_sum, rounding_tol, tiny_config
from fedleak.defenses import build_transform
from fedleak.defenses.gradient import GradientContext, Soteria, prune_mask, representation_fn
from fedleak.errors import ConfigError
from fedleak.models.jacobian_sketch import draw_probes, row_norms_sketch

pytestmark = pytest.mark.numerics


class TinySigmoidNet(nn.Module):
    """Two sigmoid convs (so r > 0 and the legacy denominator r + 0.1 > 0), representation 6*4*4 = 96 features."""

    def __init__(self, classes=5):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 6, 5, 2, 2), nn.Sigmoid(), nn.Conv2d(6, 6, 5, 2, 2), nn.Sigmoid())
        self.fc = nn.Linear(96, classes)

    def forward(self, x):
        return self.fc(self.body(x).flatten(1))


def _setup(B=2, seed=0):
    torch.manual_seed(seed)
    model = TinySigmoidNet()
    x = torch.randn(B, 3, 16, 16)
    y = torch.randint(0, 5, (B,))
    loss = F.cross_entropy(model(x), y)
    grads = dict(zip([n for n, _ in model.named_parameters()], torch.autograd.grad(loss, list(model.parameters()))))
    return model, x, y, grads


def _full_jacobian64(model, x):
    """[B, D, n] per-sample Jacobians of fc's input, float64, one sample at a time."""
    m64, x64 = copy.deepcopy(model).double(), x.double()
    f = representation_fn(m64, "fc")
    J = [torch.autograd.functional.jacobian(lambda xb: f(xb[None])[0], x64[b]).flatten(1) for b in range(len(x))]
    return torch.stack(J), f(x64).detach()


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_sketched_mask_is_prune_mask_of_row_norms_sketch_with_the_same_probes(kind):
    model, x, y, grads = _setup()
    m, rate = 16, 40
    out, info = Soteria(rate=rate, jacobian="sketch", probes=m, probe_kind=kind, chunk_size=8)(
        grads, GradientContext(model, x, y), _gen(5))

    # the direct path: representation_fn + row_norms_sketch from the same seed, Soteria's score formula
    f = representation_fn(model, "fc")
    norms = row_norms_sketch(f, x, m, kind, _gen(5), chunk=8)
    r = f(x).detach()
    S = (norms / (r + 0.1)).sum(0)
    keep, _ = prune_mask(S, rate)
    assert torch.equal(info["scores"], S) and torch.equal(info["mask"], keep)
    assert torch.equal(out["fc.weight"], grads["fc.weight"] * keep.to(torch.float32)[None])
    assert all(torch.equal(out[n], grads[n]) for n in grads if n != "fc.weight")

    # independent: float64 full Jacobian times the same probes (drawn one by one from the seed)
    J, r64 = _full_jacobian64(model, x)
    P = draw_probes(m, tuple(x.shape), kind, _gen(5)).double().flatten(2)  # [m, B, n], as drawn in float32
    u = torch.einsum("bdn,kbn->kbd", J, P)
    norms64 = u.square().mean(0).sqrt()  # [B, D]
    # float32 JVP entries: sums over longest_sum terms of the size of |J_ij v_j| (|v_j| ≤ a few, so scale by the
    # largest probe entry); then a mean of m squares and the error of r, as in test_soteria
    vmax = float(P.abs().max())
    u_tol = rounding_tol(longest_sum(model, x), J.abs().sum(-1) * vmax)
    norm_tol = u_tol + rounding_tol(m, norms64)
    r_tol = rounding_tol(longest_sum(model, x), float(r64.abs().max()))
    den = r64 + 0.1
    S64 = (norms64 / den).sum(0)
    S_tol = (norm_tol / den + norms64 * r_tol / den**2).sum(0)
    assert_within(info["scores"], S64, S_tol, "sketched scores vs float64 J·v")


def test_rademacher_sketch_is_exact_on_a_diagonal_map():
    # r = x ⊙ a: row i of the Jacobian is a_i e_i, so (J v)_i² = a_i² for every ±1 probe: one probe is exact
    torch.manual_seed(0)
    model = DiagModel()
    x = torch.rand(2, 1, 3, 4) + 0.1
    y = torch.tensor([0, 2])
    grads = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    for reduction, rate in [("sum", 50), ("per-sample", 30)]:
        ctx = GradientContext(model, x, y)
        _, exact = Soteria(rate=rate, reduction=reduction)(grads, ctx)
        _, sk = Soteria(rate=rate, reduction=reduction, jacobian="sketch", probes=1)(grads, ctx, _gen(1))
        # |a_i| from sqrt(a_i²): one rounding of the square and one of the root
        assert_within(sk["scores"], exact["scores"], rounding_tol(2, exact["scores"].abs()), reduction)
        assert torch.equal(sk["mask"], exact["mask"]), reduction


def _chernoff_t(m: int, delta: float, upper: bool) -> float:
    """The t with Chernoff's bound on P(χ²_m/m ≥ 1+t) (upper) or P(χ²_m/m ≤ 1−t) equal to ``delta``."""
    def bound(t):
        e = t - math.log1p(t) if upper else -t - math.log1p(-t)
        return math.exp(-m / 2 * e)

    lo, hi = 0.0, (50.0 if upper else 1.0 - 1e-12)
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if bound(mid) > delta else (lo, mid)
    return hi


def test_many_gaussian_probes_agree_with_the_exact_mask_outside_a_chi2_band():
    model, x, y, grads = _setup(B=2)
    m, rate = 4096, 60
    ctx = GradientContext(model, x, y)
    _, exact = Soteria(rate=rate)(grads, ctx)
    _, sk = Soteria(rate=rate, jacobian="sketch", probes=m, probe_kind="gaussian")(grads, ctx, _gen(3))
    S, keep_exact, keep_sk = exact["scores"].double(), exact["mask"], sk["mask"]
    B, D = x.shape[0], S.numel()
    # Gaussian probes: each estimate of ‖J_bi‖² is exactly ‖J_bi‖²·χ²_m/m. With probability ≥ 1 − 1e-6 every one
    # of the B·D of them lies within the Chernoff bounds, so every sketched norm (hence every score term, all
    # positive here) is within [lo, hi] times the exact one; widened by float32 rounding of both computations.
    delta = 1e-6 / (2 * B * D)
    slack = rounding_tol(longest_sum(model, x) + m, 1.0)
    lo = math.sqrt(1 - _chernoff_t(m, delta, upper=False)) * (1 - slack)
    hi = math.sqrt(1 + _chernoff_t(m, delta, upper=True)) * (1 + slack)
    # then the percentile τ' (monotone in the order statistics) is within [lo τ, hi τ], and a feature whose exact
    # score is below τ·lo/hi is pruned by both, one above τ·hi/lo kept by both
    tau = float(exact["threshold"])
    sure = (S < tau * lo / hi) | (S > tau * hi / lo)
    assert torch.equal(keep_sk[sure], keep_exact[sure])
    bound = float(sure.double().mean())
    agreement = float((keep_sk == keep_exact).double().mean())
    assert agreement >= bound > 0.5  # the band is narrow enough at m = 4096 for the bound to say something


def test_seeded_sketch_is_deterministic_and_per_sample_masks_each_samples_gradient():
    model, x, y, grads = _setup(B=3)
    ctx = GradientContext(model, x, y)
    sot = Soteria(rate=30, reduction="per-sample", jacobian="sketch", probes=32)
    out1, a = sot(grads, ctx, _gen(11))
    out2, b = sot(grads, ctx, _gen(11))
    _, c = sot(grads, ctx, _gen(12))
    assert torch.equal(a["scores"], b["scores"]) and torch.equal(out1["fc.weight"], out2["fc.weight"])
    assert not torch.equal(a["scores"], c["scores"])  # the probes come from the generator
    # per-sample scores: each row is the direct path's scores of that sample, each mask row its own percentile
    f = representation_fn(model, "fc")
    direct = row_norms_sketch(f, x, 32, "rademacher", _gen(11), chunk=sot.chunk_size or None,
                              memory_budget_mb=sot.memory_budget_mb) / (f(x).detach() + 0.1)
    assert torch.equal(a["scores"], direct)
    assert torch.equal(a["mask"], prune_mask(direct, 30)[0])
    # the update: each sample's own fc.weight gradient (1/B of the mean loss) masked by its own mask, in float64
    m64 = copy.deepcopy(model).double()
    expected = torch.zeros_like(grads["fc.weight"], dtype=torch.float64)
    for k in range(3):
        gk = torch.autograd.grad(F.cross_entropy(m64(x[k:k + 1].double()), y[k:k + 1]) / 3, m64.fc.weight)[0]
        expected += gk * a["mask"][k].double()[None]
    tol = rounding_tol(longest_sum(model, x), float(expected.abs().max()))
    assert_within(out1["fc.weight"], expected, tol, "per-sample masked fc.weight")


@pytest.mark.parametrize("params,needle", [
    ({"jacobian": "sketch", "probes": 0}, "probes"),
    ({"jacobian": "sketch", "probes": 65537}, "probes"),
    ({"jacobian": "sketch", "probes": 2.0}, "probes"),
    ({"jacobian": "sketch", "probe_kind": "uniform"}, "probe_kind"),
    ({"jacobian": "bogus"}, "jacobian"),
    ({"jacobian": "sketch", "method": "exact"}, "method='exact' needs the whole Jacobian"),
])
def test_bad_sketch_params_are_one_line_config_errors(params, needle):
    with pytest.raises(ConfigError, match=needle) as err:
        build_transform("soteria", **params)
    assert "\n" not in str(err.value) and str(err.value).startswith("defense 'soteria'")
    with pytest.raises(ValueError, match="whole Jacobian"):
        Soteria(method="exact", jacobian="sketch")


def _cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(SRC), "FEDLEAK_QUIET": "1"}
    return subprocess.run([sys.executable, "-m", "fedleak.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


INVERT = ("invert", "--preset", "dlg", "--dataset", "synthetic", "--iterations", "2", "-q", "--defense", "soteria")


@pytest.mark.parametrize("param,needle", [("probes=0", "'probes' must lie in [1, 65536]"),
                                          ("probe_kind=uniform", "'probe_kind' must be one of"),
                                          ("method=exact", "method='exact' needs the whole Jacobian")])
def test_cli_invert_refuses_bad_sketch_params_in_one_line(tmp_path, param, needle):
    res = _cli(*INVERT, "-o", str(tmp_path / "inv"), "--defense-param", "jacobian=sketch", "--defense-param", param,
               cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.stderr
    assert "Traceback" not in res.stderr


def test_cli_invert_with_sketched_soteria_end_to_end(tmp_path):
    sketch = ("--pruning-rate", "60", "--defense-param", "jacobian=sketch", "--defense-param", "probes=64")
    res = _cli(*INVERT, "-o", str(tmp_path / "inv"), *sketch, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    first = json.loads((tmp_path / "inv" / "metrics.json").read_text())
    rows = first["images"]
    # DLG's LeNet: 768 features; the percentile prunes ⌈0.6·767⌉ = 461 of them when the scores are distinct, fewer
    # only where scores tie at τ (float32 scores: this image gives 460)
    assert len(rows) == 1 and 455 / 768 <= rows[0]["pruned_fraction"] <= math.ceil(0.6 * 767) / 768
    again = _cli(*INVERT, "-o", str(tmp_path / "again"), *sketch, cwd=tmp_path)  # same seed: the same probes
    assert again.returncode == 0, again.stderr
    rows2 = json.loads((tmp_path / "again" / "metrics.json").read_text())["images"]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in rows2] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_fedleak_run_trains_with_sketched_soteria(tmp_path):
    cfg = tiny_config(fl__rounds=2, defense={"name": "soteria", "params": {"jacobian": "sketch", "probes": 8}})
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(json.loads(cfg.model_dump_json())))
    res = _cli("run", str(path), "-o", str(tmp_path / "run"), "-q", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    run = tmp_path / "run"
    saved = yaml.safe_load((run / "config.yaml").read_text())["defense"]
    assert saved["name"] == "soteria" and saved["params"] == {"jacobian": "sketch", "probes": 8}
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert len([m for m in metrics if "round" in m]) >= 2
    assert (run / "final_model.pt").exists() and (run / "signals" / "round_0001.npz").exists()
