"""Randomised sketch of per-sample Jacobian row norms ``‖∂f(x)[b, i] / ∂x[b]‖₂``, all features ``i`` at once.

For ``r = f(x) ∈ R^{B×D}`` with per-sample Jacobians ``J_b ∈ R^{D×n}`` (samples do not interact inside ``f``:
no BatchNorm), and a probe ``v ∈ R^n`` with independent entries of mean 0 and variance 1, one forward-mode JVP
gives ``u = J_b v`` for every feature together, and for each row ``a = J_b[i]``::

    E[u_i²] = aᵀ E[v vᵀ] a = ‖a‖²                                           (unbiased, any such v)
    Var[u_i²] = E[(a·v)⁴] − ‖a‖⁴ = 2‖a‖⁴ + (κ − 3) Σ_j a_j⁴                 (κ = E[v_j⁴])

* Gaussian probes (κ = 3): ``Var = 2‖a‖⁴`` whatever the row looks like; the mean of ``m`` probes is exactly
  ``‖a‖² · χ²_m / m`` (``u_i ~ N(0, ‖a‖²)``), relative standard deviation ``sqrt(2/m)``.
* Rademacher probes (±1, κ = 1): ``Var = 2(‖a‖⁴ − Σ_j a_j⁴) = 2 Σ_{j≠k} a_j² a_k²`` — never larger than
  the Gaussian one, smaller the more a row's mass sits on few input coordinates, and zero for a row with a
  single non-zero entry. Not χ²-distributed; the mean of ``m`` probes has variance ``Var / m``. For conv-net
  rows, spread over many pixels (``Σ_j a_j⁴ ≪ ‖a‖⁴``), the two are nearly the same
  (``benchmarks/soteria_sketch.py``).

:func:`row_norms_sketch` returns ``sqrt`` of the mean of ``m`` squared JVP entries: the squares are unbiased
(:func:`sketch_squared_norms`), the square root is biased low by Jensen (about ``1/(4m)`` relatively for
Gaussian probes), by the same factor for every feature when probes are Gaussian, so rankings are not tilted.

Cost: ``m`` JVPs (each one to two forwards) instead of ``D`` VJPs for the exact norms (``jacobian_rows``); the
``m`` probes of a chunk go through one ``torch.func.vmap`` of ``torch.func.jvp``, so the primal forward runs
once per chunk and every layer sees a ``chunk·B`` batch of tangents.

Exact shortcuts checked (the issue asks to use structure where it gives exact norms more cheaply):

* ``r = flatten(maxpool(ReLU(z)))`` (ConvNet-64): ``∂r_i/∂x = 1[z_{a(i)} > 0] ∂z_{a(i)}/∂x`` with ``a(i)``
  the arg-max. Rows with ``r_i = 0`` are exactly zero (the sketch returns exactly 0 for them too, since the
  JVP passes the same ReLU mask), but the rest are rows of the Jacobian of ``z``, a conv of the previous
  block's output ``h``: ``‖J_i‖² = wᵢᵀ (J_h J_hᵀ)_{patch} wᵢ`` (live ``i``) needs the Gram matrix of ``h``'s
  Jacobian over the patch, which costs as much as the rows themselves. Only dead features are free, and few are:
  2.0 % of ConvNet-64's 2304 features (random init, 8 CIFAR-10 test images; a 3×3 pool of GroupNorm'ed,
  about half-positive entries is rarely all zero).
* ``r = flatten(sigmoid(conv(h)))`` (the LeNets): the same, with ``σ'(z_i)`` in place of the ReLU mask, and no
  row is ever zero.
* Forward mode over the input basis gives the exact ``J`` in ``n`` JVPs; reverse mode, in ``D`` VJPs
  (``jacobian_rows``). For CIFAR shapes both are in the thousands (n = 3072, D = 2304 or 768), so neither beats
  a sketch with ``m`` in the tens.

Devices: probes are drawn on the generator's device (CPU by default) one probe at a time, then moved to
``x``'s device, so a seed gives the same probes on any device and for any chunk size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch.func import jvp, vmap

ProbeKind = Literal["rademacher", "gaussian"]
PROBE_KINDS: tuple[str, ...] = ("rademacher", "gaussian")

__all__ = [
    "PROBE_KINDS",
    "ProbeKind",
    "draw_probes",
    "row_norms_sketch",
    "sketch_chunk_size",
    "sketch_squared_norms",
    "sketch_variance",
]


def _check_kind(kind: str) -> None:
    if kind not in PROBE_KINDS:
        raise ValueError(f"unknown probe kind {kind!r}; choose rademacher or gaussian")


def draw_probes(
    count: int,
    shape: tuple[int, ...],
    kind: ProbeKind = "rademacher",
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``[count, *shape]`` probes with i.i.d. entries of mean 0 and variance 1, drawn one probe after another.

    Drawn on the generator's device (the default generator's, CPU, when ``generator`` is None) and moved to
    ``device``, so probe ``k`` of a seed is the same whatever ``count`` it was drawn in and on any device.
    """
    _check_kind(kind)
    gdev = generator.device if generator is not None else torch.device("cpu")
    out = []
    for _ in range(count):
        if kind == "gaussian":
            p = torch.randn(shape, generator=generator, dtype=dtype, device=gdev)
        else:
            p = torch.randint(0, 2, shape, generator=generator, device=gdev).to(dtype).mul_(2).sub_(1)
        out.append(p)
    if not out:
        return torch.empty((0, *shape), dtype=dtype, device=device or gdev)
    return torch.stack(out).to(device or gdev)


