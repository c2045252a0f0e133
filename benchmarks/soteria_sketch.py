"""Soteria masks from a randomised Jacobian sketch vs the exact row norms (issue #14 item 3; not a test).

Per model and image (batch of one, the inversion setting), Soteria's score ``S_i = ‖∂r_i/∂x‖ / (r_i + 0.1)``
(legacy denominator, summed over the batch) is computed from the exact rows (``jacobian_rows``, as the
``Soteria`` transform does) and from ``m`` forward-mode probes (``fedleak.models.jacobian_sketch``), then

(a) **mask agreement**: fraction of features on which ``prune_mask(S_sketch, p)`` equals ``prune_mask(S_exact, p)``
    for each probe kind, ``m`` and rate ``p``; the score formula is checked against ``Soteria`` on the first image
    of every model with at most 1024 features (the check repeats the exact computation);
(b) **speed**: the exact computation is split into as many feature blocks as there are sketch settings and
    each block is followed by one sketch run (interleaved, GPU synchronised), so both see the same load;
    with ``--repeat R`` each block and each sketch run is timed R times and the best kept (for fast models);
(c) **Inverting Gradients** against the update defended with the exact vs the sketched mask at one rate: same
    model, image, labels (known) and attack seed, only the mask differs; MSE / PSNR in [0, 1] pixel space; the
    plain attack matches every entry, ``mask-zeros`` ignores the zeroed ones. A random mask pruning as many
    features is the control: where it does as well as the exact one, (c) cannot tell masks apart.

Usage::

    python benchmarks/soteria_sketch.py                          # defaults: both models, 3 images
    python benchmarks/soteria_sketch.py --quick                  # LeNet only, seconds
    python benchmarks/soteria_sketch.py --device cuda --sketch-budget-mb 8192 --exact-chunk 256 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from fedleak.attacks.inversion import client_update, ig_config, invert  # noqa: E402
from fedleak.defenses.gradient import GradientContext, Soteria, jacobian_rows, prune_mask  # noqa: E402
from fedleak.defenses.gradient import last_linear, linear_param_names, representation_fn  # noqa: E402
from fedleak.defenses.gradient.soteria import auto_chunk_size  # noqa: E402
from fedleak.metrics.image import mse, psnr, to_pixels  # noqa: E402
from fedleak.models import build_model  # noqa: E402
from fedleak.models.jacobian_sketch import sketch_chunk_size, sketch_squared_norms  # noqa: E402
from fedleak.device import setup_device, synchronize  # noqa: E402

DEVICE = torch.device("cpu")
MEAN, STD = (0.5,), (0.25,)  # the input normalisation of benchmarks/inversion.py


def _clock() -> float:
    if DEVICE.type == "cuda":
        synchronize(DEVICE)
    return time.perf_counter()


def load_images(n: int, data_dir: str | None, seed: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``n`` CIFAR-10 test images in [0, 1] and labels, or smooth random images when no data is found."""
    d = Path(data_dir) if data_dir else ROOT.parent / "shared" / "data" / "cifar-10-subset"
    if (d / "cifar-10-batches-py").is_dir() or (d / "cifar-10-python.tar.gz").is_file():
        from fedleak.config import DataConfig
        from fedleak.data import load_dataset

        ds = load_dataset(DataConfig(name="cifar10", data_dir=str(d), normalization="none", max_train=1), 0)
        return ds.test.x[:n].float(), ds.test.y[:n].long(), f"CIFAR-10 test[0:{n}] ({d})"
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 8, 8, generator=g)
    x = torch.nn.functional.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False)
    return x, torch.randint(0, 10, (n,), generator=g), "synthetic smooth random images (no CIFAR-10 found)"


