"""Record one round's per-sample signals for every client into the run store.

Loss and logit margin use each client's *uploaded* model (one forward for both); gradient signals use per-sample
gradients at the round's global model, computed once for all clients (``gradient_signals``), against each uploaded
update. Every signal is taken in eval mode: a BatchNorm model normalises with the running statistics the server
holds (the global ones for the gradients, client k's uploaded ones for its loss; under ``fl.bn: local`` the
server's own, since the clients' never leave them).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from fedleak.fl.canaries import canary_round_arrays
from fedleak.fl.local import ParamDict, evaluate
from fedleak.signals import store
from fedleak.signals.candidates import gather, redraw_nonmembers
from fedleak.signals.compute import cos_and_diff, gradient_signals, per_sample_loss_margin, squared_norms
from fedleak.signals.tensorfile import encode_tensors

if TYPE_CHECKING:
    from fedleak.fl.federation import Federation


def _candidate_tensors(fed: "Federation", ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    d = fed.data
    x, y = gather(ids, len(d.train), d.train.x, d.train.y, d.test.x, d.test.y)
    return d.normalize(x), y


def record_round(
    fed: "Federation",
    run_dir: Path,
    rnd: int,
    lr: float,
    global_params: ParamDict,
    uploaded: dict[int, ParamDict],
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    compat_rng: np.random.Generator,
) -> list[float]:
    cfg = fed.cfg
    # what the server holds of client k: its upload, completed by the global state for entries the client keeps
    # private (FedBN's BatchNorm layers); a model with BatchNorm is evaluated with the running statistics held
    uploaded = {k: {**global_params, **u} for k, u in uploaded.items()}
    K, N = cfg.partition.num_clients, len(fed.cand_ids)
    sc = cfg.signals
    names = [n for n, p in fed.model.named_parameters() if p.requires_grad]
    out = {k: np.full((K, N), np.nan, np.float32) for k in (*store.SIGNAL_KEYS_KN, *store.OPTIONAL_KEYS_KN)}
    ids = np.tile(fed.cand_ids, (K, 1))
    dnorm2 = np.full(K, np.nan, np.float64)
    test_acc = np.full(K, np.nan, np.float64)
    ks = sorted(uploaded)
    deltas = torch.stack([torch.cat([(global_params[n] - uploaded[k][n]).reshape(-1) for n in names]) for k in ks])
    dn2 = squared_norms(deltas)  # float64 accumulation, no float64 copy of the [K, P] updates

    compat = cfg.candidates.protocol == "official-compat"
    if compat:
        for k in ks:
            ids[k] = redraw_nonmembers(
                fed.cand_ids, fed.cand_owner, cfg.candidates.target_client, fed.clients,
                fed.n_train, len(fed.data.test), compat_rng,
            )
    # gradient signals once for every distinct row of the round against all K updates: under official-compat the
    # members are shared and the redrawn non-members overlap across clients, so each client's rows are gathered
    # from the union (per client, they would cost K times the per-sample gradients, and a single update sends the
    # engine down its K=1 path, whose per-sample Gram matrices made a conv net's round 6-14x slower and 5x larger)
    rows = np.unique(ids[ks]) if compat else fed.cand_ids
    x_rows, y_rows = _candidate_tensors(fed, rows)
    g = gradient_signals(
        fed.model, global_params, deltas, x_rows, y_rows,
        chunk_size=sc.chunk_size, memory_budget_mb=sc.memory_budget_mb,
    )
    for i, k in enumerate(ks):
        at = torch.as_tensor(np.searchsorted(rows, ids[k])) if compat else slice(None)
        xk, yk = x_rows[at], y_rows[at]
        dot, gn2 = g["dot"][i, at], g["gnorm2"][at]
        cos, diff = cos_and_diff(dot[None], gn2, dn2[i : i + 1])
        loss, margin = per_sample_loss_margin(fed.model, uploaded[k], xk, yk, batch_size=sc.batch_size)
        out["loss"][k] = loss.numpy()
        out["margin"][k] = margin.numpy()
        out["dot"][k] = dot.numpy()
        out["gnorm2"][k] = gn2.numpy()
        out["cos"][k] = cos[0].numpy()
        out["diff"][k] = diff[0].numpy()
        dnorm2[k] = float(dn2[i])
        test_acc[k] = evaluate(fed.model, uploaded[k], test_x, test_y, cfg.fl.eval_batch_size)[0]
    participated = np.zeros(K, bool)
    participated[ks] = True
    if fed.canaries is not None:  # additive canary_* arrays (signals/canaries.py)
        out.update(canary_round_arrays(fed, global_params, uploaded, ks, deltas, dn2))
    if sc.keep_models:
        keep_models(fed, run_dir, rnd, global_params, uploaded)
    store.write_round(
        run_dir, rnd,
        dict(out, ids=ids, dnorm2=dnorm2, participated=participated, client_test_acc=test_acc, lr=np.float64(lr)),
    )
    return [None if np.isnan(a) else float(a) for a in test_acc]


def keep_models(
    fed: "Federation", run_dir: Path, rnd: int, global_params: ParamDict, uploaded: dict[int, ParamDict]
) -> None:
    """``signals.keep_models``: the round's global model and every upload as safetensors files under
    ``RUN/models/round_RRRR/`` (each written atomically; the layout ``fedleak export`` copies, docs/import.md)."""
    folder = store.make_dirs(Path(run_dir) / store.MODELS_DIR / store.round_folder(rnd))
    store.atomic_write_bytes(folder / "global.safetensors", encode_tensors(global_params, {"round": str(rnd)}))
    for k in sorted(uploaded):
        meta = {"round": str(rnd), "client": str(k), "examples": str(int(fed.weights[k]))}
        store.atomic_write_bytes(folder / store.client_file(k), encode_tensors(uploaded[k], meta))
