"""Vectorised local training: all K participating clients of a round as one batched computation.

:func:`local_updates_vectorized` computes, for every client k, what
``fedleak.fl.local.local_update(model, global_params, xs[k], ys[k], gen=gens[k], defense=<no-op>)`` computes
(same data order, same batches, same loss, same optimizer), but with the K models' parameters stacked on a
leading client axis. Each step is one forward over the per-client batches and one backward, either by the fast path
for a model that is a chain of Flatten/Linear/ReLU layers (:mod:`fedleak.fl.vectorized_chain`: batched matrix
products and a hand-written backward) or, for any other model, by one ``torch.func.vmap(functional_call)`` forward
and ordinary autograd through it; then one element-wise optimizer step over the stacked tensors
(:mod:`fedleak.fl.vectorized_optim`). The model's own parameters are not touched (``local_update`` leaves the
last client's weights in it). Device-agnostic by construction (tested on the CPU only). On a CPU the clients are
stacked in groups that fit ``CPU_GROUP_BYTES`` (one group of all of them elsewhere), one group after another; when
and how to stack is :mod:`fedleak.fl.vectorized_policy`.

Agreement with the loop (``tests/fl/test_vectorized.py``, ``tests/fl/test_vectorized_chain.py``): in float64 to
~1e-15. In float32 every step agrees to rounding, but over many steps a ReLU network can meet a unit whose
pre-activation lies within rounding of 0; the two engines may then take different sides of the kink and drift
apart, exactly as the loop itself does between two builds or CPUs (seen on random-label MNIST: 4e-2 after 79
steps, float32 loop vs float64 loop 8e-2). Equal attack metrics are therefore to be expected within run-to-run
tolerance, not bit for bit.

Speed: on a CPU the general path pays for small models and batches only, the fast path up to larger steps (see
:mod:`fedleak.fl.vectorized_policy`, ``benchmarks/training.py``).

Unequal shard sizes, without padding clients that are done: client k takes ``T_k = epochs * ceil(n_k / B)``
steps. Clients are ordered by ``T_k`` (descending), so at global step t the clients still training are a prefix
``0..m_t-1`` of the stacked tensors and step t works on that prefix (views): a finished client's parameters and
optimizer state are simply not touched (no weight decay, no momentum, no Adam step). Within a step, a client whose
batch is short (the last partial batch of an epoch, or a shard smaller than one batch) has its batch padded with
copies of its own first row carrying weight 0, and its loss is the mean over its valid rows. Client k's t-th step
is its own t-th batch whatever the others do, so each client's computation is exactly the loop's.

Data order: each client's permutations for all epochs are drawn from its own generator up front
(``torch.randperm(n_k, generator=gens[k])`` once per epoch, exactly the loop's draws), so the generators end in
the loop's state. ``normalize`` must be per sample (the datasets' per-channel affine map is): it is applied once to
all rows when they are used in several epochs, else to each step's gathered batch of all clients ([m * B, C, H, W]),
either way what the loop's normalising of each client's batch gives, bit for bit. Labels and padding weights of
every step are gathered before the first step; each row's loss is kept and reduced to the per-step means at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from fedleak.config import FLConfig
from fedleak.fl.local import ParamDict, _diverged
from fedleak.fl.vectorized_chain import ChainNet, Op, linear_chain
from fedleak.fl.vectorized_optim import StackedOptimizer, make_stacked_optimizer
from fedleak.fl.vectorized_policy import group_size

@dataclass
class BatchPlan:
    """Which rows every client uses at every step, clients in descending order of their step count.

    ``rows[t, j, :]`` indexes the concatenated data for the j-th client (in ``order``) at step t; it is valid
    for ``j < active[t]`` only. ``count[t, j]`` of its ``width`` rows are real, the rest copies of row 0.
    """

    order: list[int]  # order[j] = original index of the j-th stacked client
    steps: list[int]  # steps[j] = T of the j-th stacked client
    rows: torch.Tensor  # [T, K, width] int64
    count: torch.Tensor  # [T, K] rows that are real
    active: list[int]  # clients still training at step t (a prefix)
    full: list[bool]  # every active client has `width` real rows at step t
    width: int


def batch_plan(sizes: list[int], gens: list[torch.Generator], epochs: int, batch_size: int) -> BatchPlan:
    """Draw every client's permutations (``epochs`` draws of ``randperm(n_k)``) and lay out the batches."""
    K = len(sizes)
    per_epoch = [math.ceil(n / batch_size) for n in sizes]
    order = sorted(range(K), key=lambda k: -per_epoch[k])  # stable: ties keep client order
    steps = [epochs * per_epoch[k] for k in order]
    T = steps[0] if K else 0
    width = min(batch_size, max(sizes, default=0))
    offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    rows = torch.zeros((T, K, max(width, 1)), dtype=torch.long)
    count = torch.zeros((T, K), dtype=torch.long)
    for k in range(K):  # the draws, in each client's own stream
        perms = [torch.randperm(sizes[k], generator=gens[k]) for _ in range(epochs)]
        j = order.index(k)
        if steps[j]:
            rows[: steps[j], j], count[: steps[j], j] = _client_rows(perms, per_epoch[k], width, offsets[k])
    active = [sum(1 for s in steps if s > t) for t in range(T)]
    inactive = torch.arange(K) >= torch.tensor(active, dtype=torch.long).view(-1, 1)  # [T, K]
    full = ((count == width) | inactive).all(1).tolist()
    return BatchPlan(order, steps, rows, count, active, full, width)


