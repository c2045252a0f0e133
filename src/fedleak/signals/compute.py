"""Per-sample membership signals (fedmia.md §2.3-2.4, recommendations §9.2), computed once per round.

For a candidate (x, y) and the round's global parameters θ_g, ``g(x) = ∇_θ CE(f_θ(x), y) |θ=θ_g`` over all trainable
parameters, flattened in ``named_parameters()`` order. For every client update ``Δ_k = θ_g − θ_k``::

    dot[k, n]  = <g(x_n), Δ_k>
    gnorm2[n]  = ||g(x_n)||²
    cos[k, n]  = dot / (||g|| ||Δ_k||)
    diff[k, n] = ||Δ_k||² − ||Δ_k − g||² = 2 dot − gnorm2

How (``gradient_signals``): the candidates are cut into chunks of ``c`` samples (``c·P·4`` bytes within
``memory_budget_mb``). Per chunk, the per-sample gradient information is formed once — never per sample in a Python
loop, never once per client — and reduced against all K updates at once: ``dot += Δ[:, t] @ G_tᵀ`` (one GEMM per
parameter tensor t) and ``gnorm2 += ||G_t||²`` row-wise; nothing of G outlives its chunk. The official code
recomputes the per-sample gradients K times and loops over samples in Python (fedmia.md §2.4).

Engines (``engine=``, default ``"auto"``):

* ``"vmap"``: G from ``torch.func.vmap(torch.func.grad(loss))`` — generic, for any model without cross-sample
  coupling. On CPU its conv weight-gradient batching rule becomes a slow grouped convolution.
* ``"layers"``: one batched forward/backward of the *summed* loss (so each sample's output gradient is its own),
  forward hooks recording every parameterised layer's input and output. Per-sample gradients then have closed forms:
  Linear ``gW_i = Σ_t gout_i,t ⊗ in_i,t``; Conv2d ``gW_i = gout_i · unfold(in_i)ᵀ`` (a batched GEMM); GroupNorm
  ``gγ_i = Σ_hw gout_i ⊙ x̂_i``, ``gβ_i = Σ_hw gout_i``; biases ``Σ_t gout_i,t``. For Linear/Conv2d weights applied at
  few positions T (``K·T < T + K + 120``: in AlexNet-CIFAR conv3-5 and fc, 86% of the parameters) G is not even
  formed ("ghost" reductions): ``<gW_i, ΔW_k> = Σ_t <gout_i,t, ΔW_k · in_i,t>`` is the layer applied with the K
  stacked Δ weights (one dense GEMM), and ``||gW_i||² = Σ_{t,t'} <gout_i,t, gout_i,t'> <in_i,t, in_i,t'>`` comes from
  two T×T Gram matrices (float64). Elsewhere G_t is materialised and reduced by GEMM as above.
* ``"auto"``: ``"layers"`` when every trainable parameter belongs to a Linear / Conv2d (groups=1, zero padding) /
  GroupNorm layer that runs once per forward on a batch-first input and is not tied to another module (all fedleak
  models), else ``"vmap"`` (also when a layer turns out to run twice). Tests check every path against a per-sample
  autograd loop.

Why not forward-mode JVPs for ``dot`` (``<g(x), Δ_k> = d/dε CE(f_{θ+εΔ_k}(x), y)``, one batched ``torch.func.jvp``
per client, G never formed): ``gnorm2`` still needs per-sample gradient norms, so the JVPs come on top of that work,
and each costs a full forward plus tangent pass through the whole network per client (≈ 3 forwards × K), whereas the
ghost dots above apply Δ only at the layer itself, once, with no propagation. ``benchmarks/signals.py`` times it: on
CPU for AlexNet-CIFAR (N=500, K=10) the JVP dots alone take about 2.6x as long as the complete ``gradient_signals``.
``_dots_jvp`` is kept as an independent cross-check (tests).

Accuracy: gradients run in float32 (the models' dtype); per-tensor GEMM results and squared norms are summed
across parameter tensors in float64, and ``cos_and_diff`` works in float64. ``diff`` is formed as ``2 dot − gnorm2``,
which avoids the cancellation in ``||Δ||² − ||Δ − g||²`` (both terms ≈ ||Δ||² when ||g|| ≪ ||Δ||). For AlexNet-CIFAR
the results are within ~3e-7 of a float64 computation (relative to the largest value); the official float32
``F.cosine_similarity`` / ``torch.norm`` over 2.5M entries is only within ~3e-5.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from fedleak.models.functional import per_sample_grad_fn
from fedleak.signals.layers import (
    _ghost_weight,
    _layer_grads,
    _layer_plan,
    _layer_records,
    _materialize,
    _positions,
    _Unsupported,
    _use_ghost,
)

__all__ = [
    "trainable_names",
    "flat_params",
    "flatten_state",
    "per_sample_losses",
    "per_sample_loss_margin",
    "logit_margins",
    "gradient_signals",
    "cos_and_diff",
    "chunk_size_for",
    "squared_norms",
    "per_sample_gradients",
    "ENGINES",
]


def trainable_names(model: nn.Module) -> list[str]:
    """Names of the trainable parameters, in ``named_parameters()`` order (the flattening order of Δ and g)."""
    return [n for n, p in model.named_parameters() if p.requires_grad]


def flatten_state(params: Mapping[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    """Concatenate ``params[name]`` (flattened) over ``names``, in that order."""
    missing = [n for n in names if n not in params]
    if missing:
        raise KeyError(f"parameters missing from the state: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return torch.cat([params[n].detach().reshape(-1) for n in names])


def flat_params(model: nn.Module) -> torch.Tensor:
    """The model's trainable parameters as one flat (detached) vector, ``named_parameters()`` order."""
    return flatten_state(dict(model.named_parameters()), trainable_names(model))


