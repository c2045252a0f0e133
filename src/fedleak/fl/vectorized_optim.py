"""Element-wise optimizers over parameters stacked on a leading client axis ([K, ...] tensors).

Each update is the algorithm of torch.optim's documentation, applied to all K clients at once; since every
operation is element-wise, this equals K separate optimizers. Only the first ``m`` rows (the clients still
training, see :mod:`fedleak.fl.vectorized`) are read or written by a step: a finished client's parameters,
momentum and Adam moments stay as they are.

* SGD (momentum μ, weight decay λ, dampening 0, no Nesterov):
  g ← g + λθ;  b ← μb + g (b ← g at the first step: a zero buffer gives exactly that);  θ ← θ − γb.
* Adam (β1, β2, ε, L2 weight decay λ, amsgrad off), t = the client's own step count:
  g ← g + λθ;  m ← β1 m + (1−β1) g;  v ← β2 v + (1−β2) g²;  θ ← θ − (γ / (1−β1ᵗ)) · m / (√v / √(1−β2ᵗ) + ε).
* AdamW: as Adam without the L2 term, after the decoupled decay θ ← θ(1 − γλ).

Where every tensor is contiguous (always on the engine's Linear/ReLU fast path) a step is one call of torch's
fused kernel (``torch._fused_sgd_`` / ``_fused_adam_`` / ``_fused_adamw_``, what ``torch.optim``'s ``fused=True``
runs: one pass over each tensor's memory instead of one per operation); Adam only when every client is at the same
step count (always with a fresh optimizer). Otherwise the update is ``torch._foreach_*`` operations in the order
of torch.optim's single-tensor code path (grad.add(param), lerp for m, mul+addcmul for v, √v / √(1−β2ᵗ) + ε then
addcdiv). Either way results agree with torch.optim's default (single-tensor) path to a few float32 ulps per step
(the fused kernels contract multiply-adds) and to ~1e-16 in float64.
States come and go in torch.optim's ``state_dict`` format, so ``fresh_optimizer: false`` runs can carry them.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import numpy as np
import torch

from fedleak.config import FLConfig
from fedleak.fl.local import make_optimizer


def _layout_perm(g: torch.Tensor) -> list[int] | None:
    """The memory order of g's dims 1.. (outermost first), or None when the client dim is not outermost."""
    nd = g.dim()
    if nd <= 2 or g.is_contiguous():
        return list(range(1, nd))
    if any(g.stride(0) < g.stride(d) for d in range(1, nd) if g.shape[d] > 1):
        return None
    return sorted(range(1, nd), key=lambda d: (-g.stride(d), d))


def _in_layout(t: torch.Tensor, perm: list[int]) -> torch.Tensor:
    """A copy of t ([K, ...]) whose dims 1.. are laid out in memory in the order ``perm``."""
    base = torch.empty([t.shape[0], *(t.shape[d] for d in perm)], dtype=t.dtype, device=t.device)
    view = base.permute([0, *(1 + perm.index(d) for d in range(1, t.dim()))])
    return view.copy_(t)


def _same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    return all(a.stride(d) == b.stride(d) for d in range(1, a.dim()) if a.shape[d] > 1)


def _fusable(params: list[torch.Tensor], grads: list[torch.Tensor], *states: list[torch.Tensor]) -> bool:
    """Whether torch's fused optimizer kernels (one pass over each tensor's memory) apply: every tensor dense and
    contiguous, gradients of the parameters' dtype (they walk the tensors as flat arrays)."""
    return all(
        p.is_contiguous() and g.is_contiguous() and g.dtype == p.dtype for p, g in zip(params, grads)
    ) and all(s.is_contiguous() for group in states for s in group)


