"""Run an :class:`~fedleak.attacks.inversion.presets.InvertSpec`: victim -> defence -> attack -> evaluation.

The three layers stay apart: :func:`~fedleak.attacks.inversion.victim.client_update` produces the
:class:`ServerView` (the only input of the attack) and the :class:`GroundTruth`, which only the evaluation
below reads. Outputs (``out_dir``): ``metrics.json`` (spec, summary, per-image rows), ``metrics.csv``
(per-image rows), ``grid.png`` (ground truth vs reconstruction) and ``reconstructions.pt`` (pixel tensors, to
compose comparison grids).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedleak.attacks.inversion.adaptive import adaptive_config, read_out_features
from fedleak.attacks.inversion.grid import save_image_grid
from fedleak.attacks.inversion.optimize import invert
from fedleak.attacks.inversion.parallel import ParallelInversion
from fedleak.attacks.inversion.presets import InvertSpec
from fedleak.attacks.inversion.victim import LocalHyper, ServerView, client_update
from fedleak.defenses import build_transform
from fedleak.defenses.gradient import last_linear, representation_fn
from fedleak.device import setup_device, to_device
from fedleak.metrics.image import aggregate, image_metrics, label_accuracy, logit_mse, to_pixels
from fedleak.signals.store import StoreError, make_dirs, write_failed

CSV_FIELDS = [
    "batch", "index", "label", "predicted_label", "mse", "psnr", "ssim", "logit_mse", "match_cost",
    "pruned_fraction", "readout_leaked_fraction", "readout_rel_error", "seconds",
]


def load_images(spec: InvertSpec, dataset=None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Pixels ``[N, C, H, W]`` in [0, 1], labels and the number of classes of the requested images."""
    if dataset is None:
        from fedleak.config import DataConfig
        from fedleak.data import load_dataset

        cfg = DataConfig(name=spec.dataset, data_dir=spec.data_dir, normalization="none",
                         max_train=None if spec.split == "train" else 1)
        dataset = load_dataset(cfg, 0)
    split = dataset.test if spec.split == "test" else dataset.train
    idx = spec.image_indices()
    bad = [i for i in idx if not 0 <= i < len(split)]
    if bad:
        raise ValueError(f"image indices {bad[:5]} outside the {spec.split} split (0..{len(split) - 1})")
    sel = torch.as_tensor(idx)
    return split.x[sel].float(), split.y[sel].long(), int(dataset.num_classes)


def _defense(spec: InvertSpec):
    if spec.defense == "none":
        return None
    return build_transform(spec.defense, **spec.defense_params)


def _defended_layer(spec: InvertSpec, model) -> str:
    return spec.defense_params.get("layer") or last_linear(model)


def _readout_stats(view: ServerView, model, x: torch.Tensor, layer: str) -> tuple[float, float]:
    """Leaked fraction and relative error of the closed-form read-out (evaluation side: uses the truth)."""
    try:
        ro = read_out_features(view, model, layer)
    except ValueError:
        return math.nan, math.nan
    r_true = representation_fn(model, layer, view.params)(x).detach()[0].double()
    k = ro.known
    if not bool(k.any()):
        return 0.0, math.nan
    err = float((ro.r[0].double()[k] - r_true[k]).norm() / r_true[k].norm().clamp_min(1e-30))
    return ro.leaked_fraction, err


@dataclass
class _Session:
    """What every batch of one inversion run shares (client side and evaluation)."""

    spec: InvertSpec
    model: torch.nn.Module
    pixels: torch.Tensor
    labels: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    transform: Any
    local: LocalHyper | None
    gen: torch.Generator
    layer: str

    def normalize(self, xpix: torch.Tensor) -> torch.Tensor:
        """Pixels to model input with the spec's (mean, std), broadcast over the images' channels."""
        c = self.pixels.shape[1]
        mean = torch.tensor(self.mean).expand(c).view(1, -1, 1, 1)
        std = torch.tensor(self.std).expand(c).view(1, -1, 1, 1)
        return (xpix - mean) / std


@dataclass
class _Victim:
    """One attacked update: its batch, the server's view, the ground truth and the attack settings."""

    batch: int
    positions: list[int]
    xpix: torch.Tensor
    y: torch.Tensor
    view: ServerView
    truth: Any
    cfg: Any
    feature_target: torch.Tensor | None


@dataclass
class _Results:
    rows: list[dict[str, Any]] = field(default_factory=list)
    batches: list[dict[str, Any]] = field(default_factory=list)
    truth: list[torch.Tensor] = field(default_factory=list)
    reconstructions: list[torch.Tensor] = field(default_factory=list)


