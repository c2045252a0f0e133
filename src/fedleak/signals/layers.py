"""The ``"layers"`` per-sample gradient engine of :mod:`fedleak.signals.compute` (see its docstring).

One batched forward/backward of the summed loss with forward hooks on every parameterised layer; per-sample
gradients (or their "ghost" reductions against the K updates) follow in closed form per layer type.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class _Unsupported(RuntimeError):
    pass


def _layer_plan(model: nn.Module, names: list[str]) -> list[tuple[str, nn.Module]] | None:
    """Modules owning the trainable parameters, if all are supported layers; otherwise None."""
    owners: dict[str, nn.Module] = {}
    for n in names:
        prefix, _, leaf = n.rpartition(".")
        mod = model.get_submodule(prefix) if prefix else model
        if leaf not in ("weight", "bias"):
            return None
        if isinstance(mod, nn.Conv2d):
            if mod.groups != 1 or mod.padding_mode != "zeros" or isinstance(mod.padding, str):
                return None
        elif not isinstance(mod, (nn.Linear, nn.GroupNorm)):
            return None
        owners[prefix] = mod
    # a trainable parameter also held by another module (weight tying) would miss that module's contribution
    name_set = set(names)
    for prefix, mod in owners.items():
        for leaf in ("weight", "bias"):
            p = getattr(mod, leaf, None)
            if isinstance(p, nn.Parameter) and p.requires_grad and (f"{prefix}.{leaf}" if prefix else leaf) not in name_set:
                return None
    planned = {id(m) for m in owners.values()}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    for mod in model.modules():
        if id(mod) not in planned and any(id(p) in trainable for p in mod.parameters(recurse=False)):
            return None
    return list(owners.items())


def _unfold(x: torch.Tensor, kernel, dilation, padding, stride) -> torch.Tensor:
    """``F.unfold`` (im2col) as a strided view plus one copy: [c, I, H, W] -> [c, I*kh*kw, T].

    Same layout as ``F.unfold`` (channel-major, then kernel row, kernel column); faster than ATen's CPU im2col.
    """
    (kh, kw), (dh, dw), (ph, pw), (sh, sw) = (
        _pair(kernel), _pair(dilation), _pair(padding), _pair(stride)
    )
    if ph or pw:
        x = F.pad(x, (pw, pw, ph, ph))
    c, i, h, w = x.shape
    oh = (h - dh * (kh - 1) - 1) // sh + 1
    ow = (w - dw * (kw - 1) - 1) // sw + 1
    sc, si, sy, sx = x.stride()
    patches = x.as_strided((c, i, kh, kw, oh, ow), (sc, si, sy * dh, sx * dw, sy * sh, sx * sw), x.storage_offset())
    return patches.reshape(c, i * kh * kw, oh * ow)


def _pair(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _layer_records(
    model: nn.Module,
    plan: list[tuple[str, nn.Module]],
    params: dict[str, torch.Tensor],
    rest: dict[str, torch.Tensor],
    xb: torch.Tensor,
    yb: torch.Tensor,
) -> list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]]:
    """One batched forward/backward of the summed loss: (name, layer, layer input, d loss / d layer output)."""
    c = len(xb)
    seen: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    handles = []

    def make_hook(name: str):
        def hook(mod: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            out = output.clone()  # what the rest of the net sees; later in-place ops cannot touch `output`
            seen.setdefault(name, []).append((inputs[0].detach(), output))
            return out

        return hook

    for name, mod in plan:
        handles.append(mod.register_forward_hook(make_hook(name)))
    try:
        p = {n: v.detach().requires_grad_() for n, v in params.items()}
        with torch.enable_grad():
            logits = torch.func.functional_call(model, (p, rest), (xb,))
            loss = F.cross_entropy(logits, yb, reduction="sum")  # sum: each sample's output gradient is its own
    finally:
        for h in handles:
            h.remove()
    for name, _ in plan:
        calls = seen.get(name, [])
        if len(calls) != 1 or calls[0][0].shape[0] != c or calls[0][1].shape[0] != c:
            raise _Unsupported(f"layer {name!r} ran {len(calls)} times or without a leading batch dimension")
    outs = [seen[name][0][1] for name, _ in plan]
    gouts = torch.autograd.grad(loss, outs, allow_unused=True)
    return [
        (name, mod, seen[name][0][0], torch.zeros_like(o) if g is None else g.detach())
        for (name, mod), o, g in zip(plan, outs, gouts)
    ]


def _positions(mod: nn.Module, inp: torch.Tensor, gout: torch.Tensor) -> int:
    """T: positions a layer's weight is applied at per sample (1 for a Linear on [c, I] inputs)."""
    if isinstance(mod, nn.Linear):
        return inp.numel() // (inp.shape[0] * inp.shape[-1])
    return gout[0, 0].numel()


