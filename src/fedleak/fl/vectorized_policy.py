"""When the stacked engine (:mod:`fedleak.fl.vectorized`) may and should train a round's clients, and how many it
stacks at once on a CPU: ``fl.vectorize`` (auto | on | off) resolved for a model, a defense and a device."""

from __future__ import annotations

import math

import torch
from torch import nn

from fedleak.config import FLConfig
from fedleak.defenses.base import Defense
from fedleak.defenses.data import Compose
from fedleak.fl.vectorized_chain import linear_chain

_RANDOM_MODULES = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)


def supports_vectorized(model: nn.Module, defense: Defense | None = None) -> tuple[bool, str]:
    """(True, "") when :func:`local_updates_vectorized` reproduces ``local_update`` for this model and defense,
    else (False, the reason to log once before falling back to the per-client loop)."""
    for name, mod in model.named_modules():
        if isinstance(mod, _RANDOM_MODULES) or "dropout" in type(mod).__name__.lower():
            kind = type(mod).__name__
            return False, f"module {name or kind} ({kind}) is random or has running statistics"
    buffers = [n for n, _ in model.named_buffers()]
    if buffers:
        return False, f"the model has buffers ({buffers[0]}), which training may update"
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    if frozen:
        return False, f"parameter {frozen[0]} is frozen (requires_grad=False)"
    if defense is not None:
        odd = local_training_hooks(defense)
        if odd:
            return False, f"defense '{defense.name}' changes local training ({odd})"
    return True, ""


#: On a CPU, the general (vmap) path pays only for small per-step work: with more, the loop's per-client working set
#: stays in cache while the stacked one does not, and its matmuls are no less efficient. Measured with
#: benchmarks/training.py (2-core AMD EPYC, torch 2.13, one thread) before the Linear/ReLU fast path existed, when
#: MLPs took the vmap path too: digits-quick's MLP (1.0 MFLOP per client step, 0.5 M stacked parameters) 2.6x
#: faster; MNIST-sized MLP (4.7 MFLOP, 2.4 M) 0.87x; LeNet on 28x28, batch 10 (8.3 MFLOP) 1.4x, batch 64 0.73x.
#: A Linear/ReLU chain (the fast path, in client groups, so with no limit on the stacked parameters) was faster
#: than the loop up to 60 MFLOP per client step: digits-quick 5.5x, MNIST-sized MLP 1.4-1.6x at batch 32 and 64,
#: 1.2x at batch 128 (60 MFLOP), an MLP 64-2048-1024-10 at batch 8 (36 MFLOP) 1.4x; as fast at 474 MFLOP
#: (784-2048-1024-10, batch 64: 0.95x).
CPU_MAX_STEP_FLOPS = 2e6  # forward FLOPs of one client's batch
CPU_MAX_STACKED_PARAMS = 2**21  # clients x parameters
CPU_MAX_CHAIN_STEP_FLOPS = 64e6  # the same for a Linear/ReLU chain


def vectorize_worthwhile(
    model: nn.Module, input_shape: tuple[int, ...], batch_size: int, n_clients: int, device: str | torch.device = "cpu"
) -> tuple[bool, str]:
    """Whether ``fl.vectorize: auto`` should vectorise (True off the CPU), else the reason it does not. A
    Linear/ReLU chain (the fast path) has its own step limit and no stacked-parameter limit (it trains in groups)."""
    if n_clients < 2:
        return False, "a single client"
    if torch.device(device).type != "cpu":
        return True, ""
    chain = linear_chain(model) is not None
    stacked = n_clients * sum(p.numel() for p in model.parameters())
    if not chain and stacked > CPU_MAX_STACKED_PARAMS:
        return False, f"{stacked:,} stacked parameters are more than a CPU handles faster than the loop"
    flops = forward_flops(model, input_shape) * batch_size
    if flops > (CPU_MAX_CHAIN_STEP_FLOPS if chain else CPU_MAX_STEP_FLOPS):
        return False, f"a client's step ({flops / 1e6:.1f} MFLOP) is large enough for the loop to be as fast on a CPU"
    return True, ""


