"""The client side of one round: what the server receives, and what only the evaluation may see.

Three roles, kept apart by types (inversion.md §6.2, item 1):

* :func:`client_update` runs on the client: it computes the FedSGD gradient of a batch, or the FedAvg update
  ``θ_start − θ_end`` after several local SGD steps (the federated-round kernel,
  :func:`fedleak.fl.round.local_round`, on the :meth:`LocalHyper.batches` schedule), and applies the client's
  defence transform *before* anything is shared. :func:`local_update` is the attacker's functional replay of the
  same steps (differentiable with ``create_graph=True``).
* :class:`ServerView` is everything an attack may use: the model state sent to the client, the shared update
  and the explicitly declared :class:`SideInfo` (number of images, labels if declared known, local
  hyper-parameters, the input normalisation of the model pipeline, the BatchNorm mode of the client's pass).
* :class:`GroundTruth` (images, labels) and the defence's client-side ``info`` go to the evaluation only.

BatchNorm (``SideInfo.bn_mode``): ``"eval"`` (default) computes the client's gradient with the running statistics
of the model state sent (a fixed per-sample function; the Soteria GS script's setting), ``"train"`` with the
statistics of the client's batch, as local training does. The attacker replays the declared mode. A defense's
client-side computation (Soteria's scores) always runs in eval mode. The state in the :class:`ServerView` stays the
state that was sent: the attacker's passes get copies of the buffers; the client's multi-step training in ``train``
mode updates the running statistics of its model as local training does, but they are not part of the shared
update (parameters only) and the client's model is given back the sent state afterwards (as before: the old
functional update never wrote them either).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.func import functional_call

from fedleak.config import FLConfig
from fedleak.defenses.base import Defense
from fedleak.defenses.gradient import GradientContext, GradientTransform
from fedleak.fl.local import load_params
from fedleak.fl.round import local_round
from fedleak.models.functional import LossFn, soft_cross_entropy


@dataclass(frozen=True)
class LocalHyper:
    """Declared FedAvg local training: ``steps`` SGD steps of size ``lr`` on batches of ``batch_size``.

    Step ``t`` uses the images ``(t·b + j) mod N`` for ``j < b`` (``b = batch_size`` or all ``N`` images), in
    the client's order; the attacker replays the same schedule.
    """

    steps: int = 1
    lr: float = 1e-4
    batch_size: int | None = None

    def batches(self, n: int) -> list[torch.Tensor]:
        b = self.batch_size or n
        return [(torch.arange(b) + t * b) % n for t in range(self.steps)]


@dataclass(frozen=True)
class SideInfo:
    """Information the attacker is explicitly given besides the update and the model state."""

    num_images: int
    input_shape: tuple[int, int, int]
    num_classes: int
    labels: torch.Tensor | None = None  # declared known labels, or None (unknown)
    local: LocalHyper | None = None  # None: FedSGD gradient; else FedAvg update with these hyper-parameters
    mean: tuple[float, ...] = (0.0,)  # the model pipeline's input normalisation (pixel -> model input)
    std: tuple[float, ...] = (1.0,)
    bn_mode: Literal["train", "eval"] = "eval"  # BatchNorm statistics of the client's pass: batch or running

    def pixel_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel ``[C]`` bounds of the [0, 1] pixel box in model-input space."""
        c = self.input_shape[0]
        mean = torch.tensor(self.mean, dtype=torch.float32).expand(c)
        std = torch.tensor(self.std, dtype=torch.float32).expand(c)
        return (0.0 - mean) / std, (1.0 - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        mean = torch.tensor(self.mean, dtype=x.dtype).expand(c).view(1, c, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).expand(c).view(1, c, 1, 1)
        return x * std + mean

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        mean = torch.tensor(self.mean, dtype=x.dtype).expand(c).view(1, c, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).expand(c).view(1, c, 1, 1)
        return (x - mean) / std


@dataclass(frozen=True)
class ServerView:
    """What the server holds after the round: the attack's whole input."""

    params: dict[str, torch.Tensor]  # parameters sent to the client (detached)
    buffers: dict[str, torch.Tensor]
    update: dict[str, torch.Tensor]  # shared gradient, or θ_start − θ_end, after the client's transform
    side: SideInfo

    @property
    def kind(self) -> Literal["gradient", "update"]:
        return "gradient" if self.side.local is None else "update"


@dataclass(frozen=True)
class GroundTruth:
    """The client's private batch (model-input space) and labels: for the evaluation only."""

    x: torch.Tensor
    y: torch.Tensor
    transform_info: dict[str, Any] = field(default_factory=dict)


def model_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    return params, buffers


def batch_gradient(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    buffers: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn = soft_cross_entropy,
    names: list[str] | None = None,
    create_graph: bool = False,
) -> dict[str, torch.Tensor]:
    """``∇_θ loss(f_θ(x), y)`` for the named parameters (all by default), via ``functional_call``.

    ``params`` must require grad for the names asked for (the attacker passes leaf copies that do).
    """
    names = list(params) if names is None else names
    logits = functional_call(model, {**_copies(buffers), **params}, (x,))
    loss = loss_fn(logits, y)
    grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=create_graph)
    return dict(zip(names, grads))


