"""``fedleak invert``: run a gradient-inversion experiment from a preset, with overrides."""

from __future__ import annotations

import math
import os
from enum import Enum
from pathlib import Path
from typing import Any, List, Optional

import typer


class DefenseChoice(str, Enum):
    none = "none"
    soteria = "soteria"
    prune = "prune"
    prune_global = "prune-global"
    dp_gaussian = "dp-gaussian"
    dp_laplace = "dp-laplace"
    perturb = "perturb"
    quant = "quant"
    sparse = "sparse"


class AttackChoice(str, Enum):
    preset = "preset"
    dlg = "dlg"
    idlg = "idlg"
    ig = "ig"


class AdaptiveChoice(str, Enum):
    none = "none"
    drop = "drop"
    mask = "mask"
    readout = "readout"


def build_spec(
    preset: str,
    *,
    defense: str | None = None,
    pruning_rate: float | None = None,
    noise_scale: float | None = None,
    clip: float | None = None,
    defense_params: list[str] | None = None,
    attack: str = "preset",
    adaptive: str | None = None,
    overrides: list[str] | None = None,
    **fields: Any,
):
    """The preset with command-line overrides applied and validated (raises ``FedleakError``).

    ``overrides`` (``--set``) and ``defense_params`` (``--defense-param``) are ``key=value`` strings parsed by the
    one override parser, :func:`fedleak.config.apply_override`; ``--set tv=1e-3`` is short for ``attack.tv``.
    """
    from pydantic import ValidationError

    from fedleak.attacks.inversion.presets import InvertSpec
    from fedleak.config import apply_override

    from fedleak.attacks.inversion.optimize import dlg_config, idlg_config, ig_config
    from fedleak.attacks.inversion.presets import get_preset
    from fedleak.errors import FedleakError

    spec = get_preset(preset)
    data = spec.model_dump()
    if attack != "preset":
        data["attack"] = {"dlg": dlg_config, "idlg": idlg_config, "ig": ig_config}[attack]().model_dump()
    if defense is not None and defense != data["defense"]:
        data["defense"] = defense
        data["defense_params"] = {}
    params = dict(data["defense_params"])
    if pruning_rate is not None:
        if data["defense"] not in ("soteria", "prune", "prune-global"):
            raise FedleakError(f"--pruning-rate applies to soteria/prune/prune-global, not {data['defense']!r}")
        params["rate"] = pruning_rate
    if noise_scale is not None or clip is not None:
        if not data["defense"].startswith("dp-"):
            raise FedleakError("--noise-scale/--clip apply to dp-gaussian/dp-laplace")
        if noise_scale is not None:
            params["scale"] = noise_scale
        if clip is not None:
            params["clip"] = clip
    for item in defense_params or []:
        apply_override(params, item, InvertSpec, flag="--defense-param", example="rate=40", form="key=value")
    data["defense_params"] = params
    if adaptive is not None:
        data["adaptive"] = adaptive
    for k, v in fields.items():
        if v is not None:
            if k == "iterations" or k == "restarts":
                data["attack"][k] = v
            else:
                data[k] = v
    for item in overrides or []:
        key = item.split("=", 1)[0].strip()
        if "." not in key and key in data["attack"] and key not in data:
            item = f"attack.{item.lstrip()}"  # --set tv=1e-3 is short for attack.tv
        apply_override(data, item, InvertSpec, example="attack.tv=1e-3", form="key=value")
    try:
        spec = type(spec).model_validate(data)
    except ValidationError as err:
        msgs = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in err.errors())
        raise FedleakError(f"invalid inversion settings: {msgs}") from None
    if spec.defense != "none":  # validate the defence parameters early, with a clear message
        from fedleak.defenses import build_transform

        try:
            build_transform(spec.defense, **spec.defense_params)
        except ValueError as e:
            raise FedleakError(str(e)) from None
    return spec