def run_inversion(
    spec: InvertSpec,
    dataset=None,
    out_dir: str | Path | None = None,
    progress: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Attack every requested image (``batch_size`` per update) and evaluate; write outputs to ``out_dir``.

    ``on_start(total_iterations)`` is called once before the attack, ``progress(k)`` after every ``k`` optimiser
    iterations (the CLI hangs a progress bar on them). ``device``: where the attack (the server side) runs; the
    client's update, its defence noise and the evaluation stay on the CPU, and so do the attack's random draws
    (moved to the device), so a seed gives the same starting points on any device.
    """
    if out_dir is not None:
        prepare_out_dir(out_dir)  # before any data is loaded or any iteration runs
    dev = setup_device(device)
    t_start = time.perf_counter()
    old_threads = torch.get_num_threads()
    if spec.threads:
        torch.set_num_threads(spec.threads)
    try:
        ses = _session(spec, dataset)
        indices = spec.image_indices()
        batches = [list(range(i, min(i + spec.batch_size, len(indices)))) for i in range(0, len(indices), spec.batch_size)]
        if on_start is not None:
            on_start(len(batches) * spec.attack.restarts * spec.attack.iterations)
        parallel = (spec.parallel > 1 and spec.batch_size == 1 and spec.local_steps == 0
                    and spec.attack.optimizer in ("adam", "sgd") and spec.attack.early_stop is None
                    and dev.type == "cpu"  # the stacked attack is CPU-only; elsewhere one update at a time
                    and spec.bn_mode == "eval")  # vmapped one-image passes: no batch statistics
        step = spec.parallel if parallel else 1
        res = _Results()
        for g in range(0, len(batches), step):
            t0 = time.perf_counter()
            victims = [_victim(ses, b, batches[b]) for b in range(g, min(g + step, len(batches)))]  # client side
            recs = _attack(ses.model, victims, progress, dev)  # server side: views only
            seconds_each = (time.perf_counter() - t0) / len(victims)
            for v, rec in zip(victims, recs):  # evaluation: sees the ground truth
                _evaluate(ses, v, rec, seconds_each, indices, res)
        result = {
            "spec": spec.model_dump(mode="json"),
            "summary": _summarize(res, batches, len(indices), t_start),
            "images": res.rows,
            "batches": res.batches,
            "versions": {"torch": torch.__version__},
        }
        truth_px, rec_px = torch.cat(res.truth), torch.cat(res.reconstructions)
        if out_dir is not None:
            write_outputs(result, truth_px, rec_px, out_dir)
        result["pixels"] = {"truth": truth_px, "reconstruction": rec_px}
        return result
    finally:
        torch.set_num_threads(old_threads)


def _session(spec: InvertSpec, dataset) -> _Session:
    from fedleak.models import build_model

    mean, std = spec.mean_std()
    pixels, labels, num_classes = load_images(spec, dataset)
    if len(mean) not in (1, pixels.shape[1]):
        raise ValueError(f"normalisation {spec.normalization!r} has {len(mean)} channels, images have "
                         f"{pixels.shape[1]}")
    torch.manual_seed(spec.model_seed)
    model = build_model(spec.model, num_classes, tuple(pixels.shape[1:]), **spec.model_options).eval()
    transform = _defense(spec)
    local = LocalHyper(spec.local_steps, spec.local_lr, spec.local_batch_size) if spec.local_steps else None
    gen = torch.Generator().manual_seed(spec.seed)
    return _Session(spec, model, pixels, labels, mean, std, transform, local, gen, _defended_layer(spec, model))


def _victim(ses: _Session, b: int, pos: list[int]) -> _Victim:
    """The client's round on batch ``b`` and the attack settings for it (adaptive variants included)."""
    spec, model, layer = ses.spec, ses.model, ses.layer
    xpix, y = ses.pixels[pos], ses.labels[pos]
    view, truth = client_update(model, ses.normalize(xpix), y, transform=ses.transform, local=ses.local,
                                labels_known=spec.labels_known, mean=ses.mean, std=ses.std, generator=ses.gen,
                                bn_mode=spec.bn_mode)
    cfg = spec.attack.model_copy(update={"seed": spec.seed * 100_003 + b})
    feature_target = None
    if spec.adaptive in ("drop", "readout"):
        cfg = adaptive_config(cfg, model, layer, feature_weight=0.0, drop_layer=True)
    elif spec.adaptive == "mask":
        cfg = cfg.model_copy(update={"mask_zeros": True})
    if spec.adaptive == "readout":
        feature_target = read_out_features(view, model, layer).target()
        cfg = cfg.model_copy(update={"feature_weight": spec.feature_weight, "feature_layer": layer})
    return _Victim(b, pos, xpix, y, view, truth, cfg, feature_target)


def _attack(model, victims: list[_Victim], progress: Callable[[int], None] | None, dev: torch.device) -> list[Any]:
    if dev.type != "cpu":  # a copy of the model and the views on the device; reconstructions come back to the CPU
        model = copy.deepcopy(model).to(dev)
        victims = [dataclasses.replace(v, view=_view_on(v.view, dev), feature_target=_target_on(v.feature_target, dev))
                   for v in victims]
        recs = _attack(model, victims, progress, torch.device("cpu"))
        return [dataclasses.replace(r, x=r.x.cpu(), labels=r.labels.cpu()) for r in recs]
    if len(victims) > 1:
        fts = [v.feature_target for v in victims]
        return ParallelInversion(model, [v.view for v in victims], victims[0].cfg, seeds=[v.cfg.seed for v in victims],
                                 feature_targets=fts if fts[0] is not None else None).run(progress)
    v = victims[0]
    return [invert(model, v.view, v.cfg, progress=progress, feature_target=v.feature_target)]


def _view_on(view: ServerView, dev: torch.device) -> ServerView:
    side = dataclasses.replace(view.side, labels=to_device(view.side.labels, dev))
    return dataclasses.replace(view, params=to_device(view.params, dev), buffers=to_device(view.buffers, dev),
                               update=to_device(view.update, dev), side=side)


def _target_on(ft: Any, dev: torch.device) -> Any:
    return None if ft is None else dataclasses.replace(ft, r=ft.r.to(dev), known=ft.known.to(dev))


def _evaluate(ses: _Session, v: _Victim, rec, seconds_each: float, indices: list[int], res: _Results) -> None:
    model, pos = ses.model, v.positions
    rec_pix = to_pixels(rec.x, v.view.side.denormalize)
    met = image_metrics(rec_pix, v.xpix, match=len(pos) > 1)
    order = torch.as_tensor(met["order"])
    lmse = logit_mse(lambda t: model(t), rec.x[order], v.truth.x).tolist()
    acc = label_accuracy(rec.labels, v.truth.y)
    pruned = _pruned_fraction(v.truth.transform_info)
    leaked, rel_err = (_readout_stats(v.view, model, v.truth.x, ses.layer)
                       if v.view.kind == "gradient" and len(pos) == 1 else (math.nan, math.nan))
    for j, p in enumerate(pos):
        res.rows.append({
            "batch": v.batch, "index": indices[p], "label": int(v.y[j]),
            "predicted_label": int(rec.labels[order[j]]),
            "mse": met["mse"][j], "psnr": met["psnr"][j], "ssim": met["ssim"][j], "logit_mse": lmse[j],
            "match_cost": rec.score, "pruned_fraction": pruned, "readout_leaked_fraction": leaked,
            "readout_rel_error": rel_err, "seconds": seconds_each / len(pos),
        })
    res.batches.append({"batch": v.batch, "label_accuracy": acc, "label_source": rec.label_source,
                        "trial_scores": rec.trial_scores, "best_trial": rec.best_trial,
                        "iterations_run": rec.iterations_run, "history": rec.history})
    res.truth.append(v.xpix)
    res.reconstructions.append(rec_pix[order])


def _summarize(res: _Results, batches: list[list[int]], n_images: int, t_start: float) -> dict[str, Any]:
    rows = res.rows
    summary = {k: aggregate(r[k] for r in rows) for k in ("mse", "psnr", "ssim", "logit_mse")}
    summary["label_accuracy"] = float(sum(s["label_accuracy"] * len(p) for s, p in zip(res.batches, batches))
                                      / n_images)
    summary["pruned_fraction"] = aggregate(r["pruned_fraction"] for r in rows)["mean"]
    summary["readout_leaked_fraction"] = aggregate(r["readout_leaked_fraction"] for r in rows)["mean"]
    summary["readout_rel_error"] = aggregate(r["readout_rel_error"] for r in rows)
    summary["seconds"] = time.perf_counter() - t_start
    return summary


def _pruned_fraction(info: dict[str, Any]) -> float:
    if "pruned_fraction" in info:
        return float(info["pruned_fraction"])
    return math.nan


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def prepare_out_dir(out_dir: str | Path) -> Path:
    """The output folder, checked before the attack: a usable path name, no file in the way (at it or above it),
    created and writable (a probe file is written and removed). A one-line StoreError names the path otherwise."""
    text = str(out_dir)
    if not text.strip() or "\x00" in text:
        raise StoreError(f"--out {text!r} is not a usable folder name; give a path such as runs/invert-1")
    out = make_dirs(Path(out_dir))
    try:
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise write_failed(out, e) from None
    return out


def write_outputs(result: dict[str, Any], truth: torch.Tensor, rec: torch.Tensor, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    make_dirs(out)
    (out / "metrics.json").write_text(json.dumps(_json_safe(result), indent=1))
    with (out / "metrics.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in result["images"]:
            w.writerow({k: r[k] for k in CSV_FIELDS})
    spec = result["spec"]
    rate = spec["defense_params"].get("rate", spec["defense_params"].get("scale", ""))
    title = f"{spec['name']}: defense={spec['defense']} {rate}".strip()
    if spec.get("adaptive", "none") != "none":
        title += f", adaptive={spec['adaptive']}"
    cols = [f"#{r['index']}" for r in result["images"]]
    save_image_grid([truth, rec], ["ground truth", "reconstruction"], out / "grid.png", cols, title=title)
    torch.save({"truth": truth, "reconstruction": rec, "indices": [r["index"] for r in result["images"]]},
               out / "reconstructions.pt")
    return out