def _client_rows(perms: list[torch.Tensor], n_steps: int, width: int, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One client's [epochs * n_steps, width] row indices (short batches padded with their first row)."""
    n = len(perms[0])
    padded = torch.full((len(perms), n_steps * width), -1, dtype=torch.long)
    for e, p in enumerate(perms):
        # the loop's batches are perm[s*B:(s+1)*B]; width == B unless every shard is smaller than one batch
        padded[e, :n] = p
    padded = padded.view(-1, width)
    valid = padded >= 0
    padded = torch.where(valid, padded, padded[:, :1])
    return padded + offset, valid.sum(1)


class _StackedModel:
    """The model applied with K stacked parameter sets (vmap over functional_call), gradients by autograd."""

    def __init__(self, model: nn.Module, names: list[str], stacked: list[torch.Tensor]) -> None:
        self.names, self.stacked = names, stacked
        self._vf = vmap(lambda p, x: functional_call(model, p, (x,)))
        self._leaves: dict[int, list[torch.Tensor]] = {}

    def forget_leaves(self) -> None:
        self._leaves.clear()

    def leaves(self, m: int) -> list[torch.Tensor]:
        """Leaf tensors sharing storage with the first m rows of ``stacked`` (cached: the optimizer updates
        ``stacked`` in place without autograd, so the same leaves see the new values)."""
        if m not in self._leaves:
            self._leaves[m] = [s[:m].detach().requires_grad_() for s in self.stacked]
        return self._leaves[m]

    def losses_and_grads(
        self, m: int, xb: torch.Tensor, yb: torch.Tensor, weights: torch.Tensor | None, nll: torch.Tensor
    ) -> list[torch.Tensor]:
        """The gradients of the clients' mean cross-entropy w.r.t. the first m clients' parameters; each row's
        cross-entropy into ``nll`` [m, W]. ``yb`` [m, W, 1] labels; ``weights`` [m, W, 1] (None: all rows real)
        is 1/count on real rows and 0 on padding."""
        leaves = self.leaves(m)
        with torch.enable_grad():
            logits = self._vf(dict(zip(self.names, leaves)), xb)  # [m, W, C]
            ce = F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="none").view(nll.shape)
            loss = ce.mean(1) if weights is None else (ce * weights.squeeze(2)).sum(1)
            grads = torch.autograd.grad(loss.sum(), leaves)
        nll.copy_(ce.detach())
        return list(grads)


