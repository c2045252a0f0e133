"""The stacked engine's fast path: a model that is a chain of Flatten / Linear / ReLU layers, trained on all clients
at once with hand-written batched matrix products instead of ``vmap(functional_call)`` and autograd.

:func:`linear_chain` reads the model's forward with ``torch.fx`` and accepts it only when it is such a chain (every
parameter used by exactly one Linear, each node feeding only the next); anything else returns None and the engine
keeps the general vmap path. :class:`ChainNet` then computes, for the m clients still training, with parameters
stacked on a leading client axis ([K, out, in] weights, [K, out] biases), what the loop's forward and autograd
backward compute for each client's batch:

* forward, per Linear: ``z = b + a @ Wᵀ`` (``torch.baddbmm``), per ReLU ``a = max(z, 0)``;
* loss: per-row cross-entropy ``−log_softmax(z)[y]``, per client the weighted sum (1/B on real rows, 0 on a short
  batch's padding rows, see :mod:`fedleak.fl.vectorized`);
* backward: ``∂z = w · (softmax(z) − onehot(y))``; per Linear ``∂W = ∂zᵀ a`` and ``∂b = Σ_rows ∂z`` (written into
  the caller's gradient tensors), ``∂a = ∂z W``; per ReLU ``∂z = ∂a`` where its output is positive, else 0
  (autograd's ``threshold_backward``). The input's gradient is never formed.

These are the same products and sums autograd forms for ``F.linear`` and ``F.cross_entropy``, so float64 agrees
with the loop to ~1e-15 and float32 to rounding (the summation order inside a product may differ). Per step this
is ~3 dispatches per layer forward and ~4 backward, against vmap's and autograd's several dozen.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import nn

_ACTIVATIONS = {torch.relu, nn.functional.relu}


@dataclass(frozen=True)
class Op:
    """One step of the chain: ``kind`` is "flatten", "relu" or "linear" (with the indices of its weight and bias in
    the model's ``named_parameters()`` order; bias None when the layer has none)."""

    kind: str
    weight: int = -1
    bias: int | None = None


_CHAINS: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, list[Op] | None]]" = weakref.WeakKeyDictionary()


def linear_chain(model: nn.Module) -> list[Op] | None:
    """The model's forward as a list of :class:`Op` when it is a Flatten/Linear/ReLU chain, else None (cached per
    model while its forward, modules and parameters keep their names and types: tracing costs milliseconds, a
    round of digits-quick ~40)."""
    key = (
        type(model).forward, tuple((n, type(m)) for n, m in model.named_modules()),
        tuple(n for n, _ in model.named_parameters()),
    )
    hit = _CHAINS.get(model)
    if hit is None or hit[0] != key:
        hit = key, _trace_chain(model)
        _CHAINS[model] = hit
    return hit[1]


def _trace_chain(model: nn.Module) -> list[Op] | None:
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - anything fx cannot trace takes the general path
        return None
    index = {n: i for i, (n, _) in enumerate(model.named_parameters())}
    modules = dict(model.named_modules())
    ops: list[Op] = []
    prev, used, flat = None, set(), False
    for node in graph.nodes:
        if node.op == "placeholder":
            if prev is not None:
                return None
            prev = node
            continue
        if prev is None or len(prev.users) != 1 or not node.args or node.args[0] is not prev:
            return None
        if node.op == "output":
            linear = any(op.kind == "linear" for op in ops)
            return ops if linear and sorted(used) == list(range(len(index))) else None
        op = _op(node, modules, index)
        if op is None or (op.kind == "linear" and not flat):
            return None
        if op.kind == "linear":
            params = [op.weight] if op.bias is None else [op.weight, op.bias]
            if used.intersection(params):
                return None  # a layer applied twice: its gradient would need accumulating
            used.update(params)
        flat = flat or op.kind == "flatten"
        ops.append(op)
        prev = node
    return None


