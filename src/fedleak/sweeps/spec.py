"""The sweep file (``fedleak sweep SWEEP.yaml``) and its expansion into independent runs.

Example (every key but ``base`` and ``defenses`` is optional)::

    name: defenses-digits
    base: digits-quick              # experiment YAML (relative to this file) or a preset name
    set: {fl.rounds: 20}            # dotted overrides applied to every run
    seeds: [0, 1]
    variants:                       # optional extra grid axis (dataset / model); each adds its overrides
      - {label: mlp-small, set: {model.options: {hidden: [64]}}}
      - {label: mlp-large, set: {model.options: {hidden: [256, 128]}}}
    baseline: true                  # one undefended run per (variant, seed): strength 0 of every defense
    defenses:
      - name: perturb               # a registered defense
        label: perturb-dp           # its name in tables and plots (default: name)
        params: {clip: 1.0}         # fixed parameters
        strength: {sigma: [0.5, 1.0, 2.0]}   # the swept parameter: exactly one key
        clients: null               # defended clients (default: all)
    attacks:
      names: all                    # or a list: [fedmia-ii, fedmia-i, avg-cosine, ...]
      rotate: null                  # evaluate every client as target when possible (null: when possible)
      strict: false                 # FPR convention: false '<=', true '<' (the original code)
      options: {}                   # FedMIA options (aggregation, ddof, eps, outlier_filter, robust)
      headline_fpr: 0.001           # the FPR the tables, plots and hypervolumes headline (--headline-fpr overrides)
    hypervolume: {include_baseline: true}
    out: runs/sweeps/defenses-digits   # default: runs/sweeps/<name> (relative to the working directory)
    threads: 1                      # torch threads per run

The grid is variants × (baseline + Σ_defenses strengths) × seeds. Run ids read
``[variant__]label__param=value__seedS`` (``[variant__]none__seedS`` for the baseline); each run has its own
run directory ``OUT/runs/<run id>``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedleak.config import (
    ConfigError,
    ExperimentConfig,
    SInt,
    apply_override,
    check_path_name,
    format_validation_error,
    parse_config,
    read_yaml_mapping,
    resolve_config_path,
    set_key,
)
from fedleak.metrics.roc import HEADLINE_FPR


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DefenseGrid(_Strict):
    name: str
    label: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    strength: dict[str, list[Any]] | None = Field(
        None, description="{param: [values]}: the swept parameter (exactly one); omit for a single setting"
    )
    clients: list[int] | None = None

    @field_validator("strength")
    @classmethod
    def _one_key(cls, v: dict[str, list[Any]] | None) -> dict[str, list[Any]] | None:
        if v is not None:
            if len(v) != 1:
                raise ValueError(f"strength must name exactly one parameter, got {sorted(v) or 'none'}")
            values = next(iter(v.values()))
            if not values:
                raise ValueError("strength needs at least one value")
        return v

    @property
    def tag(self) -> str:
        return self.label or self.name

    def settings(self) -> list[tuple[str | None, Any]]:
        if self.strength is None:
            return [(None, None)]
        (param, values), = self.strength.items()
        return [(param, v) for v in values]


class Variant(_Strict):
    label: str
    set: dict[str, Any] = Field(default_factory=dict)


class AttackSettings(_Strict):
    names: list[str] | str = "all"
    rotate: bool | None = None
    strict: bool = False
    options: dict[str, Any] = Field(default_factory=dict)
    headline_fpr: float = Field(HEADLINE_FPR, description="The FPR the tables, plots and hypervolumes headline.")

    @field_validator("headline_fpr", mode="before")
    @classmethod
    def _headline(cls, v: Any) -> float:
        from fedleak.errors import FedleakError
        from fedleak.metrics.roc import check_headline_fpr

        try:
            return check_headline_fpr(v, "headline_fpr")
        except FedleakError as e:
            raise ValueError(str(e)) from None

    @field_validator("options")
    @classmethod
    def _fedmia_options(cls, v: dict[str, Any]) -> dict[str, Any]:
        from fedleak.attacks.mia.names import check_fedmia_options
        from fedleak.errors import FedleakError

        try:
            check_fedmia_options(v)
        except FedleakError as e:  # checked with the sweep file, not when the first run is attacked
            raise ValueError(str(e)) from None
        return v


class HVSettings(_Strict):
    include_baseline: bool = Field(True, description="Add the undefended run to every defense's point set.")


class SweepSpec(_Strict):
    name: str = "sweep"
    base: str
    set: dict[str, Any] = Field(default_factory=dict)
    seeds: list[SInt] = Field(default_factory=lambda: [0])
    variants: list[Variant] = Field(default_factory=list)
    baseline: bool = True
    defenses: list[DefenseGrid] = Field(default_factory=list)
    attacks: AttackSettings = Field(default_factory=AttackSettings)
    hypervolume: HVSettings = Field(default_factory=HVSettings)
    out: str | None = None
    threads: int = Field(1, ge=1)

    _name_is_a_folder = field_validator("name")(check_path_name)

    @model_validator(mode="after")
    def _check(self) -> "SweepSpec":
        if not self.seeds:
            raise ValueError("seeds must list at least one seed")
        tags = [d.tag for d in self.defenses]
        dup = sorted({t for t in tags if tags.count(t) > 1})
        if dup:
            raise ValueError(f"defense labels must be unique (repeated: {', '.join(dup)}); give each a 'label'")
        if "none" in tags and self.baseline:
            raise ValueError("'none' is the baseline; drop it from defenses or set baseline: false")
        labels = [v.label for v in self.variants]
        if len(set(labels)) != len(labels):
            raise ValueError("variant labels must be unique")
        if not self.defenses and not self.baseline:
            raise ValueError("nothing to run: list some defenses or set baseline: true")
        return self


@dataclass
class RunSpec:
    """One run of the grid: everything a worker needs (JSON-serialisable)."""

    run_id: str
    run_dir: str
    config: dict[str, Any]
    config_hash: str
    variant: str
    defense: str  # label
    defense_name: str
    param: str | None
    value: Any
    seed: int
    attacks: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _format_error(err: ValidationError, source: str) -> str:
    return format_validation_error(err, source, "sweep")


def load_sweep(path: str | Path) -> tuple[SweepSpec, Path]:
    """Parse a sweep YAML; returns (spec, the folder relative paths are resolved against)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"sweep file '{path}' not found; give the path of a sweep YAML (see configs/sweeps/)")
    raw = read_yaml_mapping(p, "sweep file", "name:, base:, defenses:, ...")  # read as experiment configs are
    try:
        return SweepSpec.model_validate(raw), p.resolve().parent
    except ValidationError as err:
        raise ConfigError(_format_error(err, str(p))) from None


