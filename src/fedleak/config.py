"""Experiment configuration: pydantic models loaded from YAML.

Every section forbids unknown keys, so a typo such as ``locl_epochs`` is rejected with the
key's name instead of being silently ignored (the original code had many dead arguments).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A configuration problem, with a one-line message that says what to change."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    """Which dataset, where its files live and how images are shaped."""

    name: str = "digits"
    data_dir: str | None = Field(
        None, description="Folder holding dataset files; default: $FEDLEAK_DATA_DIR or the user cache dir."
    )
    download: bool = Field(False, description="Download missing official files (md5-verified).")
    mirror: str | None = Field(None, description="Base URL that replaces the official download host.")
    image_size: int | None = Field(None, ge=4, description="Resize images to this side length (bilinear).")
    channels: int | None = Field(None, description="Force 1 (grayscale) or 3 (RGB) channels.")
    normalization: str = Field(
        "default",
        description="'default' (the dataset's documented constants), 'cifar10', 'cifar100', 'none' or 'dataset'.",
    )
    root: str | None = Field(None, description="imagefolder: the class-per-folder directory.")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="Held-out fraction where a dataset has no test split.")
    max_train: int | None = Field(None, ge=1, description="Keep only the first N training samples.")
    max_test: int | None = Field(None, ge=1, description="Keep only the first N test samples.")
    synthetic: dict[str, Any] = Field(default_factory=dict, description="Options of the 'synthetic' dataset.")

    @field_validator("channels")
    @classmethod
    def _channels(cls, v: int | None) -> int | None:
        if v not in (None, 1, 3):
            raise ValueError("channels must be 1 or 3")
        return v


class PartitionConfig(_Strict):
    """How the training set is split among the K clients."""

    num_clients: int = Field(10, ge=2)
    scheme: Literal["iid", "dirichlet"] = "iid"
    beta: float = Field(1.0, gt=0, description="Dirichlet concentration (smaller = more skewed).")
    samples_per_client: int | None = Field(
        None, ge=1, description="IID shard size; default len(train) // num_clients (the whole set, as the original)."
    )
    min_size: int = Field(1, ge=0, description="Dirichlet: redraw until every client has at least this many.")


class CandidatesConfig(_Strict):
    """The fixed candidate set scored every recorded round (see docs/architecture.md)."""

    target_client: int = Field(0, ge=0)
    max_members: int | None = Field(None, ge=1, description="Cap on the target's samples used as members.")
    n_test: int = Field(1000, ge=0, description="Held-out test samples used as non-members.")
    n_other: int = Field(1000, ge=0, description="Samples taken from each other client as non-members.")
    protocol: Literal["aligned", "official-compat"] = Field(
        "aligned",
        description="aligned: one fixed candidate list for every client and round. official-compat: non-member "
        "rows redrawn per (client, round) as the original code does (spec W1), to measure its bias.",
    )
    rotating_target: bool = Field(
        False, description="Record every client's samples so that each client can be evaluated as the target."
    )


class ModelConfig(_Strict):
    name: str = "mlp"
    options: dict[str, Any] = Field(default_factory=dict, description="Extra constructor arguments.")


class ScheduleConfig(_Strict):
    kind: Literal["constant", "exponential", "cosine", "cosine-official", "milestones"] = "exponential"
    gamma: float = Field(0.99, gt=0, description="exponential: lr <- gamma*lr after each round; milestones: factor.")
    milestones: list[int] = Field(default_factory=list, description="0-based rounds after which lr *= gamma.")


class FLConfig(_Strict):
    rounds: int = Field(20, ge=1)
    participation: float = Field(1.0, gt=0, le=1, description="Fraction of clients sampled each round.")
    local_epochs: int = Field(1, ge=1)
    batch_size: int = Field(32, ge=1)
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    fresh_optimizer: bool = Field(True, description="Re-create the optimizer each round, as the original does.")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    eval_batch_size: int = Field(512, ge=1)
    eval_train_every: int = Field(1, ge=0, description="Evaluate the global model on train data every N rounds (0: never).")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice).")


class DefenseConfig(_Strict):
    """Hook for defenses (issue: defenses). ``name: none`` disables all of them."""

    name: str = "none"
    params: dict[str, Any] = Field(default_factory=dict)
    clients: list[int] | None = Field(None, description="Clients that apply the defense (default: all).")


class SignalsConfig(_Strict):
    rounds: list[int] | None = Field(
        None, description="0-based rounds to record; default every `every`-th round and the last."
    )
    every: int = Field(10, ge=1)
    include_first: bool = Field(False, description="Also record round 0 (the original records it, never uses it).")
    chunk_size: int | None = Field(
        None, ge=1, description="Per-sample gradient chunk; default chosen from memory_budget_mb."
    )
    memory_budget_mb: int = Field(512, ge=16, description="Bound on the per-sample gradient chunk's memory.")
    batch_size: int = Field(512, ge=1, description="Batch size of the loss forwards.")

    def recorded_rounds(self, total: int) -> list[int]:
        if self.rounds is not None:
            bad = [r for r in self.rounds if not 0 <= r < total]
            if bad:
                raise ConfigError(f"signals.rounds {bad} outside 0..{total - 1}; use 0-based round numbers")
            return sorted(set(self.rounds))
        rs = {r for r in range(total) if (r + 1) % self.every == 0}
        rs.add(total - 1)
        if self.include_first:
            rs.add(0)
        return sorted(rs)


class OutputConfig(_Strict):
    dir: str = Field("runs", description="Parent folder of run directories (a CLI --out overrides).")
    checkpoint_every: int = Field(1, ge=1, description="Save a resumable checkpoint every N rounds.")


class ExperimentConfig(_Strict):
    name: str = "experiment"
    seed: int = 0
    device: str = "cpu"
    data: DataConfig = Field(default_factory=DataConfig)
    partition: PartitionConfig = Field(default_factory=PartitionConfig)
    candidates: CandidatesConfig = Field(default_factory=CandidatesConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    fl: FLConfig = Field(default_factory=FLConfig)
    defense: DefenseConfig = Field(default_factory=DefenseConfig)
    signals: SignalsConfig = Field(default_factory=SignalsConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="after")
    def _check(self) -> "ExperimentConfig":
        if self.candidates.target_client >= self.partition.num_clients:
            raise ValueError(
                f"candidates.target_client={self.candidates.target_client} but only "
                f"{self.partition.num_clients} clients (0..{self.partition.num_clients - 1})"
            )
        return self


def format_validation_error(err: ValidationError, source: str, what: str = "config") -> str:
    """One line naming every bad key of a pydantic error (shared by configs and sweep files)."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown key '{loc}'")
        elif e["type"] == "literal_error":
            parts.append(f"'{loc}': {e['msg'].replace('Input should be', 'must be')}")
        else:
            parts.append(f"'{loc}': {e['msg']}")
    return f"invalid {what} {source}: " + "; ".join(parts)