def local_update(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    buffers: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    local: LocalHyper,
    loss_fn: LossFn = soft_cross_entropy,
    create_graph: bool = False,
) -> dict[str, torch.Tensor]:
    """FedAvg client update ``θ_0 − θ_K`` after ``local.steps`` plain SGD steps, functionally: the attacker's
    replay of the victim's steps (the victim itself computes its update with the round kernel,
    :func:`kernel_update`; the two agree at the true data to float32 rounding).

    With ``create_graph=True`` the result is differentiable with respect to ``x`` (and soft ``y``): the attacker
    unrolls the same steps on its dummy data (``torch.func.functional_call``; no model mutation).
    """
    start = {k: v.detach() for k, v in params.items()}
    p = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    for idx in local.batches(x.shape[0]):
        logits = functional_call(model, {**_copies(buffers), **p}, (x[idx],))
        loss = loss_fn(logits, y[idx])
        grads = torch.autograd.grad(loss, list(p.values()), create_graph=create_graph)
        if create_graph:
            p = {k: v - local.lr * g for (k, v), g in zip(p.items(), grads)}
        else:
            p = {k: (v - local.lr * g).detach().requires_grad_(True) for (k, v), g in zip(p.items(), grads)}
    return {k: start[k] - (p[k] if create_graph else p[k].detach()) for k in start}


def client_update(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    transform: GradientTransform | None = None,
    local: LocalHyper | None = None,
    labels_known: bool = False,
    mean: tuple[float, ...] = (0.0,),
    std: tuple[float, ...] = (1.0,),
    loss_fn: LossFn = soft_cross_entropy,
    generator: torch.Generator | None = None,
    bn_mode: Literal["train", "eval"] = "eval",
) -> tuple[ServerView, GroundTruth]:
    """One client round on the private batch ``x`` (model-input space) with labels ``y``; ``bn_mode``: the
    BatchNorm statistics of the client's pass (declared in the side information).

    Returns the :class:`ServerView` (defended update + declared side information) and the
    :class:`GroundTruth` (with the defence's client-side info, e.g. Soteria's mask, for logging).
    """
    if bn_mode not in ("train", "eval"):
        raise ValueError(f"bn_mode must be 'train' or 'eval', got {bn_mode!r}")
    was_training = model.training
    try:
        model.train(bn_mode == "train")
        return _client_round(model, x, y, transform, local, labels_known, mean, std, loss_fn, generator, bn_mode)
    finally:
        model.train(was_training)