def _split_params(
    model: nn.Module, params: Mapping[str, torch.Tensor] | None
) -> tuple[list[str], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(trainable names, trainable tensors, everything else given) — detached, on the model's device."""
    names = trainable_names(model)
    given = dict(model.named_parameters()) if params is None else dict(params)
    missing = [n for n in names if n not in given]
    if missing:
        raise KeyError(f"global_params lacks trainable parameters: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    dev = _device_of(model, given)
    train = {n: given[n].detach().to(dev) for n in names}
    rest = {n: v.detach().to(dev) for n, v in given.items() if n not in train}
    return names, train, rest


def _device_of(model: nn.Module, params: Mapping[str, torch.Tensor]) -> torch.device:
    """Where a computation runs: the model's device (``params`` and inputs are moved there), else the params'."""
    for p in model.parameters():
        return p.device
    for v in params.values():
        return v.device
    return torch.device("cpu")


class _EvalMode:
    """Put the model in eval mode for the block and restore its previous mode."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> nn.Module:
        self.was_training = self.model.training
        self.model.eval()
        return self.model

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was_training)


def logit_margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """φ = logit_y − logsumexp of the other logits (LiRA's statistic), per row of ``logits`` [B, C] -> [B] float32.

    Computed in float64 from the given logits (a stable logsumexp: the other logits' maximum is factored out),
    so the only float32 rounding is the final cast. Higher = more confidently the label. ``CE = softplus(−φ)``.
    """
    z = logits.detach().double()
    own = z.gather(1, y.reshape(-1, 1)).squeeze(1)
    others = z.scatter(1, y.reshape(-1, 1), float("-inf"))
    return (own - torch.logsumexp(others, dim=1)).float()


@torch.no_grad()
def per_sample_loss_margin(
    model: nn.Module,
    params: Mapping[str, torch.Tensor] | None,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 512,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample cross-entropy and logit margin (:func:`logit_margins`) from one forward -> ([N], [N]) on CPU.

    ``params``: name -> tensor (None: the model's own). Evaluated with ``torch.func.functional_call`` in eval
    mode under ``no_grad``; the model itself is not modified.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    p = dict(model.named_parameters()) if params is None else {k: v.detach() for k, v in params.items()}
    dev = _device_of(model, p)
    p = {k: v.to(dev) for k, v in p.items()}
    losses, margins = [], []
    with _EvalMode(model):
        for s in range(0, len(x), batch_size):
            xb, yb = x[s : s + batch_size].to(dev), y[s : s + batch_size].to(dev)
            logits = torch.func.functional_call(model, p, (xb,))
            losses.append(F.cross_entropy(logits.float(), yb, reduction="none").cpu())
            margins.append(logit_margins(logits, yb).cpu())
    if not losses:
        return torch.zeros(0), torch.zeros(0)
    return torch.cat(losses), torch.cat(margins)


def per_sample_losses(
    model: nn.Module,
    params: Mapping[str, torch.Tensor] | None,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 512,
) -> torch.Tensor:
    """Per-sample cross-entropy of ``model`` with ``params`` (name -> tensor; None: the model's own) -> [N] on CPU
    (the loss half of :func:`per_sample_loss_margin`)."""
    return per_sample_loss_margin(model, params, x, y, batch_size)[0]


def squared_norms(deltas: torch.Tensor) -> torch.Tensor:
    """Row-wise ||Δ_k||² of [K, P] updates, accumulated in float64 (no float64 copy of Δ) -> [K] float64."""
    return torch.linalg.vector_norm(deltas.detach(), dim=1, dtype=torch.float64).square()


def chunk_size_for(num_params: int, memory_budget_mb: float) -> int:
    """Largest chunk ``c`` with ``c * P * 4`` bytes of per-sample gradients within the budget (at least 1)."""
    return max(1, int(memory_budget_mb * 2**20) // (4 * max(1, int(num_params))))


# Per-sample gradient engines (see the module docstring). Each yields (parameter name, [c, numel]) for a chunk.
ENGINES = ("auto", "layers", "vmap")


def _vmap_grads(psg, params: dict[str, torch.Tensor], names: list[str], xb: torch.Tensor, yb: torch.Tensor):
    grads = psg(params, xb, yb)
    for n in names:
        yield n, grads[n].reshape(len(xb), -1)


def per_sample_gradients(
    model: nn.Module,
    global_params: Mapping[str, torch.Tensor] | None,
    x: torch.Tensor,
    y: torch.Tensor,
    engine: str = "auto",
) -> torch.Tensor:
    """[N, P] per-sample gradients (trainable parameters, flattened). Materialises G: for tests and small N only."""
    names, params, rest = _split_params(model, global_params)
    order = {n: i for i, n in enumerate(names)}
    rows: list[torch.Tensor | None] = [None] * len(names)
    dev = _device_of(model, params)
    with _EvalMode(model):
        for n, g in _chunk_grads(model, names, params, rest, x.to(dev), y.to(dev), engine):
            rows[order[n]] = g
    return torch.cat([r for r in rows if r is not None], dim=1) if names else torch.zeros(len(x), 0)


def _chunk_grads(model, names, params, rest, xb, yb, engine):
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose from: {', '.join(ENGINES)}")
    plan = _layer_plan(model, names) if engine in ("auto", "layers") else None
    if engine == "layers" and plan is None:
        raise ValueError("engine 'layers' needs every trainable parameter in a Linear, Conv2d or GroupNorm layer")
    if plan is not None:
        try:
            yield from _layer_grads(model, plan, params, rest, xb, yb)
            return
        except _Unsupported:
            if engine == "layers":
                raise
    yield from _vmap_grads(per_sample_grad_fn(model, rest), params, names, xb, yb)


def gradient_signals(
    model: nn.Module,
    global_params: Mapping[str, torch.Tensor],
    deltas: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    chunk_size: int | None = None,
    memory_budget_mb: float = 512,
    engine: str = "auto",
) -> dict[str, torch.Tensor]:
    """Per-sample gradient signals at ``global_params`` against all K updates at once.

    Args:
        model: the architecture (its own parameter values are not used; it is put in eval mode temporarily).
        global_params: name -> tensor, at least every trainable parameter (others, if given, are used as constants).
        deltas: [K, P] flattened updates Δ_k = θ_global − θ_k in ``trainable_names(model)`` order.
        x, y: candidates [N, ...] and labels [N].
        chunk_size: samples per chunk; default from ``memory_budget_mb`` (``c·P·4`` bytes ≤ budget).
        engine: per-sample gradient engine, ``"auto"`` | ``"layers"`` | ``"vmap"`` (see above).

    Returns:
        ``{"dot": [K, N], "gnorm2": [N]}``, float32 on CPU.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose from: {', '.join(ENGINES)}")
    names, params, rest = _split_params(model, global_params)
    sizes = [params[n].numel() for n in names]
    P = sum(sizes)
    if deltas.dim() != 2 or deltas.shape[1] != P:
        raise ValueError(f"deltas must be [K, P] with P = {P} trainable parameters, got {tuple(deltas.shape)}")
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
    N = len(x)
    dev = _device_of(model, params)
    dtype = params[names[0]].dtype if names else torch.float32
    c = int(chunk_size) if chunk_size is not None else chunk_size_for(P, memory_budget_mb)
    if c < 1:
        raise ValueError(f"chunk_size must be >= 1, got {c}")
    c = min(c, max(N, 1))

    acc = _Accumulator(deltas.detach().to(device=dev, dtype=dtype), names, sizes, N, dev)
    plan = _layer_plan(model, names) if engine in ("auto", "layers") else None
    if engine == "layers" and plan is None:
        raise ValueError("engine 'layers' needs every trainable parameter in a Linear, Conv2d or GroupNorm layer")
    with _EvalMode(model):
        for s in range(0, N, c):
            xb, yb = x[s : s + c].to(dev), y[s : s + c].to(dev)
            records = None
            if plan is not None:
                try:
                    records = _layer_records(model, plan, params, rest, xb, yb)
                except _Unsupported:
                    if engine == "layers":
                        raise
                    plan = None  # "auto": this model is not served by the layer engine; vmap from now on
            if records is not None:
                pairs = acc.add_layer_records(records, s, s + len(xb))
                del records
            else:
                pairs = list(_vmap_grads(per_sample_grad_fn(model, rest), params, names, xb, yb))
            acc.add_pairs(pairs, s, s + len(xb))
            del pairs
    return {"dot": acc.dot.float().cpu(), "gnorm2": acc.gnorm2.float().cpu()}


class _Accumulator:
    """``dot [K, N]`` and ``gnorm2 [N]`` (float64) of one ``gradient_signals`` call, filled chunk by chunk."""

    def __init__(self, d: torch.Tensor, names: list[str], sizes: list[int], N: int, dev: torch.device) -> None:
        self.K = d.shape[0]
        self.views: dict[str, torch.Tensor] = {}  # [K, P_t] column blocks of Δ; BLAS reads the strided views as is
        off = 0
        for n, s in zip(names, sizes):
            self.views[n] = d[:, off : off + s]
            off += s
        self.stacked: dict[str, torch.Tensor] = {}  # Δ weight blocks as stacked [K*O, ...] weights, built once
        self.dot = torch.zeros(self.K, N, dtype=torch.float64, device=dev)
        self.gnorm2 = torch.zeros(N, dtype=torch.float64, device=dev)

    def _stacked_weight(self, pre: str, mod: nn.Module) -> torch.Tensor:
        if pre not in self.stacked:
            w = mod.weight
            self.stacked[pre] = self.views[pre + "weight"].reshape(self.K * w.shape[0], *w.shape[1:])
        return self.stacked[pre]

    def add_layer_records(self, records, s: int, e: int) -> list[tuple[str, torch.Tensor]]:
        """Add the ghost reductions of samples ``s:e``; return the (name, [c, numel]) blocks still to reduce."""
        pairs: list[tuple[str, torch.Tensor]] = []
        for name, mod, inp, gout in records:
            pre = f"{name}." if name else ""
            ghost = (
                isinstance(mod, (nn.Linear, nn.Conv2d))
                and mod.weight.requires_grad
                and _use_ghost(self.K, _positions(mod, inp, gout), tuple(mod.weight.shape))
            )
            if ghost:
                d_l, n_l = _ghost_weight(mod, inp, gout, self._stacked_weight(pre, mod), self.K)
                self.dot[:, s:e] += d_l
                self.gnorm2[s:e] += n_l
            pairs.extend(_materialize(mod, pre, inp, gout, weight=not ghost))
        return pairs

    def add_pairs(self, pairs: list[tuple[str, torch.Tensor]], s: int, e: int) -> None:
        for n, gt in pairs:
            self.dot[:, s:e] += (self.views[n] @ gt.T).double()
            self.gnorm2[s:e] += torch.linalg.vector_norm(gt, dim=1).double().square()


def cos_and_diff(
    dot: torch.Tensor, gnorm2: torch.Tensor, dnorm2: torch.Tensor, eps: float = 1e-12
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos [K,N] = dot / max(||g||·||Δ_k||, eps) and diff [K,N] = 2·dot − ||g||² (= ||Δ||² − ||Δ−g||²).

    ``dot`` [K, N], ``gnorm2`` [N] (or [K, N]), ``dnorm2`` [K]. Computed in float64, returned in ``dot``'s dtype.
    A zero gradient or a zero update gives cos = 0.
    """
    dot64 = torch.as_tensor(dot).double()
    if dot64.dim() != 2:
        raise ValueError(f"dot must be [K, N], got {tuple(dot64.shape)}")
    g64 = torch.as_tensor(gnorm2).double().to(dot64.device)
    d64 = torch.as_tensor(dnorm2).double().to(dot64.device).reshape(-1, 1)
    if d64.shape[0] != dot64.shape[0]:
        raise ValueError(f"dnorm2 has {d64.shape[0]} entries for {dot64.shape[0]} clients")
    denom = (g64.clamp_min(0).sqrt() * d64.clamp_min(0).sqrt()).clamp_min(eps)
    cos = dot64 / denom
    diff = 2.0 * dot64 - g64
    out_dtype = dot.dtype if torch.is_floating_point(torch.as_tensor(dot)) else torch.float64
    return cos.to(out_dtype), diff.to(out_dtype)


def _dots_jvp(
    model: nn.Module,
    global_params: Mapping[str, torch.Tensor],
    deltas: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 512,
) -> torch.Tensor:
    """[K, N] ``<g(x_n), Δ_k>`` by forward-mode differentiation along each Δ_k (no per-sample gradients).

    Slower than the GEMM route on CPU (see the module docstring); kept for the benchmark and as a cross-check.
    """
    names, params, rest = _split_params(model, global_params)
    dev = _device_of(model, params)
    K = deltas.shape[0]
    tangents = []
    for k in range(K):
        tk, off = {}, 0
        for n in names:
            s = params[n].numel()
            tk[n] = deltas[k, off : off + s].reshape(params[n].shape).to(device=dev, dtype=params[n].dtype)
            off += s
        tangents.append(tk)
    out = torch.zeros(K, len(x), dtype=torch.float32)
    with _EvalMode(model), torch.no_grad():
        for s in range(0, len(x), batch_size):
            xb, yb = x[s : s + batch_size].to(dev), y[s : s + batch_size].to(dev)

            def losses(p: dict[str, torch.Tensor]) -> torch.Tensor:
                return F.cross_entropy(torch.func.functional_call(model, (p, rest), (xb,)), yb, reduction="none")

            for k in range(K):
                _, tangent_out = torch.func.jvp(losses, (params,), (tangents[k],))
                out[k, s : s + len(xb)] = tangent_out.float().cpu()
    return out