def _materialize(mod: nn.Module, pre: str, inp: torch.Tensor, gout: torch.Tensor, weight: bool = True):
    """Closed-form per-sample gradients of one layer: yields (parameter name, [c, numel])."""
    c = inp.shape[0]
    if isinstance(mod, nn.Linear):
        go = gout.reshape(c, -1, gout.shape[-1])  # [c, T, O]
        if weight and mod.weight.requires_grad:
            yield pre + "weight", torch.bmm(go.transpose(1, 2), inp.reshape(c, -1, inp.shape[-1])).reshape(c, -1)
        if mod.bias is not None and mod.bias.requires_grad:
            yield pre + "bias", go.sum(1)
    elif isinstance(mod, nn.Conv2d):
        go = gout.reshape(c, gout.shape[1], -1)  # [c, O, T]
        if weight and mod.weight.requires_grad:
            u = _unfold(inp, mod.kernel_size, mod.dilation, mod.padding, mod.stride)  # [c, I*kh*kw, T]
            yield pre + "weight", torch.bmm(go, u.transpose(1, 2)).reshape(c, -1)  # [c, O, I*kh*kw]
        if mod.bias is not None and mod.bias.requires_grad:
            yield pre + "bias", go.sum(2)
    else:  # GroupNorm
        go = gout.reshape(c, gout.shape[1], -1)
        if mod.weight is not None and mod.weight.requires_grad:
            xhat = F.group_norm(inp, mod.num_groups, eps=mod.eps).reshape(c, inp.shape[1], -1)
            yield pre + "weight", (go * xhat).sum(2)
        if mod.bias is not None and mod.bias.requires_grad:
            yield pre + "bias", go.sum(2)


def _layer_grads(model, plan, params, rest, xb, yb):
    for name, mod, inp, gout in _layer_records(model, plan, params, rest, xb, yb):
        yield from _materialize(mod, f"{name}." if name else "", inp, gout)


# Weight gradients of a Linear/Conv2d applied at T positions cost, materialised, T MACs per entry for the batched
# GEMM, K for the GEMM against Δ, plus three memory passes over [c, P_t] (write, read for the dots, read for the
# norm) that are worth about _GHOST_MARGIN MACs on CPU. Without materialising ("ghost"): the dots are the layer
# applied with Δ_k's weights, <gW_i, ΔW_k> = Σ_t <gout_i,t, ΔW_k · in_i,t> (K·T MACs per entry, one dense conv or
# GEMM), and ||gW_i||² = Σ_{t,t'} <gout_i,t, gout_i,t'> <in_i,t, in_i,t'> (two T×T Gram matrices: T²·(I + O) MACs
# per sample for an O×I weight, i.e. T²·(I + O)/(I·O) per entry, and c·T² float64s of memory). Ghost is used when
# K·T + T²·(I + O)/(I·O) < T + K + _GHOST_MARGIN: the small-spatial layers, which hold most of the parameters of
# CIFAR nets (there the Gram term is < 0.1). Without the Gram term a single update (K = 1) chose ghost for every
# layer, and a LeNet's first conv (T = 196, 12×25 weights) cost 16x its materialised gradient and c·0.6 MB.
_GHOST_MARGIN = 120.0


def _use_ghost(K: int, T: int, weight_shape: tuple[int, ...]) -> bool:
    O, I = weight_shape[0], math.prod(weight_shape[1:])
    return K * T + T * T * (I + O) / (I * O) < T + K + _GHOST_MARGIN


def _ghost_weight(
    mod: nn.Module, inp: torch.Tensor, gout: torch.Tensor, dw: torch.Tensor, K: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dot [K, c], ||gW||² [c]) for a Linear/Conv2d weight without forming the per-sample gradients.

    ``dw``: Δ's weight block reshaped to a stacked weight of K·O output units.
    """
    c = inp.shape[0]
    if isinstance(mod, nn.Linear):
        x = inp.reshape(c, -1, inp.shape[-1])  # [c, T, I]
        go = gout.reshape(c, -1, gout.shape[-1])  # [c, T, O]
        T, O = go.shape[1], go.shape[2]
        z = F.linear(x, dw)  # [c, T, K*O]
        dot = torch.bmm(z.reshape(c, T, K, O).transpose(1, 2).reshape(c, K, T * O), go.reshape(c, T * O, 1))
        if T == 1:
            gn2 = go.double().square().sum((1, 2)) * x.double().square().sum((1, 2))
        else:
            x64, g64 = x.double(), go.double()
            gn2 = (torch.bmm(g64, g64.transpose(1, 2)) * torch.bmm(x64, x64.transpose(1, 2))).sum((1, 2))
    else:  # Conv2d
        go = gout.reshape(c, gout.shape[1], -1)  # [c, O, T]
        O, T = go.shape[1], go.shape[2]
        u = _unfold(inp, mod.kernel_size, mod.dilation, mod.padding, mod.stride)  # [c, J, T]
        J = u.shape[1]
        # the layer applied with Δ_k's weights, as one GEMM [K*O, J] @ [J, c*T] (mkldnn is slow at tiny T)
        z = (dw.reshape(K * O, J) @ u.transpose(0, 1).reshape(J, c * T)).reshape(K, O, c, T)
        dot = (z * go.transpose(0, 1).unsqueeze(0)).sum((1, 3)).T  # [c, K]
        u64, g64 = u.double(), go.double()
        gn2 = (torch.bmm(g64.transpose(1, 2), g64) * torch.bmm(u64.transpose(1, 2), u64)).sum((1, 2))
    return dot.reshape(c, K).T.double(), gn2