class _ChainModel:
    """The fast path (:mod:`fedleak.fl.vectorized_chain`): a Flatten/Linear/ReLU chain by batched matrix products,
    gradients written into buffers allocated once per round."""

    def __init__(self, ops: list[Op], stacked: list[torch.Tensor]) -> None:
        self.net, self.stacked = ChainNet(ops), stacked
        self.grads = [torch.empty_like(s, memory_format=torch.contiguous_format) for s in stacked]
        self._rows: dict[int, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}

    def forget_leaves(self) -> None:
        self._rows.clear()

    def losses_and_grads(
        self, m: int, xb: torch.Tensor, yb: torch.Tensor, weights: torch.Tensor | None, nll: torch.Tensor
    ) -> list[torch.Tensor]:
        if m not in self._rows:
            self._rows[m] = ([s[:m] for s in self.stacked], [g[:m] for g in self.grads])
        params, grads = self._rows[m]
        with torch.no_grad():
            self.net.losses_and_grads(params, grads, xb, yb, 1.0 / yb.shape[1] if weights is None else weights, nll)
        return grads


def local_updates_vectorized(
    model: nn.Module,
    global_params: ParamDict,
    xs: list[torch.Tensor],
    ys: list[torch.Tensor],
    gens: list[torch.Generator],
    *,
    fl: FLConfig,
    lr: float,
    num_classes: int,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    opt_states: list[dict[str, Any] | None] | None = None,
    wheres: list[str] | None = None,
) -> tuple[list[ParamDict], list[float], list[dict[str, Any] | None]]:
    """Every client's ``local_update`` with the no-op defense, as one batched computation.

    ``xs[k]`` (pixel space, [n_k, C, H, W]), ``ys[k]`` (int labels [n_k]) and ``gens[k]`` are client k's data and
    local random stream; ``opt_states[k]`` its carried optimizer state (a torch.optim ``state_dict``, or None;
    used only when ``fl.fresh_optimizer`` is false). Returns per client, in the given order: its local
    parameters, its mean training loss (nan when it has no data), and its optimizer state in torch.optim's
    ``state_dict`` format (None when ``fl.fresh_optimizer``). ``num_classes`` is unused (hard labels); it is
    kept so the signature matches ``local_update``. The first client (in the given order) whose loss or final
    parameters are not finite raises :class:`~fedleak.fl.local.TrainingDiverged`, as the loop would.
    """
    K = len(xs)
    if not (len(ys) == len(gens) == K) or (wheres is not None and len(wheres) != K):
        raise ValueError(f"local_updates_vectorized: {K} xs but {len(ys)} ys, {len(gens)} generators")
    if K == 0:
        return [], [], []
    g = group_size(model, fl, K, xs[0].device)
    out: tuple[list, list, list] = ([], [], [])
    for a in range(0, K, g):  # groups in order: the first diverging client raises before later ones train
        part = _stacked_updates(
            model, global_params, xs[a : a + g], ys[a : a + g], gens[a : a + g], fl=fl, lr=lr, normalize=normalize,
            opt_states=None if opt_states is None else opt_states[a : a + g],
            wheres=None if wheres is None else wheres[a : a + g],
        )
        for whole, piece in zip(out, part):
            whole.extend(piece)
    return out


def _stacked_updates(
    model: nn.Module,
    global_params: ParamDict,
    xs: list[torch.Tensor],
    ys: list[torch.Tensor],
    gens: list[torch.Generator],
    *,
    fl: FLConfig,
    lr: float,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    opt_states: list[dict[str, Any] | None] | None,
    wheres: list[str] | None,
) -> tuple[list[ParamDict], list[float], list[dict[str, Any] | None]]:
    """:func:`local_updates_vectorized` of one group of clients, stacked."""
    K = len(xs)
    sizes = [int(len(y)) for y in ys]
    plan = batch_plan(sizes, gens, fl.local_epochs, fl.batch_size)
    names = [n for n, _ in model.named_parameters()]
    stacked = [torch.stack([global_params[n].detach()] * K).contiguous() for n in names]
    carried = None if fl.fresh_optimizer or opt_states is None else [opt_states[k] for k in plan.order]
    opt = make_stacked_optimizer(fl, lr, stacked, carried)
    model.train()
    ops = linear_chain(model)
    net = _StackedModel(model, names, stacked) if ops is None else _ChainModel(ops, stacked)
    # normalize is per sample (the dataset's per-channel affine map), so normalising all rows once equals the
    # loop's normalising of each batch, bit for bit; done once where the rows are reused (several epochs), else on
    # each step's batch, which is in cache
    x = torch.cat(xs)
    once = fl.local_epochs > 1
    losses = _train(net, opt, plan, normalize(x) if once else x, torch.cat(ys), (lambda b: b) if once else normalize)
    return _results(plan, names, stacked, opt, losses, wheres, lr, fl)


