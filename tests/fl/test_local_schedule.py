"""The kernel's explicit batch schedule and eval-mode steps (fl/local.local_update ``batches=``, ``train_mode=``):
an explicit schedule equal to the batches the defense would draw gives the same bits; eval-mode steps leave the
running statistics as given and equal hand-written SGD steps in eval mode."""

from __future__ import annotations

import copy

import torch
from torch import nn

from fedleak.config import FLConfig
from fedleak.defenses.base import Defense
from fedleak.fl.local import get_params, load_params, local_update
from fedleak.models.functional import soft_cross_entropy

PLAIN = FLConfig(optimizer="sgd", momentum=0.0, weight_decay=0.0, local_epochs=2, batch_size=3, fresh_optimizer=True)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _bn_mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double()
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    return net


def _data():
    g = torch.Generator().manual_seed(7)
    return torch.randn(8, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g)


def _run(model, start, x, y, **kw):
    return local_update(model, start, x, y, fl=PLAIN, lr=0.1, num_classes=3, normalize=_identity, defense=Defense(),
                        **kw)


def test_explicit_schedule_equal_to_the_drawn_one_gives_the_same_bits():
    model = _bn_mlp(0)
    start = get_params(model)
    x, y = _data()
    drawn, loss_d, _ = _run(model, start, x, y, gen=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)  # the same draws by hand: one randperm per epoch cut into batches of 3
    plan = [p[s : s + 3] for p in (torch.randperm(8, generator=g) for _ in range(2)) for s in range(0, 8, 3)]
    given, loss_g, _ = _run(model, start, x, y, gen=torch.Generator().manual_seed(99), batches=plan)
    assert loss_d == loss_g
    for k in drawn:
        assert torch.equal(drawn[k], given[k]), k


def test_eval_mode_steps_match_hand_sgd_and_keep_running_statistics():
    model = _bn_mlp(1)
    start = get_params(model)
    x, y = _data()
    plan = [torch.tensor([0, 1, 2]), torch.tensor([5, 6]), torch.tensor([7, 0, 3])]
    out, _, _ = _run(model, start, x, y, gen=torch.Generator(), batches=plan, train_mode=False)
    ref = copy.deepcopy(model).eval()  # plain SGD written out from the start state, running statistics fixed
    load_params(ref, start)
    for idx in plan:
        ref.zero_grad()
        soft_cross_entropy(ref(x[idx]), y[idx]).backward()
        with torch.no_grad():
            for p in ref.parameters():
                p -= 0.1 * p.grad
    for k, v in ref.state_dict().items():
        # float64, a few short sums: the same operations up to the optimizer's fused form
        assert torch.allclose(out[k].to(v.dtype), v, rtol=0, atol=1e-13), k
    for k in ("1.running_mean", "1.running_var", "1.num_batches_tracked"):
        assert torch.equal(out[k], start[k]), k
    trained, _, _ = _run(model, start, x, y, gen=torch.Generator(), batches=plan)  # train mode: they move
    assert not torch.equal(trained["1.running_mean"], start["1.running_mean"])
    assert int(trained["1.num_batches_tracked"]) == len(plan)
