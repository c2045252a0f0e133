"""One client's local update and model evaluation."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from fedleak.config import ConfigError, FLConfig
from fedleak.defenses.base import Defense
from fedleak.device import module_device, to_device
from fedleak.models.functional import LossFn, soft_cross_entropy

ParamDict = dict[str, torch.Tensor]


class TrainingDiverged(ConfigError):
    """A client's local loss or update became inf/nan: the run stops (finished rounds stay saved)."""


def _diverged(where: str, what: str, lr: float) -> TrainingDiverged:
    at = f" in {where}" if where else ""
    return TrainingDiverged(
        f"training diverged{at}: {what} (learning rate {lr:g}); use a smaller fl.lr (or fl.schedule), "
        "in a new run directory (--out): the finished rounds are kept"
    )


def make_optimizer(params, fl: FLConfig, lr: float) -> torch.optim.Optimizer:
    if fl.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=fl.momentum, weight_decay=fl.weight_decay)
    if fl.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=fl.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=fl.weight_decay)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


def load_params(model: torch.nn.Module, params: ParamDict) -> None:
    """Copy ``params`` into the model: every parameter and every buffer (BatchNorm running statistics) by name."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(params[name])
        for name, b in model.named_buffers():
            b.copy_(params[name])


def get_params(model: torch.nn.Module) -> ParamDict:
    """The model's state as the engine ships it, as CPU copies (uploads, aggregation, checkpoints stay on the CPU):
    parameters (``named_parameters()`` order), then buffers."""
    state = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters()}
    state.update({n: b.detach().to("cpu", copy=True) for n, b in model.named_buffers()})
    return state


def local_update(
    model: torch.nn.Module,
    global_params: ParamDict,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    fl: FLConfig,
    lr: float,
    num_classes: int,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    defense: Defense,
    gen: torch.Generator,
    opt_state: dict[str, Any] | None = None,
    where: str = "",
    batches: Sequence[torch.Tensor] | None = None,
    train_mode: bool = True,
    loss_fn: LossFn = soft_cross_entropy,
) -> tuple[ParamDict, float, dict[str, Any] | None]:
    """Train ``model`` from ``global_params`` on the client's pixel-space data (x in [0,1]).

    Returns (local params, mean training loss, optimizer state to carry when fresh_optimizer=False).
    The model is put in train() mode (the original never called it, spec W12): BatchNorm layers normalise with
    the batch statistics and update their running statistics, which come back with the parameters.
    ``batches``: an explicit schedule of index batches, run once in order, instead of ``fl.local_epochs`` epochs
    of ``defense.local_batches`` drawn from ``gen`` (the inversion victim's deterministic cyclic batches).
    ``train_mode=False`` runs the steps in eval() mode (BatchNorm normalises with, and never writes, the running
    statistics it is given; the inversion victim's ``bn_mode: eval``). ``loss_fn``: the training loss.
    A non-finite batch loss or final parameter raises :class:`TrainingDiverged` naming ``where``
    (e.g. "round 3, client 1") instead of uploading garbage.
    Runs on the model's device; batches are drawn and transformed on the CPU (``gen`` is a CPU generator) and
    moved there; the returned params and optimizer state are on the CPU.
    """
    dev = module_device(model)
    load_params(model, global_params)
    model.train(train_mode)
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], fl, lr)
    if opt_state is not None and not fl.fresh_optimizer:
        opt.load_state_dict(opt_state)
        set_lr(opt, lr)
    n = len(y)
    losses: list[float] = []
    for idx in _schedule(defense, n, fl, gen, batches):
        xb, yb = defense.transform_batch(x[idx], y[idx], num_classes, gen)
        loss = defense.training_step(model, normalize(xb.to(dev)), yb.to(dev), loss_fn, opt)
        if len(idx) == 0:  # an empty (Poisson-sampled) batch: the step ran, it has no loss to average
            continue
        losses.append(loss)
        if not math.isfinite(losses[-1]):
            raise _diverged(where, f"the local training loss became {losses[-1]} at step {len(losses)}", lr)
    params = get_params(model)
    bad = [n for n, p in params.items() if not bool(torch.isfinite(p).all())]
    if bad:
        raise _diverged(where, f"the local model's {bad[0]} became inf/nan", lr)
    state = None if fl.fresh_optimizer else to_device(opt.state_dict(), "cpu")
    return params, float(np.mean(losses)) if losses else float("nan"), state


def _schedule(
    defense: Defense, n: int, fl: FLConfig, gen: torch.Generator, batches: Sequence[torch.Tensor] | None
) -> Iterator[torch.Tensor]:
    """The local steps' index batches: ``batches`` as given, else ``fl.local_epochs`` epochs of the defense's
    batches, each epoch's drawn from ``gen`` lazily (when its first batch is needed), as the loop always did."""
    if batches is not None:
        yield from batches
        return
    for _ in range(fl.local_epochs):
        yield from defense.local_batches(n, fl.batch_size, gen)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, params: ParamDict | None, x: torch.Tensor, y: torch.Tensor, batch_size: int
) -> tuple[float, float]:
    """(accuracy, mean CE loss) of ``params`` (or the model's own) on normalised inputs, eval() mode, on the
    model's device (``x``, ``y`` moved there batch by batch)."""
    if params is not None:
        load_params(model, params)
    model.eval()
    dev = module_device(model)
    correct, total_loss = 0, 0.0
    for s in range(0, len(y), batch_size):
        xb, yb = x[s : s + batch_size].to(dev), y[s : s + batch_size].to(dev)
        out = model(xb)
        total_loss += float(F.cross_entropy(out, yb, reduction="sum"))
        correct += int((out.argmax(1) == yb).sum())
    n = max(len(y), 1)
    return correct / n, total_loss / n
