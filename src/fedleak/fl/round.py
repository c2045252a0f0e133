"""The federated-round kernel: what one client uploads in one round, and how the server averages the uploads.

:func:`local_round` is the one function that turns (global params, the client's data, the local
hyper-parameters, the defense, the random streams) into the upload; :func:`client_update` applies it to client
``k`` of a :class:`~fedleak.fl.federation.Federation` with the ``(seed, round, client, purpose)`` streams, so the
in-process engine and a Flower ClientApp compute the identical upload.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import numpy as np
import torch

from fedleak.config import FLConfig
from fedleak.defenses.base import Defense, UpdateContext
from fedleak.fl.canaries import client_pool, rows
from fedleak.device import module_device, to_device
from fedleak.fl.federation import Federation
from fedleak.fl.local import ParamDict, local_update
from fedleak.fl.vectorized import local_updates_vectorized
from fedleak.models.functional import LossFn, batchnorm_state_names, soft_cross_entropy
from fedleak.seeding import Purpose, np_rng, torch_gen


def local_round(
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
    defense_gen: torch.Generator,
    opt_state: dict[str, Any] | None = None,
    where: str = "",
    private: frozenset[str] = frozenset(),
    batches: Sequence[torch.Tensor] | None = None,
    train_mode: bool = True,
    loss_fn: LossFn = soft_cross_entropy,
) -> tuple[ParamDict, float, dict[str, Any] | None, ParamDict]:
    """One client's round on its pixel-space data ``x``: local training from ``global_params`` under ``defense``
    (``gen`` drives batching and data-level transforms), then the defense's ``transform_update`` on
    ``Δ = θ_global − θ_local`` (``defense_gen``; with an :class:`UpdateContext` holding the client's data of the
    round, normalised, and the global parameters, when the defense needs one). ``private``: state entries that never
    leave the client (FedBN's BatchNorm layers, ``fl.bn: local``). Returns (the upload: params ``θ_global − Δ'`` and
    the trained buffers, private entries left out; the mean training loss; the optimizer state to carry; the
    client's trained private entries). ``batches``, ``train_mode``, ``loss_fn``: an explicit batch schedule, eval-
    mode steps and another training loss (the inversion victim's; see :func:`~fedleak.fl.local.local_update`)."""
    local, loss, state = local_update(
        model, global_params, x, y, fl=fl, lr=lr, num_classes=num_classes, normalize=normalize,
        defense=defense, gen=gen, opt_state=opt_state, where=where, batches=batches, train_mode=train_mode,
        loss_fn=loss_fn,
    )
    kept = {n: local[n] for n in private}
    shared = {n: v for n, v in local.items() if n not in private}
    sent = upload(model, global_params, shared, x, y, normalize=normalize, defense=defense, defense_gen=defense_gen)
    return sent, loss, state, kept


def upload(
    model: torch.nn.Module,
    global_params: ParamDict,
    local: ParamDict,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    defense: Defense,
    defense_gen: torch.Generator,
) -> ParamDict:
    """What a client that trained ``local`` on pixel-space ``x, y`` uploads: ``θ_global − Δ'`` with
    ``Δ' = defense.transform_update(θ_global − θ_local)`` over the parameters in ``local`` (see :func:`local_round`),
    then ``local``'s buffers (BatchNorm running statistics) as trained. The defense's context model is in eval mode
    at ``global_params`` (BatchNorm with the running statistics it holds)."""
    buffers = {n for n, _ in model.named_buffers()}
    delta = {n: global_params[n] - local[n] for n in local if n not in buffers}
    ctx = None
    if defense.needs_context:  # e.g. Soteria: the client's data of the round at the global parameters
        model.eval()
        ctx = UpdateContext(model=model, x=normalize(x), y=y, params=global_params, loss_fn=soft_cross_entropy,
                            kind="update")
    delta = defense.transform_update(delta, defense_gen, ctx)
    sent = {n: global_params[n] - delta[n] for n in delta}
    sent.update({n: local[n] for n in local if n in buffers})
    return sent


def aggregate(uploaded: dict[int, ParamDict], weights: np.ndarray) -> ParamDict:
    """FedAvg: Σ_k w_k θ_k / Σ_k w_k over the clients that uploaded, keyed by client id (spec W10 fixed).

    Every floating-point entry (parameters, BatchNorm running mean/variance) is the example-weighted mean; an
    integer entry (BatchNorm's ``num_batches_tracked``) is the maximum over the uploads."""
    ks = sorted(uploaded)
    total = float(sum(weights[k] for k in ks))
    out: ParamDict = {}
    for n in uploaded[ks[0]].keys():
        if uploaded[ks[0]][n].is_floating_point():
            out[n] = sum((weights[k] / total) * uploaded[k][n] for k in ks)
        else:
            out[n] = torch.stack([uploaded[k][n] for k in ks]).amax(0)
    return out


def private_names(fed: Federation) -> frozenset[str]:
    """The state entries clients keep to themselves: their BatchNorm layers under ``fl.bn: local`` (FedBN)."""
    return batchnorm_state_names(fed.model) if fed.cfg.fl.bn == "local" else frozenset()


def client_update(
    fed: Federation,
    k: int,
    rnd: int,
    lr: float,
    global_params: ParamDict,
    opt_state: dict[str, Any] | None = None,
    defended: bool | None = None,
    bn_states: dict[int, ParamDict] | None = None,
) -> tuple[ParamDict, float, dict[str, Any] | None]:
    """Client ``k``'s work in round ``rnd``: what it uploads, its mean training loss, its optimizer state.

    Every random draw comes from the (seed, rnd, k, purpose) streams, so any process holding the same
    ``Federation`` (e.g. a Flower ClientApp, ``fedleak.flower``) computes the identical upload.
    Under ``fl.bn: local`` the client starts from the global model with its own BatchNorm state (``bn_states[k]``,
    the initial one before its first round), uploads everything else, and ``bn_states[k]`` is replaced by its
    newly trained BatchNorm state (``bn_states``, the clients' private store, is required then).
    """
    cfg, data = fed.cfg, fed.data
    if defended is None:
        defended = cfg.defense.clients is None or k in cfg.defense.clients
    private = private_names(fed)
    if private and bn_states is None:
        raise ValueError("fl.bn=local: client_update needs the clients' BatchNorm store (bn_states)")
    start = {**global_params, **bn_states.get(k, {})} if private and bn_states is not None else global_params
    defense, x, y = _client_data(fed, k, rnd, defended)
    sent, loss, state, kept = local_round(
        fed.model, start, x, y,
        fl=cfg.fl, lr=lr, num_classes=data.num_classes, normalize=data.normalize, defense=defense,
        gen=torch_gen(cfg.seed, Purpose.LOCAL, rnd, k), defense_gen=torch_gen(cfg.seed, Purpose.DEFENSE, rnd, k),
        opt_state=opt_state, where=_where(rnd, k), private=private,
    )
    if private and bn_states is not None:
        bn_states[k] = kept
    return sent, loss, state


def clients_update_vectorized(
    fed: Federation,
    ks: list[int],
    rnd: int,
    lr: float,
    global_params: ParamDict,
    opt_states: dict[int, Any],
    defended: set[int],
) -> dict[int, tuple[ParamDict, float, dict[str, Any] | None]]:
    """:func:`client_update` of every client in ``ks`` (keyed by client), their local training done as one
    stacked computation (:func:`~fedleak.fl.vectorized.local_updates_vectorized`) with exactly the loop's
    (seed, rnd, k, purpose) streams. Only for a model and defense that ``supports_vectorized`` accepts: the
    defense may select data and transform the update, not change local training."""
    cfg, data = fed.cfg, fed.data
    parts = [_client_data(fed, k, rnd, k in defended) for k in ks]
    dev = module_device(fed.model)  # trains there; the batch plan's draws stay on the CPU generators
    locals_, losses, states = local_updates_vectorized(
        fed.model, to_device(global_params, dev), [x.to(dev) for _, x, _ in parts], [y.to(dev) for _, _, y in parts],
        [torch_gen(cfg.seed, Purpose.LOCAL, rnd, k) for k in ks],
        fl=cfg.fl, lr=lr, num_classes=data.num_classes, normalize=data.normalize,
        opt_states=[to_device(opt_states.get(k), dev) for k in ks], wheres=[_where(rnd, k) for k in ks],
    )
    locals_, states = to_device(locals_, "cpu"), to_device(states, "cpu")
    out = {}
    for i, (k, (defense, x, y)) in enumerate(zip(ks, parts)):
        sent = upload(fed.model, global_params, locals_[i], x, y, normalize=data.normalize, defense=defense,
                      defense_gen=torch_gen(cfg.seed, Purpose.DEFENSE, rnd, k))
        out[k] = (sent, losses[i], states[i])
    return out


def _where(rnd: int, k: int) -> str:
    return f"round {rnd} (0-based), client {k}"


def _client_data(fed: Federation, k: int, rnd: int, defended: bool) -> tuple[Defense, torch.Tensor, torch.Tensor]:
    """Client ``k``'s defense (the run's, or the no-op one when it is not defended) and its data of round ``rnd``."""
    defense = fed.defense if defended else Defense()
    idx = defense.select_data(client_pool(fed, k), rnd, np_rng(fed.cfg.seed, Purpose.DATA_SELECT, rnd, k))
    if fed.canaries is not None:  # ids of train rows or canaries (fl/canaries.py)
        return (defense, *rows(fed, idx))
    it = torch.as_tensor(np.asarray(idx), dtype=torch.long)
    return defense, fed.data.train.x[it], fed.data.train.y[it]


__all__ = ["aggregate", "client_update", "clients_update_vectorized", "local_round", "private_names", "upload"]
