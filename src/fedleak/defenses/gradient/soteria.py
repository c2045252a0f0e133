"""Soteria (Sun et al., CVPR 2021) as a gradient transform, for any ``nn.Linear`` addressed by module name.

Representation ``r = φ(x) ∈ R^{B×D}`` = the input of the defended ``nn.Linear`` (default: the model's last
one), captured with a forward hook (no model edits). Per feature ``i`` and sample ``b``::

    v[b, i] = ‖∂r[b, i] / ∂x[b]‖₂ / den(r[b, i])      den = r + 0.1 ("legacy", the GS script)
                                                            r       ("notebook", the DLG notebook)
                                                            |r| + ε ("abs", safe for signed features)

``method="exact"`` instead uses the quantity the Soteria README says the code approximates,
``‖r_i · (∂r/∂x)⁺ e_i‖`` (the input change that removes feature ``i``, through the pseudo-inverse of the whole
Jacobian ``J ∈ R^{D×n}``): ``‖J⁺e_i‖ = sqrt([(J Jᵀ)⁻¹]_ii)``, so ``v[b, i] = 1 / (den(r[b, i]) · sqrt([(J_b J_bᵀ + λI)⁻¹]_ii))``.
Replacing ``J Jᵀ`` by its diagonal gives back the approximate score exactly.

Scores are summed over the batch (``reduction="sum"``, one mask per batch, as the original) or kept per sample
(``"per-sample"``). Selection follows ``numpy.percentile`` (linear interpolation; features with
``|S_i| < τ`` are pruned, ties at ``τ`` kept, so ``⌈p·(D−1)/100⌉`` of ``D`` distinct scores go) or ``"topk"``
(exactly ``round(p·D/100)`` smallest scores). Only the columns of that layer's *weight* gradient are zeroed;
bias and all other tensors are untouched — which is exactly why the defence leaks (see
``fedleak.attacks.inversion.adaptive``).

Jacobian-row norms are computed batched: ``torch.func.vjp`` once, then ``torch.func.vmap`` of the VJP over
chunks of one-hot cotangents (``method="approx"``, the default), or by replicating the input once per feature
of a chunk and doing one backward (``jacobian="replicate"``), never one backward pass per feature (that
reference, ``jacobian="loop"``, is kept for tests and the benchmark). All three assume samples do not interact
inside the network (true for every fedleak model: no BatchNorm), as the original does.

``jacobian="sketch"`` estimates the row norms instead from ``probes`` random probes (``probe_kind`` Rademacher or
Gaussian) through forward-mode JVPs (:func:`fedleak.models.jacobian_sketch.row_norms_sketch`; accuracy and speed
in docs/soteria-sketch.md), and puts them in the same score formula. The probes are drawn from the generator the
transform is called with (the defense's seeded stream), or from torch's global generator when it is None.
``chunk_size``/``memory_budget_mb`` then size the chunks of probes. ``method="exact"`` needs the whole Jacobian
and is refused with the sketch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.func import functional_call, vjp, vmap

from fedleak.defenses.gradient.base import GradientContext, Grads, last_linear, linear_param_names
from fedleak.models.functional import module_by_name, smallest_k_mask
from fedleak.models.jacobian_sketch import ProbeKind, row_norms_sketch
from fedleak.defenses.gradient.base import percentile_linear

Denominator = Literal["legacy", "notebook", "abs"]
JacobianMethod = Literal["vmap", "replicate", "loop", "sketch"]


class _Captured(Exception):
    pass


def representation_fn(
    model: nn.Module, layer: str, params: Mapping[str, torch.Tensor] | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> r``: the (flattened) input of module ``layer``; the forward stops right after capturing it."""
    module = module_by_name(model, layer)
    p = dict(params) if params is not None else {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def f(x: torch.Tensor) -> torch.Tensor:
        box: list[torch.Tensor] = []

        def hook(_m, inputs):
            box.append(inputs[0])
            raise _Captured

        h = module.register_forward_pre_hook(hook)
        try:
            functional_call(model, {**buffers, **p}, (x,))
        except _Captured:
            pass
        finally:
            h.remove()
        if not box:
            raise RuntimeError(f"module {layer!r} was not called in the forward pass")
        r = box[0]
        if r.dim() != 2:
            raise ValueError(f"Soteria needs a [B, D] input to {layer!r}, got shape {tuple(r.shape)}")
        return r

    return f


def _onehot_cotangents(idx: torch.Tensor, batch: int, dim: int, like: torch.Tensor) -> torch.Tensor:
    v = torch.zeros(idx.numel(), batch, dim, dtype=like.dtype, device=like.device)
    v[torch.arange(idx.numel()), :, idx] = 1.0
    return v


def jacobian_rows(
    f: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    chunk_size: int | None = None,
    method: Literal["vmap", "replicate", "loop"] = "vmap",
    full: bool = False,
    features: torch.Tensor | None = None,
    memory_budget_mb: float = 32.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample Jacobian rows of ``r = f(x)``: returns ``(r [B, D], norms [B, D])``, or with ``full=True``
    ``(r, J [B, D, n])`` where ``J[b, i] = ∂r[b, i]/∂x[b]`` flattened.

    ``vmap``: one VJP closure, vmapped over chunks of ``chunk_size`` one-hot cotangents. ``replicate``: the batch
    repeated ``chunk_size`` times, one forward and one backward per chunk. ``loop``: one backward pass per
    feature (reference only). ``features`` restricts the computation to those feature indices (the output then
    has ``len(features)`` columns, in that order). ``chunk_size=None`` picks the chunk from
    ``memory_budget_mb`` and the activations the backward needs per sample (:func:`auto_chunk_size`).
    """
    x = x.detach()
    B = x.shape[0]
    n = x[0].numel()
    if method == "vmap":
        r, pullback = vjp(f, x)
    else:
        with torch.no_grad():
            r = f(x)
    D = r.shape[1]
    feats = torch.arange(D) if features is None else torch.as_tensor(features, dtype=torch.long)
    K = feats.numel()
    out = torch.empty((B, K, n) if full else (B, K), dtype=x.dtype, device=x.device)

    def store(pos: torch.Tensor, rows: torch.Tensor) -> None:  # rows [k, B, n] for output columns pos
        if full:
            out[:, pos] = rows.transpose(0, 1)
        else:
            out[:, pos] = rows.norm(dim=2).T

    if method == "loop":
        xg = x.clone().requires_grad_(True)
        rr = f(xg)
        for j, i in enumerate(feats.tolist()):
            v = torch.zeros_like(rr)
            v[:, i] = 1.0
            (g,) = torch.autograd.grad(rr, xg, v, retain_graph=j < K - 1)
            store(torch.tensor([j]), g.reshape(1, B, n))
        return r.detach(), out
    if chunk_size is None:
        chunk_size = auto_chunk_size(f, x, memory_budget_mb)
    for start in range(0, K, chunk_size):
        pos = torch.arange(start, min(K, start + chunk_size))
        idx = feats[pos]
        k = idx.numel()
        if method == "vmap":
            (rows,) = vmap(pullback)(_onehot_cotangents(idx, B, D, r))
            store(pos, rows.reshape(k, B, n))
        elif method == "replicate":
            xr = x.repeat(k, *([1] * (x.dim() - 1))).requires_grad_(True)  # row j*B + b = sample b, feature idx[j]
            rr = f(xr)
            v = torch.zeros_like(rr).view(k, B, D)
            v[torch.arange(k), :, idx] = 1.0
            (g,) = torch.autograd.grad(rr, xr, v.view(k * B, D))
            store(pos, g.reshape(k, B, n))
        else:
            raise ValueError(f"unknown Jacobian method {method!r}; choose vmap, replicate or loop")
    return r.detach(), out


def saved_elements_per_sample(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> int:
    """Tensor elements autograd saves for the backward of ``f`` per sample (one vs. two samples, so that
    saved parameters, which do not grow with the batch, are not counted)."""

    def saved(xb: torch.Tensor) -> int:
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor):
            ptr = t.untyped_storage().data_ptr()
            seen[ptr] = max(seen.get(ptr, 0), t.numel())
            return t

        xb = xb.detach().clone().requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            f(xb)
        return sum(seen.values())

    one = x[:1]
    return max(1, saved(torch.cat([one, one])) - saved(one))


def auto_chunk_size(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, memory_budget_mb: float = 32.0) -> int:
    """Features per batched VJP so that ``chunk · B`` copies of the saved activations fit the budget.

    Large chunks pay off when one backward is small (LeNet: ≈ 10× faster than one pass per feature); for wide
    convolutional nets on a CPU a single-sample backward is already compute-bound and big chunks only add memory
    traffic (ConvNet-64: chunks of 4–8 run at the per-feature loop's speed, chunks of 128 ≈ 1.5× slower).
    """
    per = saved_elements_per_sample(f, x) * x.shape[0]
    budget = memory_budget_mb * 2**20 / x.element_size()
    return int(max(1, min(4096, budget // per)))


def _denominator(r: torch.Tensor, kind: Denominator, eps: float) -> torch.Tensor:
    if kind == "legacy":
        return r + 0.1
    if kind == "notebook":
        return r
    if kind == "abs":
        return r.abs() + eps
    raise ValueError(f"unknown Soteria denominator {kind!r}; choose legacy (r+0.1), notebook (r) or abs (|r|+eps)")


def prune_mask(scores: torch.Tensor, rate: float, selection: Literal["percentile", "topk"] = "percentile"):
    """Keep-mask over the last dim of ``scores`` ([D] or [B, D]) and the per-row threshold.

    ``percentile``: ``τ = numpy.percentile(S, rate)`` (linear), prune ``|S| < τ``. ``topk``: prune exactly
    ``round(rate·D/100)`` smallest ``S`` (ties broken by index).
    """
    if not 0.0 <= rate <= 100.0:
        raise ValueError(f"pruning rate is a percentage in [0, 100], got {rate}")
    flat = scores.reshape(-1, scores.shape[-1])
    masks, taus = [], []
    for s in flat:
        if selection == "percentile":
            tau = percentile_linear(s, rate)
            masks.append(~(s.double().abs() < tau))
            taus.append(float(tau))
        elif selection == "topk":
            kprune = int(round(rate * s.numel() / 100.0))
            m = smallest_k_mask(s.double(), kprune)
            masks.append(m)
            taus.append(float(s.double()[~m].max()) if kprune else float("-inf"))  # the largest pruned score
        else:
            raise ValueError(f"unknown selection {selection!r}; choose percentile or topk")
    return torch.stack(masks).reshape(scores.shape), torch.tensor(taus, dtype=torch.float64)


@dataclass
class Soteria:
    """Soteria as a gradient transform (see the module docstring for every option)."""

    rate: float = 60.0
    layer: str | None = None  # module name of the defended nn.Linear; None = the last nn.Linear
    denominator: Denominator = "legacy"
    eps: float = 1e-6
    reduction: Literal["sum", "per-sample"] = "sum"
    selection: Literal["percentile", "topk"] = "percentile"
    method: Literal["approx", "exact"] = "approx"
    jacobian: JacobianMethod = "vmap"
    chunk_size: int | None = None  # None: from memory_budget_mb (auto_chunk_size / sketch_chunk_size)
    memory_budget_mb: float = 32.0
    ridge: float = 1e-6  # exact: λ = ridge · mean(diag(J Jᵀ))
    probes: int = 64  # jacobian="sketch": number of random probes
    probe_kind: ProbeKind = "rademacher"  # jacobian="sketch": probe distribution
    name: str = "soteria"

    def __post_init__(self) -> None:
        if self.jacobian == "sketch" and self.method == "exact":
            raise ValueError("method='exact' needs the whole Jacobian (its pseudo-inverse), which the sketch does "
                             "not compute; use method='approx' with jacobian='sketch', or an exact jacobian "
                             "(vmap, replicate, loop)")

    def _row_norms(self, f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                   generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(r, ‖J_i‖)`` per sample, exact (batched VJPs) or sketched (random-probe JVPs from ``generator``)."""
        if self.jacobian != "sketch":
            return jacobian_rows(f, x, self.chunk_size, self.jacobian, memory_budget_mb=self.memory_budget_mb)
        with torch.no_grad():
            r = f(x.detach())
        norms = row_norms_sketch(f, x, self.probes, self.probe_kind, generator, self.chunk_size,
                                 self.memory_budget_mb)
        return r.detach(), norms

    def scores(self, ctx: GradientContext, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample scores ``v [B, D]`` and the representation ``r [B, D]`` (``generator``: the sketch's probes)."""
        layer = self.layer or last_linear(ctx.model)
        f = representation_fn(ctx.model, layer, ctx.parameters())
        if self.method == "approx":
            r, norms = self._row_norms(f, ctx.x, generator)
            den = _denominator(r, self.denominator, self.eps)
            return norms / den, r
        if self.method != "exact":
            raise ValueError(f"unknown Soteria method {self.method!r}; choose approx or exact")
        self.__post_init__()  # the sketch has no whole Jacobian
        r, J = jacobian_rows(f, ctx.x, self.chunk_size, self.jacobian, full=True,
                             memory_budget_mb=self.memory_budget_mb)
        G = (J.double() @ J.double().transpose(1, 2))  # [B, D, D]
        D = G.shape[-1]
        lam = self.ridge * G.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-30)
        G = G + lam[:, None, None] * torch.eye(D, dtype=G.dtype)
        L = torch.linalg.cholesky(G)
        inv_diag = torch.cholesky_inverse(L).diagonal(dim1=1, dim2=2)  # [(J Jᵀ + λI)⁻¹]_ii
        den = _denominator(r.double(), self.denominator, self.eps)
        return (1.0 / (den * inv_diag.sqrt())).to(r.dtype), r

    def __call__(self, grads: Mapping[str, torch.Tensor], ctx: GradientContext, generator=None):
        layer = self.layer or last_linear(ctx.model)
        wname, _ = linear_param_names(ctx.model, layer)
        if wname not in grads:
            raise ValueError(f"Soteria: no gradient for {wname!r}")
        v, r = self.scores(ctx, generator)
        out: Grads = dict(grads)
        g = grads[wname]
        if self.reduction == "sum":
            S = v.sum(0)
            keep, tau = prune_mask(S, self.rate, self.selection)
            out[wname] = g * keep.to(g.dtype)[None, :]
        elif self.reduction == "per-sample":
            if ctx.kind != "gradient":
                raise ValueError("Soteria per-sample masks need a FedSGD gradient (kind='gradient'), not an update")
            S = v
            keep, tau = prune_mask(S, self.rate, self.selection)
            delta = _output_cotangent(ctx, layer)  # [B, C_out] = ∂loss/∂(layer output)
            removed = (~keep).to(r.dtype) * r  # per-sample pruned part of r
            out[wname] = g - (delta.T @ removed).to(g.dtype)
        else:
            raise ValueError(f"unknown reduction {self.reduction!r}; choose sum or per-sample")
        info: dict[str, Any] = {
            "layer": layer,
            "param": wname,
            "mask": keep.cpu(),
            "scores": S.detach().cpu(),
            "threshold": tau.tolist() if tau.numel() > 1 else float(tau[0]),
            "pruned_fraction": float((~keep).double().mean()),
            "num_features": int(keep.shape[-1]),
        }
        return out, info


def _output_cotangent(ctx: GradientContext, layer: str) -> torch.Tensor:
    """``∂ loss / ∂ (output of layer)`` per sample (rows of a mean-reduced loss include its 1/B)."""
    module = module_by_name(ctx.model, layer)
    box: list[torch.Tensor] = []
    h = module.register_forward_hook(lambda _m, _i, o: box.append(o))
    try:
        params = ctx.parameters()
        x = ctx.x.detach().requires_grad_(True)  # only so that the layer output is part of a graph
        logits = functional_call(ctx.model, {**dict(ctx.model.named_buffers()), **params}, (x,))
        loss = ctx.loss_fn(logits, ctx.y)
        (delta,) = torch.autograd.grad(loss, box[0])
    finally:
        h.remove()
    return delta.detach()