def _op(node: torch.fx.Node, modules: dict[str, nn.Module], index: dict[str, int]) -> Op | None:
    """The :class:`Op` of one fx node (its only tensor input the previous node), or None when not supported."""
    extra = list(node.args[1:]) + list(node.kwargs.items())
    if node.op == "call_module":
        mod = modules[str(node.target)]
        if extra:
            return None
        if isinstance(mod, nn.Flatten) and mod.start_dim == 1 and mod.end_dim == -1:
            return Op("flatten")
        if isinstance(mod, nn.ReLU):
            return Op("relu")
        if type(mod) is nn.Linear:
            prefix = f"{node.target}."
            bias = index[prefix + "bias"] if mod.bias is not None else None
            return Op("linear", index[prefix + "weight"], bias)
        return None
    if node.op == "call_function":
        if node.target in _ACTIVATIONS and all(k == ("inplace", False) or k == ("inplace", True) for k in extra):
            return Op("relu")
        if node.target is torch.flatten and extra in ([1], [("start_dim", 1)]):
            return Op("flatten")
    return None


class ChainNet:
    """Forward, loss and backward of a :func:`linear_chain` model with parameters stacked on a client axis."""

    def __init__(self, ops: list[Op]) -> None:
        self.ops = ops
        first_linear = next(i for i, op in enumerate(ops) if op.kind == "linear")
        self._stop = first_linear  # backward ends at the first Linear: nothing below it has parameters
        self._ones: dict[tuple, torch.Tensor] = {}

    def losses_and_grads(
        self,
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        xb: torch.Tensor,
        yb: torch.Tensor,
        weights: torch.Tensor | float,
        nll: torch.Tensor,
    ) -> None:
        """Writes each row's cross-entropy into ``nll`` [m, B], and the gradients of ``Σ_clients loss`` into
        ``grads`` (tensors shaped like ``params``, the first m clients' rows), for the batch ``xb`` [m, B, ...] with
        labels ``yb`` [m, B, 1]; a client's loss is ``Σ_rows weights · nll``. ``weights``: [m, B, 1] row weights
        (1/count on real rows, 0 on padding) or one float (1/B: every row real)."""
        acts = [xb]  # acts[i] is op i's input, acts[i + 1] its output
        for i, op in enumerate(self.ops):
            acts.append(self._forward(op, acts[-1], params, fresh=i > self._stop))
        logp = torch.log_softmax(acts[-1], dim=2)
        torch.gather(logp, 2, yb, out=nll.unsqueeze(2)).neg_()
        g = logp.exp_()  # softmax, in place of logp
        g.scatter_add_(2, yb, self._minus_one(yb.shape, g))
        g.mul_(weights)
        for i in range(len(self.ops) - 1, self._stop - 1, -1):
            g = self._backward(self.ops[i], g, acts[i], acts[i + 1], params, grads, last=i == self._stop)

    def _minus_one(self, shape: torch.Size, like: torch.Tensor) -> torch.Tensor:
        key = (tuple(shape), like.dtype, like.device)
        if key not in self._ones:
            self._ones[key] = torch.full(shape, -1.0, dtype=like.dtype, device=like.device)
        return self._ones[key]

    @staticmethod
    def _forward(op: Op, a: torch.Tensor, params: list[torch.Tensor], fresh: bool) -> torch.Tensor:
        if op.kind == "flatten":
            return a.flatten(2)
        if op.kind == "relu":
            return torch.relu_(a) if fresh else torch.relu(a)  # in place on a Linear's own output only
        w = params[op.weight]
        if op.bias is None:
            return torch.bmm(a, w.transpose(1, 2))
        return torch.baddbmm(params[op.bias].unsqueeze(1), a, w.transpose(1, 2))

    @staticmethod
    def _backward(
        op: Op, g: torch.Tensor, a_in: torch.Tensor, a_out: torch.Tensor, params: list[torch.Tensor],
        grads: list[torch.Tensor], last: bool,
    ) -> torch.Tensor:
        """The gradient w.r.t. the op's input, given ``g`` w.r.t. its output (parameter gradients into ``grads``)."""
        if op.kind == "flatten":
            return g.view(a_in.shape)
        if op.kind == "relu":
            return torch.ops.aten.threshold_backward(g, a_out, 0)
        torch.bmm(g.transpose(1, 2), a_in, out=grads[op.weight])
        if op.bias is not None:
            torch.sum(g, 1, out=grads[op.bias])
        return g if last else torch.bmm(g, params[op.weight])


__all__ = ["ChainNet", "Op", "linear_chain"]