def _owned(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy with its own storage (a view would save the whole stack with torch.save)."""
    return t.clone(memory_format=torch.contiguous_format)


class StackedOptimizer:
    """Base: parameters ``stacked`` (a list of [K, ...] tensors, updated in place) and per-client state."""

    state_keys: tuple[str, ...] = ()

    def __init__(self, fl: FLConfig, lr: float, stacked: list[torch.Tensor]) -> None:
        self.fl, self.lr, self.stacked = fl, float(lr), stacked
        self.K = stacked[0].shape[0] if stacked else 0
        self.state = {key: [torch.zeros_like(s) for s in stacked] for key in self.state_keys}
        self.loaded = [False] * self.K
        self._views: dict[tuple[str, int], list[torch.Tensor]] = {}

    @functools.cached_property
    def _groups(self) -> list[dict[str, Any]]:
        """torch.optim's own param_groups keys and values, from a template optimizer built when first needed (carried
        state, Adam's defaults): a process's first torch.optim optimizer imports torch._dynamo, ~1 s of start-up."""
        template = make_optimizer([torch.nn.Parameter(s[0].detach().clone()) for s in self.stacked], self.fl, self.lr)
        return template.state_dict()["param_groups"]

    def rows(self, key: str, m: int) -> list[torch.Tensor]:
        """The first m rows of the parameters (``key`` "param") or of a state list (cached views)."""
        if (key, m) not in self._views:
            src = self.stacked if key == "param" else self.state[key]
            self._views[key, m] = [s[:m] for s in src]
        return self._views[key, m]

    def align_layouts(self, grads: list[torch.Tensor]) -> bool:
        """Give parameters and state the gradients' memory layout, so element-wise steps stream through memory
        (e.g. a vmapped linear layer's weight gradient is transposed). True when anything moved."""
        moved = False
        for i, g in enumerate(grads):
            perm = _layout_perm(g)
            if perm is None or _same_layout(self.stacked[i], g):
                continue
            self.stacked[i] = _in_layout(self.stacked[i], perm)
            for key in self.state_keys:
                self.state[key][i] = _in_layout(self.state[key][i], perm)
            moved = True
        if moved:
            self._views.clear()
        return moved

    def load(self, states: list[dict[str, Any] | None]) -> None:
        """Client j's carried torch.optim state_dict (None: a fresh optimizer)."""
        for j, sd in enumerate(states):
            entries = (sd or {}).get("state") or {}
            for i, entry in entries.items():
                if not 0 <= int(i) < len(self.stacked):
                    raise ValueError(f"optimizer state of stacked client {j} names parameter {i} the model lacks")
                self._load_entry(j, int(i), entry)
                self.loaded[j] = True

    def _load_entry(self, j: int, i: int, entry: dict[str, Any]) -> None:
        for key in self.state_keys:
            if key in entry:
                value = torch.as_tensor(entry[key])
                if value.shape != self.stacked[i].shape[1:]:
                    raise ValueError(
                        f"optimizer state '{key}' of parameter {i} has shape {tuple(value.shape)}, "
                        f"the model's is {tuple(self.stacked[i].shape[1:])}"
                    )
                self.state[key][i][j].copy_(value)

    def state_dict(self, j: int, trained: bool) -> dict[str, Any]:
        """Client j's state as torch.optim's ``state_dict()`` would give it after its local training."""
        groups = copy.deepcopy(self._groups)
        if not self.state_keys or not (trained or self.loaded[j]):
            return {"state": {}, "param_groups": groups}
        state = {i: self._entry(j, i) for i in range(len(self.stacked))}
        return {"state": state, "param_groups": groups}

    def _entry(self, j: int, i: int) -> dict[str, Any]:
        return {key: _owned(self.state[key][i][j]) for key in self.state_keys}

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor], m: int) -> None:
        raise NotImplementedError


class StackedSGD(StackedOptimizer):
    def __init__(self, fl: FLConfig, lr: float, stacked: list[torch.Tensor]) -> None:
        self.state_keys = ("momentum_buffer",) if fl.momentum != 0 else ()
        super().__init__(fl, lr, stacked)

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor], m: int) -> None:
        params = self.rows("param", m)
        bufs = self.rows("momentum_buffer", m) if self.fl.momentum != 0 else []
        if _fusable(params, grads, bufs):  # one kernel over every tensor (a zero buffer's first step: b = g)
            torch._fused_sgd_(
                params, grads, bufs, weight_decay=self.fl.weight_decay, momentum=self.fl.momentum, lr=self.lr,
                dampening=0.0, nesterov=False, maximize=False, is_first_step=False,
            )
            return
        if self.fl.weight_decay != 0:
            torch._foreach_add_(grads, params, alpha=self.fl.weight_decay)
        if self.fl.momentum != 0:
            torch._foreach_mul_(bufs, self.fl.momentum)
            torch._foreach_add_(bufs, grads)
            grads = bufs
        torch._foreach_add_(params, grads, alpha=-self.lr)