def _base_config(base: str, root: Path) -> dict[str, Any]:
    cand = Path(base)
    if not cand.is_absolute() and (root / cand).is_file():
        cand = root / cand
    p = resolve_config_path(cand if cand.is_file() else base)
    return read_yaml_mapping(p, "sweep base config")


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "-".join(_fmt(x) for x in v)
    return str(v)


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", s)


def config_hash(cfg: ExperimentConfig) -> str:
    """Hash of everything that changes results (not output paths or thread counts)."""
    d = cfg.model_dump(mode="json")
    d.pop("output", None)
    d.pop("name", None)
    d["fl"].pop("threads", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def expand(
    spec: SweepSpec, root: Path, out_dir: Path, overrides: list[str] | None = None, data_dir: str | None = None
) -> list[RunSpec]:
    """Every run of the grid, each config validated (and its defense built once) up front."""
    from fedleak.defenses import build_defense

    base = _base_config(spec.base, root)
    for k, v in spec.set.items():
        set_key(base, k, v, where=f"sweep set: '{k}'")
    for ov in overrides or []:
        apply_override(base, ov)
    if data_dir:
        set_key(base, "data.data_dir", data_dir)
    variants = spec.variants or [Variant(label="")]
    grids: list[DefenseGrid] = ([DefenseGrid(name="none")] if spec.baseline else []) + list(spec.defenses)
    runs: list[RunSpec] = []
    attacks = spec.attacks.model_dump()
    for var in variants:
        vraw = json.loads(json.dumps(base))
        for k, v in var.set.items():
            set_key(vraw, k, v, where=f"sweep variant {var.label!r} set: '{k}'")
        for grid in grids:
            for param, value in grid.settings():
                for seed in spec.seeds:
                    parts = [var.label] if var.label else []
                    parts.append(grid.tag)
                    if param is not None:
                        parts.append(f"{param}={_fmt(value)}")
                    parts.append(f"seed{seed}")
                    run_id = _safe("__".join(parts))
                    raw = json.loads(json.dumps(vraw))
                    params = dict(grid.params)
                    if param is not None:
                        params[param] = value
                    raw["name"] = run_id
                    raw["seed"] = seed
                    raw["defense"] = {"name": grid.name, "params": params, "clients": grid.clients}
                    raw.setdefault("fl", {})["threads"] = spec.threads
                    cfg = parse_config(raw, f"(sweep run {run_id})")
                    try:
                        build_defense(cfg.defense, cfg)
                    except ConfigError as e:
                        raise ConfigError(f"sweep run {run_id}: {e}") from None
                    runs.append(
                        RunSpec(
                            run_id=run_id,
                            run_dir=str(out_dir / "runs" / run_id),
                            config=cfg.model_dump(mode="json"),
                            config_hash=config_hash(cfg),
                            variant=var.label,
                            defense=grid.tag,
                            defense_name=grid.name,
                            param=param,
                            value=value,
                            seed=seed,
                            attacks=attacks,
                        )
                    )
    ids = [r.run_id for r in runs]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ConfigError(f"the sweep produces duplicate run ids ({', '.join(dup[:3])}); repeated strength values?")
    return runs


def default_out(spec: SweepSpec) -> Path:
    return Path(spec.out) if spec.out else Path("runs") / "sweeps" / _safe(spec.name)


__all__ = ["SweepSpec", "RunSpec", "DefenseGrid", "Variant", "load_sweep", "expand", "config_hash", "default_out"]
