"""Many independent one-image FedSGD attacks run as one vectorised optimisation.

Attacking ``N`` images one after the other costs ``N`` small double-backward passes per iteration, which on
small models is dominated by per-call overhead. :class:`ParallelInversion` stacks the ``N`` dummy images and
computes each image's parameter gradient with ``torch.func.vmap(torch.func.grad(loss))`` — so every image is
still matched against *its own* shared gradient with *its own* labels — and sums the ``N`` independent
objectives. Adam and SGD act element-wise and the objectives do not share variables, so each image follows
exactly the trajectory of its own sequential attack (same initialisation seeds, same schedule): the result
equals :class:`~fedleak.attacks.inversion.optimize.GradientInversion` run once per view, up to floating-point
rounding. L-BFGS couples all variables (curvature pairs, step lengths), so it is not offered here; neither are
early stopping and FedAvg updates (the runner falls back to the sequential engine for those).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from fedleak.attacks.inversion.costs import GradientMatcher
from fedleak.attacks.inversion.optimize import (
    FeatureTarget,
    InversionConfig,
    Reconstruction,
    init_images,
    make_optimizer,
    make_scheduler,
    resolve_labels,
    trial_generator,
)
from fedleak.attacks.inversion.victim import ServerView, soft_cross_entropy
from fedleak.defenses.gradient import last_linear, representation_fn


def supports_parallel(cfg: InversionConfig, views: Sequence[ServerView]) -> bool:
    return (
        cfg.optimizer in ("adam", "sgd")
        and cfg.early_stop is None
        and all(v.kind == "gradient" and v.side.num_images == 1 for v in views)
    )


def _tv_per_image(x: torch.Tensor, kind: str) -> torch.Tensor:
    dw = x[..., :, 1:] - x[..., :, :-1]
    dh = x[..., 1:, :] - x[..., :-1, :]
    if kind == "aniso":
        return dw.abs().flatten(1).mean(1) + dh.abs().flatten(1).mean(1)
    return torch.sqrt(dw[..., :-1, :] ** 2 + dh[..., :, :-1] ** 2 + 1e-8).flatten(1).mean(1)


class ParallelInversion:
    """``N`` independent attacks (one image each) on the same model state, optimised together."""

    def __init__(
        self,
        model: nn.Module,
        views: Sequence[ServerView],
        cfg: InversionConfig,
        seeds: Sequence[int] | None = None,
        feature_targets: Sequence[FeatureTarget] | None = None,
    ) -> None:
        if not views:
            raise ValueError("no views to attack")
        if not supports_parallel(cfg, views):
            raise ValueError("parallel attacks need Adam/SGD, no early stop, and one-image FedSGD gradients")
        first = views[0].params
        for v in views[1:]:
            if v.params.keys() != first.keys() or any(not torch.equal(v.params[k], first[k]) for k in first):
                raise ValueError("parallel attacks need every view to share the same model state")
        self.model, self.views, self.cfg = model, list(views), cfg
        self.N = len(views)
        self.seeds = list(seeds) if seeds is not None else [cfg.seed] * self.N
        self.side = views[0].side
        self.params = {k: v.detach() for k, v in first.items()}
        self.buffers = dict(views[0].buffers)
        matchers = [GradientMatcher(v.update, cfg.cost, cfg.layer_weights, cfg.exclude, cfg.mask_zeros) for v in views]
        m0 = matchers[0]
        self.names, self.cost = m0.names, cfg.cost
        self.T = torch.stack([m.t for m in matchers])  # [N, P]
        self.seg, self.w_layer = m0.seg, m0.w_layer
        self.W = None if m0.w is None else torch.stack([m.w for m in matchers])
        self.scale = getattr(m0, "scale", 1.0)
        if cfg.cost == "sim":
            self.T_norm = torch.stack([m.t_norm for m in matchers])
        elif cfg.cost == "simlocal":
            self.T_norms = torch.stack([m.t_norms for m in matchers])  # [N, L]
        labels = [resolve_labels(v, model, cfg) for v in views]
        self.label_source = labels[0][1]
        self.labels = None if labels[0][0] is None else torch.stack([lab for lab, _ in labels])  # [N, 1]
        lo, hi = self.side.pixel_bounds()
        dev = next(iter(views[0].params.values())).device  # the pixel box lives where the attack runs
        self.lo, self.hi = lo.view(1, -1, 1, 1).to(dev), hi.view(1, -1, 1, 1).to(dev)
        self.feature_targets = feature_targets
        if cfg.feature_weight > 0:
            if feature_targets is None or len(feature_targets) != self.N:
                raise ValueError("feature_weight > 0 needs one feature target per view")
            self.F_r = torch.cat([ft.r for ft in feature_targets])  # [N, D]
            self.F_k = torch.stack([ft.known.reshape(-1) for ft in feature_targets]).to(self.F_r.dtype)
        self._feat_layer = cfg.feature_layer or last_linear(model)

        names, buffers = self.names, self.buffers
        selected = {n: self.params[n] for n in names}  # differentiated
        rest = {k: v for k, v in self.params.items() if k not in selected}  # excluded tensors: constants

        def loss_one(p_sel, x, y):
            return soft_cross_entropy(functional_call(model, {**buffers, **rest, **p_sel}, (x[None],)), y[None])

        def grads_one(x, y):
            g = grad(loss_one)(selected, x, y)
            return torch.cat([g[n].reshape(-1) for n in names])

        self._grads = vmap(grads_one)

    # -- objective ----------------------------------------------------------------------------------------
    def costs(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-image matching cost ``[N]``."""
        G = self._grads(x, y)  # [N, P]
        T, W = self.T, self.W
        if self.cost == "sim":
            gw = G if W is None else G * W
            return 1.0 - (gw * T).sum(1) / (torch.sqrt((gw * G).sum(1)) * self.T_norm).clamp_min(1e-30)
        if self.cost == "simlocal":
            gm = G if W is None else G * W
            L = self.T_norms.shape[1]
            dots = torch.zeros(self.N, L, dtype=G.dtype).index_add(1, self.seg, gm * T)
            gn = torch.sqrt(torch.zeros(self.N, L, dtype=G.dtype).index_add(1, self.seg, gm * G))
            cos = dots / (gn * self.T_norms).clamp_min(1e-10)
            return (1.0 - cos * self.w_layer).sum(1)
        d = G - T
        d = d.pow(2) if self.cost == "l2" else d.abs()
        return d.sum(1) * self.scale if W is None else (d * W).sum(1)

    def _targets(self, y_logits: torch.Tensor | None) -> torch.Tensor:
        if self.labels is not None:
            return self.labels[:, 0]
        return y_logits.softmax(-1)  # type: ignore[union-attr]

    def objectives(self, x: torch.Tensor, y_logits: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-image total objective ``[N]``, per-image matching cost ``[N]``)."""
        match = self.costs(x, self._targets(y_logits))
        total = match
        if self.cfg.tv > 0:
            total = total + self.cfg.tv * _tv_per_image(x, self.cfg.tv_kind)
        if self.cfg.feature_weight > 0:
            r = representation_fn(self.model, self._feat_layer, self.params)(x)
            err = ((r - self.F_r) * self.F_k).pow(2).sum(1) / (self.F_r * self.F_k).pow(2).sum(1).clamp_min(1e-12)
            total = total + self.cfg.feature_weight * err
        return total, match

    # -- optimisation -------------------------------------------------------------------------------------
    def run_trial(self, trial: int, progress: Callable[[int], None] | None = None):
        c = self.cfg
        shape = (1, *self.side.input_shape)
        xs, ys = [], []
        for s in self.seeds:  # the same draws, in the same order, as each sequential attack
            gen = trial_generator(s, trial)
            xs.append(init_images(c, shape, gen))
            if self.labels is None:
                ys.append(torch.randn(1, self.side.num_classes, generator=gen))
        x = torch.cat(xs).requires_grad_(True)
        with torch.no_grad():
            if c.boxed and c.clip_start:
                x.copy_(torch.maximum(torch.minimum(x, self.hi), self.lo))
        y_logits = torch.cat(ys).requires_grad_(True) if ys else None
        variables = [x] + ([y_logits] if y_logits is not None else [])
        opt = make_optimizer(c, variables)
        sched = make_scheduler(c, opt)
        best_val = torch.full((self.N,), math.inf, dtype=torch.float64)
        best_x = x.detach().clone()
        best_y = y_logits.detach().clone() if y_logits is not None else None
        histories: list[list[tuple[int, float]]] = [[] for _ in range(self.N)]
        log_every = max(1, c.iterations // 100)
        for it in range(c.iterations):
            opt.zero_grad(set_to_none=True)
            total, _ = self.objectives(x, y_logits)
            grads = torch.autograd.grad(total.sum(), variables)
            for v, g in zip(variables, grads):
                v.grad = g
            if c.signed:
                x.grad.sign_()  # type: ignore[union-attr]
            vals = total.detach().double()
            if c.keep_best:
                better = vals < best_val
                best_val = torch.where(better, vals, best_val)
                best_x[better] = x.detach()[better]
                if best_y is not None:
                    best_y[better] = y_logits.detach()[better]  # type: ignore[union-attr]
            if it % log_every == 0 or it == c.iterations - 1:
                for i in range(self.N):
                    histories[i].append((it, float(vals[i])))
            opt.step()
            if sched is not None:
                sched.step()
            if c.boxed:
                with torch.no_grad():
                    x.copy_(torch.maximum(torch.minimum(x, self.hi), self.lo))
            if progress is not None:
                progress(self.N)
        x_final = x.detach()
        y_final = y_logits.detach() if y_logits is not None else None
        if c.keep_best:
            with torch.enable_grad():
                final_tot, _ = self.objectives(x_final, y_final)
            use_best = ~(final_tot.detach().double() <= best_val)
            x_final = torch.where(use_best.view(-1, 1, 1, 1), best_x, x_final)
            if y_final is not None and best_y is not None:
                y_final = torch.where(use_best.view(-1, 1), best_y, y_final)
        return x_final, y_final, self._scores(x_final, y_final), histories, c.iterations

    def _scores(self, x: torch.Tensor, y_logits: torch.Tensor | None) -> list[float]:
        if self.cfg.scoring == "tv":
            s = _tv_per_image(x, self.cfg.tv_kind)
        else:
            with torch.enable_grad():
                s = self.costs(x.detach(), self._targets(y_logits)).detach()
        return [float(v) if math.isfinite(float(v)) else math.inf for v in s]

    def run(self, progress: Callable[[int], None] | None = None) -> list[Reconstruction]:
        t0 = time.perf_counter()
        trials = [self.run_trial(k, progress) for k in range(self.cfg.restarts)]
        out = []
        seconds = (time.perf_counter() - t0) / self.N
        for i in range(self.N):
            scores = [t[2][i] for t in trials]
            best = min(range(len(scores)), key=lambda k: (scores[k], k))
            x, y_logits, _, hist, n_it = trials[best]
            labels = self.labels[i] if self.labels is not None else y_logits[i : i + 1].argmax(-1)  # type: ignore
            out.append(Reconstruction(
                x=x[i : i + 1].clone(), labels=labels.clone(), label_source=self.label_source, score=scores[best],
                trial_scores=scores, best_trial=best, history=hist[i], iterations_run=n_it, seconds=seconds,
            ))
        return out
