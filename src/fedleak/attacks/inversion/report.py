"""Summarise a folder of ``fedleak invert`` runs into Markdown tables and comparison grids.

Layout expected: ``ROOT/<attack>/<setting>/metrics.json`` (what the sweep in ``docs/inversion.md`` writes).
Each table row is one setting: mean and median MSE, PSNR and SSIM over the images, label accuracy and the
pruned fraction. For every rate present under both ``soteria-<rate>`` and ``prune-<rate>`` the ratio of mean
(and median) MSE, Soteria over pruning, is reported: the quantity behind the paper's "up to 160x".

Command line::

    python -m fedleak.attacks.inversion.report ROOT [--grid-dir DIR] [--name cifar10]
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path
from typing import Any

import torch


def _order_key(name: str) -> tuple[int, str, float]:
    groups = ["none", "prune", "soteria", "dp", "adaptive-soteria"]
    m = re.match(r"^(.*?)-?([0-9.]+)?$", name)
    base, num = (m.group(1), m.group(2)) if m else (name, None)
    g = groups.index(base) if base in groups else len(groups)
    return g, base, float(num) if num else -1.0


def collect(root: str | Path) -> dict[str, dict[str, dict[str, Any]]]:
    """``{attack: {setting: metrics.json contents}}`` for every run found under ``root``."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for f in sorted(Path(root).glob("*/*/metrics.json")):
        attack, setting = f.parent.parent.name, f.parent.name
        out.setdefault(attack, {})[setting] = json.loads(f.read_text())
    for attack in out:
        out[attack] = dict(sorted(out[attack].items(), key=lambda kv: _order_key(kv[0])))
    return out


def _f(v: Any, fmt: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return format(v, fmt)


def markdown_table(runs: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| setting | n | MSE mean | MSE median | PSNR mean | PSNR median | SSIM mean | SSIM median | label acc. "
        "| pruned |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for setting, d in runs.items():
        s = d["summary"]
        lines.append(
            f"| {setting} | {s['mse']['n']} | {_f(s['mse']['mean'], '.4f')} | {_f(s['mse']['median'], '.4f')} | "
            f"{_f(s['psnr']['mean'], '.2f')} | {_f(s['psnr']['median'], '.2f')} | {_f(s['ssim']['mean'], '.3f')} | "
            f"{_f(s['ssim']['median'], '.3f')} | {_f(s['label_accuracy'], '.2f')} | {_f(s['pruned_fraction'], '.2f')} |"
        )
    return "\n".join(lines)


def ratio_table(runs: dict[str, dict[str, Any]]) -> str:
    rates = sorted({k.split("-", 1)[1] for k in runs if k.startswith("soteria-")}, key=float)
    lines = ["| rate | MSE Soteria / pruning (mean) | (median) | adaptive vs Soteria MSE (mean) |", "|---|---|---|---|"]
    for r in rates:
        sot, pr, ad = runs.get(f"soteria-{r}"), runs.get(f"prune-{r}"), runs.get(f"adaptive-soteria-{r}")
        if sot is None or pr is None:
            continue
        a = sot["summary"]["mse"]["mean"] / pr["summary"]["mse"]["mean"]
        b = sot["summary"]["mse"]["median"] / pr["summary"]["mse"]["median"]
        c = (ad["summary"]["mse"]["mean"] / sot["summary"]["mse"]["mean"]) if ad else None
        lines.append(f"| {r} | {a:.2f}x | {b:.2f}x | {_f(c, '.3f')}{'x' if c is not None else ''} |")
    return "\n".join(lines)


def compose_grid(runs: dict[str, dict[str, Any]], root: Path, attack: str, path: Path,
                 settings: list[str] | None = None, title: str | None = None) -> Path | None:
    from fedleak.attacks.inversion.grid import save_image_grid

    settings = settings or list(runs)
    rows, labels, truth = [], [], None
    for s in settings:
        f = root / attack / s / "reconstructions.pt"
        if not f.exists():
            continue
        d = torch.load(f)
        if truth is None:
            truth = d["truth"]
            rows.append(truth)
            labels.append("ground truth")
        mse = runs[s]["summary"]["mse"]["mean"]
        rows.append(d["reconstruction"])
        labels.append(f"{s}\nMSE {mse:.3f}")
    if truth is None:
        return None
    return save_image_grid(rows, labels, path, title=title)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root")
    ap.add_argument("--grid-dir", default=None, help="Write one comparison grid per attack here.")
    ap.add_argument("--name", default=None, help="Prefix of the grid file names (default: the root's name).")
    ap.add_argument("--grid-settings", default="none,prune-20,prune-60,soteria-20,soteria-60,soteria-80,"
                                               "dp-0.01,adaptive-soteria-80")
    a = ap.parse_args(argv)
    root = Path(a.root)
    name = a.name or root.name
    for attack, runs in collect(root).items():
        print(f"\n### {name} — {attack}\n")
        print(markdown_table(runs))
        print()
        print(ratio_table(runs))
        if a.grid_dir:
            want = [s for s in a.grid_settings.split(",") if s in runs]
            p = compose_grid(runs, root, attack, Path(a.grid_dir) / f"{name}-{attack}.png", want,
                             title=f"{name}, {attack}")
            if p:
                print(f"\n![{name} {attack}]({p})")


if __name__ == "__main__":
    main()