def forward_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one sample's forward through the model's Linear and convolution layers (2 per multiply-add, biases
    not counted): what ``torch.utils.flop_counter.FlopCounterMode`` counts for these layers (tests compare the two
    on every zoo model), from forward hooks. FlopCounterMode's first use loads torch's decomposition tables, about
    1 s of a fresh process's start-up, for a threshold decision; a model whose forward multiplies matrices outside
    these layers is under-counted here."""
    total = 0

    def count(mod: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(mod, nn.Linear):
            total += 2 * out.numel() * mod.in_features
        else:
            total += 2 * out.numel() * (mod.in_channels // mod.groups) * math.prod(mod.kernel_size)

    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    handles = [m.register_forward_hook(count) for m in layers]
    p = next(model.parameters())
    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), dtype=p.dtype, device=p.device))
    finally:
        for h in handles:
            h.remove()
    return total


def resolve_vectorize(
    mode: str, model: nn.Module, defense: Defense, input_shape: tuple[int, ...], batch_size: int, n_clients: int,
    device: str | torch.device = "cpu",
) -> tuple[bool, str]:
    """``fl.vectorize`` (auto | on | off) for this run: (vectorise?, a line to log once, or "").
    ``on`` falls back to the per-client loop only where vectorising would change the results."""
    if mode == "off":
        return False, ""
    ok, why = supports_vectorized(model, defense)
    if not ok:
        return False, f"fl.vectorize={mode}: training the clients one by one, since {why}"
    if mode == "on":
        return True, ""
    worth, why = vectorize_worthwhile(model, input_shape, batch_size, n_clients, device)
    return worth, "" if worth else f"fl.vectorize=auto: training the clients one by one ({why})"


def local_training_hooks(defense: Defense) -> str:
    """Which of ``defense``'s local-training hooks are not the identity ("" when none is)."""
    if isinstance(defense, Compose):
        return ", ".join(filter(None, (local_training_hooks(d) for d in defense.parts)))
    hooks = ("local_batches", "transform_batch", "training_step")
    return ", ".join(h for h in hooks if getattr(type(defense), h) is not getattr(Defense, h))


#: On a CPU the clients are stacked in groups whose parameters, gradients and optimizer state take at most this
#: many bytes together: a larger stack streams every client's weights through memory at every step, while a
#: group's stay in cache from one step to the next. Measured with benchmarks/training.py (2-core AMD EPYC,
#: torch 2.13, one thread, SGD momentum): MNIST-sized MLP (2.8 MB per client), 10 clients, batch 32: groups of 1,
#: 2, 5, 10 clients 1.49x, 1.58x, 1.27x, 1.21x the loop's speed; batch 64: 1.31x, 1.37x, 1.09x, 1.10x.
#: digits-quick's MLP (0.6 MB per client) stays one group of 10.
CPU_GROUP_BYTES = 8 * 2**20


def group_size(model: nn.Module, fl: FLConfig, n_clients: int, device: str | torch.device = "cpu") -> int:
    """How many clients :func:`local_updates_vectorized` stacks at once (all of them off the CPU)."""
    if torch.device(device).type != "cpu":
        return max(n_clients, 1)
    state = int(fl.momentum != 0) if fl.optimizer == "sgd" else 2  # momentum buffer; Adam's two moments
    per_client = (2 + state) * sum(p.numel() * p.element_size() for p in model.parameters())
    return max(1, min(n_clients, CPU_GROUP_BYTES // max(per_client, 1)))


__all__ = [
    "CPU_GROUP_BYTES", "CPU_MAX_CHAIN_STEP_FLOPS", "CPU_MAX_STACKED_PARAMS", "CPU_MAX_STEP_FLOPS", "forward_flops",
    "group_size", "local_training_hooks", "resolve_vectorize", "supports_vectorized", "vectorize_worthwhile",
]