class StackedAdam(StackedOptimizer):
    """Adam (L2 weight decay) or, with ``decoupled``, AdamW; torch.optim's defaults betas (0.9, 0.999), eps 1e-8."""

    state_keys = ("exp_avg", "exp_avg_sq")

    def __init__(self, fl: FLConfig, lr: float, stacked: list[torch.Tensor], decoupled: bool) -> None:
        super().__init__(fl, lr, stacked)
        group = self._groups[0]
        self.beta1, self.beta2 = (float(b) for b in group["betas"])
        self.eps, self.decoupled = float(group["eps"]), decoupled
        self.steps = np.zeros(self.K, dtype=np.float64)

    def _load_entry(self, j: int, i: int, entry: dict[str, Any]) -> None:
        super()._load_entry(j, i, entry)
        if "step" in entry:
            self.steps[j] = float(entry["step"])

    def _entry(self, j: int, i: int) -> dict[str, Any]:
        return {"step": torch.tensor(float(self.steps[j]), dtype=torch.float32), **super()._entry(j, i)}

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor], m: int) -> None:
        params, wd, lr = self.rows("param", m), self.fl.weight_decay, self.lr
        self.steps[:m] += 1
        exp_avg, exp_avg_sq = self.rows("exp_avg", m), self.rows("exp_avg_sq", m)
        t = self.steps[:m]
        if np.all(t == t[0]) and _fusable(params, grads, exp_avg, exp_avg_sq):
            fused = torch._fused_adamw_ if self.decoupled else torch._fused_adam_
            step = torch.tensor(float(t[0]), dtype=torch.float32, device=params[0].device)
            fused(
                params, grads, exp_avg, exp_avg_sq, [], [step] * len(params), lr=lr, beta1=self.beta1,
                beta2=self.beta2, weight_decay=wd, eps=self.eps, amsgrad=False, maximize=False,
            )
            return
        if wd != 0 and self.decoupled:
            torch._foreach_mul_(params, 1 - lr * wd)
        elif wd != 0:
            torch._foreach_add_(grads, params, alpha=wd)
        torch._foreach_lerp_(exp_avg, grads, 1 - self.beta1)
        torch._foreach_mul_(exp_avg_sq, self.beta2)
        torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1 - self.beta2)
        if np.all(t == t[0]):  # every client at the same step (always so with a fresh optimizer)
            step_size = lr / (1 - self.beta1 ** t[0])
            denom = torch._foreach_sqrt(exp_avg_sq)
            torch._foreach_div_(denom, (1 - self.beta2 ** t[0]) ** 0.5)
            torch._foreach_add_(denom, self.eps)
            torch._foreach_addcdiv_(params, exp_avg, denom, -step_size)
            return
        self._step_per_client(params, exp_avg, exp_avg_sq, t)

    def _step_per_client(self, params, exp_avg, exp_avg_sq, t: np.ndarray) -> None:
        """Carried states with different step counts: per-client bias corrections, broadcast over each row."""
        neg_step = torch.as_tensor(-self.lr / (1 - self.beta1**t))
        bc2_sqrt = torch.as_tensor((1 - self.beta2**t) ** 0.5)
        for p, m1, v in zip(params, exp_avg, exp_avg_sq):
            shape = (len(t),) + (1,) * (p.dim() - 1)
            denom = (v.sqrt() / bc2_sqrt.to(v).view(shape)).add_(self.eps)
            p.add_(m1 / denom * neg_step.to(p).view(shape))


def make_stacked_optimizer(
    fl: FLConfig, lr: float, stacked: list[torch.Tensor], carried: list[dict[str, Any] | None] | None = None
) -> StackedOptimizer:
    """The stacked counterpart of :func:`fedleak.fl.local.make_optimizer`, loaded with ``carried`` states."""
    if fl.optimizer == "sgd":
        opt: StackedOptimizer = StackedSGD(fl, lr, stacked)
    else:
        opt = StackedAdam(fl, lr, stacked, decoupled=fl.optimizer == "adamw")
    if carried is not None:
        opt.load(carried)
    return opt


__all__ = ["StackedOptimizer", "StackedSGD", "StackedAdam", "make_stacked_optimizer"]