def invert_command(
    preset: str = typer.Option("soteria-gs", "--preset", "-p", help="dlg, idlg, soteria-dlg, soteria-gs, ig-cifar."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (metrics.json, metrics.csv, grid.png)."),
    defense: Optional[DefenseChoice] = typer.Option(None, "--defense", help="Client-side defense of the shared update (any defense that changes it; see docs/defenses.md)."),
    pruning_rate: Optional[float] = typer.Option(None, "--pruning-rate", help="Soteria/pruning rate in percent."),
    noise_scale: Optional[float] = typer.Option(None, "--noise-scale", help="DP noise std (Gaussian) or b (Laplace)."),
    clip: Optional[float] = typer.Option(None, "--clip", help="DP: clip the update to this L2 norm."),
    defense_param: List[str] = typer.Option([], "--defense-param", help="Defence option key=value (repeatable), "
                                            "e.g. denominator=abs, method=exact, reduction=per-sample, layer=fc."),
    attack: AttackChoice = typer.Option(AttackChoice.preset, "--attack", help="Replace the preset's attack."),
    adaptive: Optional[AdaptiveChoice] = typer.Option(None, "--adaptive", help="Adaptive attack against Soteria."),
    images: Optional[int] = typer.Option(None, "--images", "-n", help="Number of images to attack."),
    start_index: Optional[int] = typer.Option(None, "--start-index", help="First image index of the split."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per shared update."),
    iterations: Optional[int] = typer.Option(None, "--iterations", help="Optimiser iterations (fewer than preset)."),
    restarts: Optional[int] = typer.Option(None, "--restarts", help="Independent trials per update."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="cifar10, cifar100, mnist, ..."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Folder with the dataset files."),
    model: Optional[str] = typer.Option(None, "--model", help="Model registry name."),
    labels: Optional[str] = typer.Option(None, "--labels", help="known or unknown (declared side information)."),
    local_steps: Optional[int] = typer.Option(None, "--local-steps", help="FedAvg local steps (0 = FedSGD)."),
    local_lr: Optional[float] = typer.Option(None, "--local-lr", help="FedAvg local learning rate."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the attack and the defence noise."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads."),
    device: str = typer.Option("cpu", "--device", help="Where the attack runs: cpu, cuda or cuda:N (TF32 off; the "
                               "client update, its defence and the random draws stay on the CPU)."),
    set_: List[str] = typer.Option([], "--set", "-s", help="Override any setting, e.g. --set attack.tv=1e-3."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
) -> None:
    """Reconstruct client images from their (defended) gradient and measure MSE/PSNR/SSIM."""
    from fedleak.device import check_device
    from fedleak.errors import FedleakError

    check_device(device)  # before any work (imports torch only for a GPU)
    quiet = quiet or bool(os.environ.get("FEDLEAK_QUIET"))
    if labels is not None and labels not in ("known", "unknown"):
        raise FedleakError("--labels must be known or unknown")
    spec = build_spec(
        preset,
        defense=defense.value if defense else None,
        pruning_rate=pruning_rate,
        noise_scale=noise_scale,
        clip=clip,
        defense_params=list(defense_param),
        attack=attack.value,
        adaptive=adaptive.value if adaptive else None,
        overrides=list(set_),
        images=images,
        start_index=start_index,
        batch_size=batch_size,
        iterations=iterations,
        restarts=restarts,
        dataset=dataset,
        data_dir=data_dir,
        model=model,
        labels_known=None if labels is None else labels == "known",
        local_steps=local_steps,
        local_lr=local_lr,
        seed=seed,
        threads=threads,
    )
    result = _invert(spec, out, device, quiet)
    if not quiet:
        _print_summary(result, out)


def _invert(spec: Any, out: Path, device: str | None, quiet: bool) -> dict[str, Any]:
    """Check ``out``, then run the attack (with a progress bar unless ``quiet``); bad values are one-line errors."""
    from fedleak.attacks.inversion.runner import prepare_out_dir, run_inversion
    from fedleak.errors import FedleakError

    prepare_out_dir(out)  # a file in the way or a read-only folder fails here, not after the attack
    try:
        if quiet:
            return run_inversion(spec, out_dir=out, device=device)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("[bold]invert[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn(), transient=False) as bar:
            task = bar.add_task(f"{spec.name} / {spec.defense}", total=None)
            return run_inversion(
                spec, out_dir=out, device=device,
                on_start=lambda total: bar.update(task, total=total),
                progress=lambda k: bar.advance(task, k),
            )
    except (ValueError, KeyError) as e:
        raise FedleakError(str(e)) from None


def summary_lines(result: dict[str, Any], out: Path) -> tuple[str, str]:
    """The title above the metric table and the closing line; pruning is mentioned only when the
    defence pruned something (no defence or DP noise: nothing to say)."""
    spec, s = result["spec"], result["summary"]
    title = f"{spec['name']} — defense {spec['defense']}" + (f" {spec['defense_params']}" if spec["defense_params"] else "")
    tail = f"label accuracy {s['label_accuracy']:.3f}; "
    pruned = s.get("pruned_fraction")
    if isinstance(pruned, (int, float)) and math.isfinite(pruned):
        tail += f"pruned fraction {pruned:.3f}; "
    return title, tail + f"outputs in {out}"


def _print_summary(result: dict[str, Any], out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    s = result["summary"]
    title, tail = summary_lines(result, out)
    t = Table(show_lines=False)
    for col in ("metric", "mean", "median", "min", "max"):
        t.add_column(col)
    for k in ("mse", "psnr", "ssim", "logit_mse"):
        a = s[k]
        t.add_row(k, *(f"{a[c]:.4g}" for c in ("mean", "median", "min", "max")))
    con = Console()
    con.print(title, soft_wrap=True, highlight=False, markup=False)
    con.print(t)
    con.print(tail, soft_wrap=True, highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    app.command("invert")(invert_command)