def _train(
    net: _StackedModel | _ChainModel, opt: StackedOptimizer, plan: BatchPlan, x: torch.Tensor, y: torch.Tensor,
    normalize: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Run every step of ``plan`` on the rows ``x`` (``normalize``: what each step's batch still needs); the
    per-step losses [T, K] (stacked order; rows past a client's T unused). Labels and row weights of every step are
    gathered once, up front, and every row's loss is kept and reduced to the clients' batch means at the end."""
    T, K = plan.rows.shape[:2]
    all_rows, count = plan.rows.to(x.device), plan.count.to(x.device)
    real = torch.arange(plan.width, device=x.device) < count[..., None]
    weights = (real / count.clamp(min=1)[..., None].to(x.dtype)).unsqueeze(3)  # [T, K, width, 1]
    labels = y.index_select(0, all_rows.flatten()).view(*all_rows.shape, 1)  # [T, K, width, 1]
    nll = torch.full(all_rows.shape, float("nan"), dtype=x.dtype, device=x.device)
    sample_shape = x.shape[1:]
    for t in range(T):
        m = plan.active[t]
        xb = normalize(x.index_select(0, all_rows[t, :m].flatten())).view(m, plan.width, *sample_shape)
        grads = net.losses_and_grads(m, xb, labels[t, :m], None if plan.full[t] else weights[t, :m], nll[t, :m])
        if t == 0 and opt.align_layouts(grads):  # state now has the gradients' memory layout
            net.forget_leaves()
        opt.step(grads, m)
    full = torch.tensor(plan.full, device=x.device).view(-1, 1)
    losses = torch.where(full, nll.mean(2), (nll * weights.squeeze(3)).sum(2))  # the loop's mean over a batch
    return losses.to("cpu", torch.float64)


def _results(
    plan: BatchPlan,
    names: list[str],
    stacked: list[torch.Tensor],
    opt: StackedOptimizer,
    losses: torch.Tensor,
    wheres: list[str] | None,
    lr: float,
    fl: FLConfig,
) -> tuple[list[ParamDict], list[float], list[dict[str, Any] | None]]:
    """Unstack in the callers' client order, checking each client for divergence as the loop does."""
    K = len(plan.order)
    params: list[ParamDict] = [{}] * K
    means: list[float] = [float("nan")] * K
    states: list[dict[str, Any] | None] = [None] * K
    slot = {k: j for j, k in enumerate(plan.order)}
    finite = torch.stack([torch.isfinite(s.flatten(1)).all(1) for s in stacked]).cpu()  # [params, K]
    for k in range(K):
        j, where = slot[k], wheres[k] if wheres is not None else ""
        own = losses[: plan.steps[j], j].numpy()
        bad = np.flatnonzero(~np.isfinite(own))
        if bad.size:
            raise _diverged(where, f"the local training loss became {float(own[bad[0]])} at step {bad[0] + 1}", lr)
        odd = [n for n, ok in zip(names, finite[:, j].tolist()) if not ok]
        if odd:
            raise _diverged(where, f"the local model's {odd[0]} became inf/nan", lr)
        params[k] = {n: s[j].clone(memory_format=torch.contiguous_format) for n, s in zip(names, stacked)}
        means[k] = float(np.mean(own)) if own.size else float("nan")
        states[k] = None if fl.fresh_optimizer else opt.state_dict(j, trained=plan.steps[j] > 0)
    return params, means, states


__all__ = ["BatchPlan", "batch_plan", "local_updates_vectorized"]