def _client_round(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, transform: GradientTransform | None, local: LocalHyper | None,
    labels_known: bool, mean: tuple[float, ...], std: tuple[float, ...], loss_fn: LossFn,
    generator: torch.Generator | None, bn_mode: Literal["train", "eval"],
) -> tuple[ServerView, GroundTruth]:
    params, buffers = model_state(model)
    if local is None:
        req = {k: v.requires_grad_(True) for k, v in model_state(model)[0].items()}
        update = {k: g.detach() for k, g in batch_gradient(model, req, buffers, x, y, loss_fn).items()}
        kind = "gradient"
    else:
        update = kernel_update(model, params, buffers, x, y, local, loss_fn, bn_mode)
        kind = "update"
    info: dict[str, Any] = {}
    model.eval()  # the defense (Soteria's per-sample scores) and everything below: running statistics
    if transform is not None:
        ctx = GradientContext(model=model, x=x.detach(), y=y, params=params, loss_fn=loss_fn, kind=kind)
        update, info = transform(update, ctx, generator)
        update = {k: v.detach() for k, v in update.items()}
    side = SideInfo(
        num_images=int(x.shape[0]),
        input_shape=tuple(int(s) for s in x.shape[1:]),  # type: ignore[arg-type]
        num_classes=int(_num_classes(model, params, buffers, x)),
        labels=y.detach().clone() if labels_known else None,
        local=local,
        mean=tuple(mean),
        std=tuple(std),
        bn_mode=bn_mode,
    )
    return ServerView(params=params, buffers=buffers, update=update, side=side), GroundTruth(
        x=x.detach().clone(), y=y.detach().clone(), transform_info=info
    )


#: plain SGD, as LocalHyper declares it: no momentum, no weight decay, a fresh optimizer (one pass of the schedule)
_PLAIN_SGD = FLConfig(optimizer="sgd", momentum=0.0, weight_decay=0.0, local_epochs=1, fresh_optimizer=True)


def kernel_update(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    buffers: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    local: LocalHyper,
    loss_fn: LossFn = soft_cross_entropy,
    bn_mode: Literal["train", "eval"] = "eval",
) -> dict[str, torch.Tensor]:
    """The client's real FedAvg update ``θ_0 − θ_K`` (parameters only), computed by the federated-round kernel
    (:func:`fedleak.fl.round.local_round`): ``local.steps`` plain-SGD steps of size ``local.lr`` on the
    :meth:`LocalHyper.batches` schedule of the model-input-space ``x`` (no normalisation), BatchNorm in ``bn_mode``,
    the no-op kernel defense (the victim's gradient defense is applied to the result by the caller).

    The kernel trains ``model`` itself; afterwards the model is given back ``params`` and ``buffers`` (the sent
    state), so ``train``-mode running statistics of the local steps are dropped, as the functional update did.
    """
    state = {k: v.detach().to("cpu", copy=True) for k, v in {**params, **buffers}.items()}
    unused = torch.Generator().manual_seed(0)  # the explicit schedule and the no-op defense draw nothing
    try:
        sent, _, _, _ = local_round(
            model, state, x.detach(), y.detach(), fl=_PLAIN_SGD, lr=local.lr,
            num_classes=_num_classes(model, params, _copies(buffers), x), normalize=_identity, defense=Defense(),
            gen=unused, defense_gen=unused, where="the inversion victim's local steps",
            batches=local.batches(int(x.shape[0])), train_mode=bn_mode == "train", loss_fn=loss_fn,
        )
    finally:
        load_params(model, state)
    return {k: (state[k] - sent[k]).to(params[k].device) for k in params}


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _copies(buffers: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fresh copies of the buffers for one pass: a train-mode BatchNorm updates the running statistics it is given
    in place, and the state the server sent must not change."""
    return {k: v.clone() for k, v in buffers.items()}


def _num_classes(model: nn.Module, params, buffers, x: torch.Tensor) -> int:
    with torch.no_grad():
        return int(functional_call(model, {**buffers, **params}, (x[:1],)).shape[-1])