def parse_config(data: dict[str, Any], source: str = "") -> ExperimentConfig:
    """Validate a dict; raise ConfigError with a one-line message naming each bad key."""
    try:
        return ExperimentConfig.model_validate(data or {})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load a YAML file (or a preset name from ``configs/``) and apply ``key.sub=value`` overrides."""
    p = resolve_config_path(path)
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: top level must be a mapping of sections (data:, model:, fl:, ...)")
    for ov in overrides or []:
        apply_override(raw, ov)
    return parse_config(raw, str(p))


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply one ``a.b.c=value`` override (value parsed as YAML) to a raw config dict."""
    if "=" not in override:
        raise ConfigError(f"override '{override}' must look like section.key=value, e.g. fl.rounds=5")
    key, value = override.split("=", 1)
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{override}': '{part}' is not a section")
    node[parts[-1]] = yaml.safe_load(value)


def presets_dir() -> Path:
    """The ``configs/`` folder of a source checkout, else the presets shipped in the package."""
    repo = Path(__file__).resolve().parents[2] / "configs"
    return repo if repo.is_dir() else Path(__file__).resolve().parent / "presets"


def resolve_config_path(path: str | Path) -> Path:
    p = Path(path)
    if p.is_file():
        return p
    for cand in (presets_dir() / f"{path}", presets_dir() / f"{path}.yaml"):
        if cand.is_file():
            return cand
    names = sorted(x.stem for x in presets_dir().glob("*.yaml"))
    raise ConfigError(f"config '{path}' not found; give a YAML path or one of the presets: {', '.join(names)}")


def dump_config(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