def scores(norms: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Soteria's default score: legacy denominator ``r + 0.1``, summed over the batch."""
    return (norms / (r + 0.1)).sum(0)


def _seed(base: int, image: int, kind: str, m: int) -> torch.Generator:
    return torch.Generator().manual_seed(base * 1_000_003 + image * 10_007 + (kind == "gaussian") * 101 + m)


def _best_of(repeat: int, fn):
    """``(fn(), best wall time of repeat calls)``, the GPU synchronised around each call."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t = _clock()
        out = fn()
        best = min(best, _clock() - t)
    return out, best


def run_image(f, x, image: int, chunk: int, ex_chunk: int, a) -> dict:
    """Exact and sketched scores of one image, exact blocks interleaved with the sketch runs (``chunk`` probes
    per vmapped JVP and ``ex_chunk`` features per batched VJP, both fixed per model)."""
    r0 = f(x).detach()
    D = r0.shape[1]
    settings = [(k, m) for m in a.probes for k in a.kinds]
    per_setting = -(-D // len(settings))  # ceil: one exact block per sketch setting
    block = -(-per_setting // ex_chunk) * ex_chunk  # rounded up to whole chunks
    blocks = [torch.arange(i, min(D, i + block)) for i in range(0, D, block)]
    jacobian_rows(f, x, chunk_size=ex_chunk, features=torch.arange(min(D, ex_chunk)))  # warm-up
    sketch_squared_norms(f, x, 2, "rademacher", torch.Generator().manual_seed(0), chunk=chunk)
    exact = torch.empty(1, D, dtype=x.dtype, device=x.device)
    t_exact, t_sketch, sk = 0.0, {}, {}
    for j in range(max(len(blocks), len(settings))):
        if j < len(blocks):
            (_, exact[:, blocks[j]]), sec = _best_of(
                a.repeat, lambda: jacobian_rows(f, x, chunk_size=ex_chunk, features=blocks[j]))
            t_exact += sec
        if j < len(settings):  # the same seed on every repeat: the same probes and result
            kind, m = settings[j]
            (r, q), t_sketch[(kind, m)] = _best_of(
                a.repeat, lambda: sketch_squared_norms(f, x, m, kind, _seed(a.seed, image, kind, m), chunk=chunk))
            sk[(kind, m)] = scores(q.sqrt(), r).cpu()
    s_exact = scores(exact, r0).cpu()
    agree = {}
    for (kind, m), s in sk.items():
        for p in a.rates:
            agree[(kind, m, p)] = float((prune_mask(s, p)[0] == prune_mask(s_exact, p)[0]).double().mean())
    return {"D": D, "exact_s": t_exact, "sketch_s": t_sketch, "agree": agree, "s_exact": s_exact, "s_sketch": sk}


def check_against_soteria(model, x, y, s_exact: torch.Tensor, rate: float) -> dict:
    """The score formula above vs the ``Soteria`` transform (its own exact computation) on one case."""
    layer = last_linear(model)
    wname, _ = linear_param_names(model, layer)
    grads = {k: torch.zeros_like(v) for k, v in model.named_parameters()}
    _, info = Soteria(rate=rate)(grads, GradientContext(model, x, y))
    ref = info["scores"].double()
    rel = float(((s_exact.double() - ref).abs() / ref.abs().clamp_min(1e-30)).max())
    same = bool(torch.equal(prune_mask(s_exact, rate)[0].cpu(), info["mask"].cpu()))
    return {"param": wname, "max_rel_diff": rel, "mask_equal": same}


class MaskColumns:
    """Gradient transform: Soteria's masking with a given keep-mask (so exact and sketch share one path)."""

    name = "mask-columns"

    def __init__(self, weight: str, keep: torch.Tensor) -> None:
        self.weight, self.keep = weight, keep

    def __call__(self, grads, ctx, generator=None):
        out = dict(grads)
        g = grads[self.weight]
        out[self.weight] = g * self.keep.to(g.dtype)[None, :]
        return out, {"pruned_fraction": float((~self.keep).double().mean())}


def run_ig(model_name: str, per_image: list[dict], pixels, labels, a) -> list[dict]:
    """Inverting Gradients on CPU against the exactly / sketch-masked update of each image, same attack seed."""
    torch.manual_seed(a.seed)
    model = build_model(model_name, 10, (3, 32, 32)).eval()
    wname, _ = linear_param_names(model, last_linear(model))
    rows = []
    for i, res in enumerate(per_image[: a.ig_images]):
        x = (pixels[i : i + 1] - MEAN[0]) / STD[0]
        y = labels[i : i + 1]
        keep_exact = prune_mask(res["s_exact"], a.ig_rate)[0]
        D = keep_exact.numel()
        rand = torch.ones(D, dtype=torch.bool)  # control: the same number of features, pruned at random
        rand[torch.randperm(D, generator=torch.Generator().manual_seed(a.seed + i))[: int((~keep_exact).sum())]] = False
        masks = {"none": None, "exact": keep_exact, "random (control)": rand}
        for kind in a.kinds:
            for m in a.ig_probes:
                masks[f"{kind} m={m}"] = prune_mask(res["s_sketch"][(kind, m)], a.ig_rate)[0]
        for attack in a.ig_attacks:
            for label, keep in masks.items():
                if keep is None and attack == "mask-zeros":
                    continue  # nothing zeroed: the same as the plain attack
                tr = None if keep is None else MaskColumns(wname, keep)
                view, truth = client_update(model, x, y, transform=tr, labels_known=True, mean=MEAN, std=STD)
                cfg = ig_config(iterations=a.ig_iters, seed=a.seed, mask_zeros=attack == "mask-zeros")
                t = time.perf_counter()
                rec = invert(model, view, cfg)
                pix_rec, pix_true = (to_pixels(v, view.side.denormalize) for v in (rec.x, truth.x))
                agree = float((keep == keep_exact).double().mean()) if keep is not None else float("nan")
                rows.append({"image": i, "attack": attack, "mask": label, "agreement": agree,
                             "mse": float(mse(pix_rec, pix_true)[0]), "psnr": float(psnr(pix_rec, pix_true)[0]),
                             "seconds": time.perf_counter() - t})
    return rows


def summarise(model_name: str, per_image: list[dict], a) -> dict:
    D = per_image[0]["D"]
    agree = {f"{k}/{m}/{p:g}": [r["agree"][(k, m, p)] for r in per_image] for k in a.kinds for m in a.probes
             for p in a.rates}
    exact_s = statistics.median(r["exact_s"] for r in per_image)
    sk = {m: statistics.median(r["sketch_s"][(k, m)] for r in per_image for k in a.kinds) for m in a.probes}
    speed = {m: {"sketch_s": t, "speedup": exact_s / t} for m, t in sk.items()}
    return {"model": model_name, "D": D, "images": len(per_image), "exact_s": exact_s, "agree": agree,
            "speed": speed}


def print_tables(s: dict, a) -> None:
    print(f"\n### {s['model']} (D = {s['D']}, {s['images']} images, batch 1): mask agreement with the exact mask, "
          "mean (min) over images\n")
    cols = [(k, p) for k in a.kinds for p in a.rates]
    print("| m | " + " | ".join(f"{k[:4]}. {p:g}%" for k, p in cols) + " |")
    print("|---:|" + "---:|" * len(cols))
    for m in a.probes:
        vals = [s["agree"][f"{k}/{m}/{p:g}"] for k, p in cols]
        print(f"| {m} | " + " | ".join(f"{100 * statistics.mean(v):.1f} ({100 * min(v):.1f})" for v in vals) + " |")
    print(f"\n### {s['model']}: time per image (median over images of the best of --repeat), exact batched "
          "`jacobian_rows` "
          f"(chunk {s['exact_chunk']}) = {s['exact_s']:.2f} s; sketch chunk {s['sketch_chunk']}\n")
    print("| m | sketch s | speedup vs exact |")
    print("|---:|---:|---:|")
    for m in a.probes:
        print(f"| {m} | {s['speed'][m]['sketch_s']:.3f} | {s['speed'][m]['speedup']:.1f}x |")


def recommend(s: dict, a, target: float = 0.95, rate: float = 60.0) -> dict:
    """Smallest m whose mean agreement at ``rate`` reaches ``target``, per kind."""
    out = {}
    for k in a.kinds:
        good = [m for m in a.probes if statistics.mean(s["agree"].get(f"{k}/{m}/{rate:g}", [0.0])) >= target]
        m = min(good) if good else None
        out[k] = {"m": m, "speedup": s["speed"][m]["speedup"] if m else None}
    return out


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda s: [int(v) for v in s.split(",")]  # noqa: E731
    ap.add_argument("--models", default="lenet_soteria,convnet64")
    ap.add_argument("--images", type=int, default=3, help="Images per model (each a batch of one).")
    ap.add_argument("--probes", type=ints, default=[8, 16, 32, 64, 128, 256])
    ap.add_argument("--kinds", default="rademacher,gaussian")
    ap.add_argument("--rates", type=lambda s: [float(v) for v in s.split(",")], default=[20.0, 40.0, 60.0, 80.0])
    ap.add_argument("--exact-chunk", type=int, default=0, help="jacobian_rows chunk (0: Soteria's auto choice).")
    ap.add_argument("--sketch-budget-mb", type=float, default=256.0, help="Memory budget of the sketch's chunks.")
    ap.add_argument("--sketch-chunk", type=int, default=0, help="Probes per vmapped JVP (0: from the budget).")
    ap.add_argument("--repeat", type=int, default=1, help="Time every block/setting this often, keep the best.")
    ap.add_argument("--ig-model", default="lenet_soteria", help="Model for part (c); '' skips it.")
    ap.add_argument("--ig-images", type=int, default=1)
    ap.add_argument("--ig-iters", type=int, default=300)
    ap.add_argument("--ig-probes", type=ints, default=[32, 128])
    ap.add_argument("--ig-rate", type=float, default=60.0)
    ap.add_argument("--ig-attacks", default="plain,mask-zeros", help="IG matching all entries, or ignoring zeros.")
    ap.add_argument("--data-dir", default=None, help="Folder with cifar-10-batches-py (default ../shared/data/...).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (timings synchronise the GPU; IG runs on CPU).")
    ap.add_argument("--quick", action="store_true", help="LeNet, 2 images, m up to 32, 30 IG iterations.")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    a.kinds, a.ig_attacks = a.kinds.split(","), a.ig_attacks.split(",")
    if a.quick:
        a.models, a.images, a.probes, a.ig_probes, a.ig_iters = "lenet_soteria", 2, [8, 32], [32], 30
    bad = [v for v in a.ig_probes if v not in a.probes] + [a.ig_rate] * (a.ig_rate not in a.rates)
    if bad:
        ap.error(f"--ig-probes and --ig-rate must be among --probes / --rates (not {bad})")
    if a.ig_model and a.ig_model not in a.models.split(","):
        ap.error(f"--ig-model {a.ig_model} must be one of --models ({a.models}), or '' to skip part (c)")
    return a


def main() -> None:
    global DEVICE
    a = parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        DEVICE = setup_device(a.device)  # fedleak's device check; TF32 off (docs/gpu.md)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    models = [m for m in a.models.split(",") if m]
    pixels, labels, source = load_images(a.images, a.data_dir, a.seed)
    print(f"images: {source}; device {DEVICE}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    res: dict = {"args": {k: v for k, v in vars(a).items()}, "images": source, "torch": torch.__version__,
                 "device": str(DEVICE), "threads": torch.get_num_threads(),
                 "cpu": platform.processor() or platform.machine(), "loadavg_start": os.getloadavg(), "models": {}}
    per_model: dict[str, list[dict]] = {}
    for name in models:
        torch.manual_seed(a.seed)
        model = build_model(name, 10, (3, 32, 32)).eval().to(DEVICE)
        f = representation_fn(model, last_linear(model))
        x_all = ((pixels - MEAN[0]) / STD[0]).to(DEVICE)
        chunk = a.sketch_chunk or sketch_chunk_size(f, x_all[:1], a.sketch_budget_mb)
        ex_chunk = a.exact_chunk or auto_chunk_size(f, x_all[:1])  # what Soteria picks by default
        print(f"[{name}] sketch chunk {chunk} probes ({a.sketch_budget_mb:g} MB budget), exact chunk {ex_chunk} "
              "features", flush=True)
        per_model[name] = []
        for i in range(a.images):
            r = run_image(f, x_all[i : i + 1], i, chunk, ex_chunk, a)
            per_model[name].append(r)
            print(f"[{name}] image {i}: exact {r['exact_s']:.2f} s, sketch m={a.probes[-1]} "
                  f"{r['sketch_s'][(a.kinds[0], a.probes[-1])]:.2f} s", flush=True)
        s = summarise(name, per_model[name], a)
        s["sketch_chunk"], s["exact_chunk"] = chunk, ex_chunk
        if s["D"] <= 1024:  # the check repeats the exact computation: only where it is cheap
            s["soteria_check"] = check_against_soteria(model, x_all[:1], labels[:1].to(DEVICE),
                                                       per_model[name][0]["s_exact"], 60.0)
        s["recommended"] = recommend(s, a)
        res["models"][name] = s
    for s in res["models"].values():
        print_tables(s, a)
        if "soteria_check" in s:
            c = s["soteria_check"]
            print(f"\nScore formula vs `Soteria(rate=60)` on image 0: max rel diff {c['max_rel_diff']:.1e}, "
                  f"mask equal: {c['mask_equal']}")
        for k, v in s["recommended"].items():
            print(f"{s['model']}: smallest m with mean agreement >= 95% at 60%, {k}: "
                  + (f"m = {v['m']} ({v['speedup']:.1f}x faster than exact)" if v["m"] else "none in the sweep"))
    if a.ig_model:
        rows = run_ig(a.ig_model, per_model[a.ig_model], pixels, labels, a)
        res["ig"] = rows
        print(f"\n### Inverting Gradients on {a.ig_model}, {a.ig_iters} iterations, rate {a.ig_rate:g}%, "
              "labels known, same attack seed (pixel space)\n")
        print("| image | attack | mask | agreement with exact | MSE | PSNR dB |")
        print("|---:|---|---|---:|---:|---:|")
        for r in rows:
            ag = "-" if r["agreement"] != r["agreement"] else f"{100 * r['agreement']:.1f}%"
            print(f"| {r['image']} | {r['attack']} | {r['mask']} | {ag} | {r['mse']:.4f} | {r['psnr']:.2f} |")
    res["loadavg_end"] = os.getloadavg()
    if a.json:
        for s in res["models"].values():
            s["speed"] = {str(k): v for k, v in s["speed"].items()}
        Path(a.json).write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