def sketch_variance(rows: torch.Tensor, kind: ProbeKind, probes: int = 1) -> torch.Tensor:
    """Variance of the ``probes``-probe estimate of ``‖a‖²`` for each row ``a`` of ``rows`` (last dim = input).

    Gaussian: ``2‖a‖⁴/m``; Rademacher: ``2(‖a‖⁴ − Σ_j a_j⁴)/m``. For tests and error bars.
    """
    _check_kind(kind)
    sq = rows.square()
    norm4 = sq.sum(-1).square()
    if kind == "gaussian":
        return 2 * norm4 / probes
    return 2 * (norm4 - sq.square().sum(-1)) / probes


def _activation_elements_per_sample(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> int:
    """Largest tensor that depends on the input among those ``f`` saves for backward, for one sample.

    One forward of one sample with the input requiring grad; saved tensors that require grad are activations
    (parameters of ``f`` that require grad are counted too, which only makes the chunk smaller).
    """
    sizes = [x[0].numel()]

    def pack(t: torch.Tensor):
        if t.requires_grad:
            sizes.append(t.numel())
        return t

    xb = x[:1].detach().clone().requires_grad_(True)
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        f(xb)
    return max(sizes)


def sketch_chunk_size(
    f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, memory_budget_mb: float = 256.0
) -> int:
    """Probes per vmapped JVP so that ``4 · chunk · B`` copies of the largest per-sample activation fit the budget.

    Forward mode keeps no activations for later: its working set is a few live tangents (input, output and
    workspace of the current layer), each ``chunk · B`` times a per-sample activation.
    """
    per = 4 * _activation_elements_per_sample(f, x) * x.shape[0] * x.element_size()
    return int(max(1, min(4096, memory_budget_mb * 2**20 // per)))


def _as_probes(
    probes: int | torch.Tensor, x: torch.Tensor, kind: ProbeKind, generator: torch.Generator | None
) -> tuple[int, Callable[[int, int], torch.Tensor]]:
    """Number of probes and a function ``(start, stop) -> probes[start:stop]`` on ``x``'s device and dtype."""
    if isinstance(probes, torch.Tensor):
        if probes.dim() != x.dim() + 1 or tuple(probes.shape[1:]) != tuple(x.shape):
            raise ValueError(f"explicit probes must have shape [m, {', '.join(map(str, x.shape))}], "
                             f"got {tuple(probes.shape)}")
        if probes.shape[0] < 1:
            raise ValueError("explicit probes: need at least one probe")
        p = probes.detach()
        return int(p.shape[0]), lambda a, b: p[a:b].to(device=x.device, dtype=x.dtype)
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
        raise ValueError(f"probes must be a positive integer (number of random probes), got {probes!r}")
    _check_kind(kind)
    return probes, lambda a, b: draw_probes(b - a, tuple(x.shape), kind, generator, x.dtype, x.device)


def sketch_squared_norms(
    f: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    probes: int | torch.Tensor,
    kind: ProbeKind = "rademacher",
    generator: torch.Generator | None = None,
    chunk: int | None = None,
    memory_budget_mb: float = 256.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(r, q)``: ``r = f(x)`` ``[B, D]`` and the unbiased estimates ``q[b, i]`` of ``‖∂r[b, i]/∂x[b]‖²``.

    ``probes``: a number ``m`` of random probes of ``kind`` drawn from ``generator``, or an explicit tensor
    ``[m, *x.shape]`` (probe ``k`` of sample ``b`` is ``probes[k, b]``). ``chunk`` probes go through one
    ``vmap(jvp)``; ``None`` picks it from ``memory_budget_mb`` (:func:`sketch_chunk_size`).
    """
    x = x.detach().contiguous()  # forward AD refuses primals with overlapping memory (expanded tensors)
    m, take = _as_probes(probes, x, kind, generator)
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"chunk must be a positive integer or None, got {chunk!r}")
    k_max = min(m, chunk or sketch_chunk_size(f, x, memory_budget_mb))

    def push(tangents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return vmap(lambda v: jvp(f, (x,), (v,)), out_dims=(None, 0))(tangents)

    r: torch.Tensor | None = None
    acc: torch.Tensor | None = None
    for start in range(0, m, k_max):
        r, u = push(take(start, min(m, start + k_max)))
        if u.dim() != 3 or u.shape[1] != x.shape[0]:
            raise ValueError(f"f must map [B, ...] to [B, D]; got output shape {tuple(u.shape[1:])} for "
                             f"input {tuple(x.shape)}")
        part = u.square().sum(0)
        acc = part if acc is None else acc + part
    assert r is not None and acc is not None
    return r.detach(), acc / m


def row_norms_sketch(
    f: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    probes: int | torch.Tensor,
    kind: ProbeKind = "rademacher",
    generator: torch.Generator | None = None,
    chunk: int | None = None,
    memory_budget_mb: float = 256.0,
) -> torch.Tensor:
    """Estimated ``‖∂f(x)[b, i]/∂x[b]‖₂`` ``[B, D]``: the square root of :func:`sketch_squared_norms`."""
    return sketch_squared_norms(f, x, probes, kind, generator, chunk, memory_budget_mb)[1].sqrt()
