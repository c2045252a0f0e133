"""Experiment configuration: pydantic models loaded from YAML.

Every section forbids unknown keys, so a typo such as ``locl_epochs`` is rejected with the
key's name instead of being silently ignored (the original code had many dead arguments).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator, model_validator

from fedleak.errors import ConfigError  # noqa: F401  (re-exported: its historical home)
from fedleak.config_messages import (
    KeyedProblems,
    Loc,
    format_problems,
    format_validation_error,  # noqa: F401 - re-exported for sweep files
    non_finite,
    suggest_key,
    validation_problems,
)


# Upper limits, checked before anything is allocated (``fl.rounds: 1.0e+20`` must not eat memory until killed).
MAX_ROUNDS = 100_000
MAX_CLIENTS = 10_000
MAX_EPOCHS = 10_000
MAX_BATCH = 65_536
MAX_SAMPLES = 100_000_000
MAX_IMAGE_SIZE = 1024
MAX_THREADS = 1024
MAX_MEMORY_MB = 1_048_576
MAX_SEED = 2**63 - 1
MAX_LR = 1e30  # far above any useful step size (tests force divergence with 1e30); 1e300 overflows torch

#: An int that must be written as one: ``1e20`` (a YAML string) or ``5.0`` (a float) are rejected, not coerced.
SInt = Annotated[int, Strict()]


class _Strict(BaseModel):
    """Unknown keys are errors; ints must be ints; floats must be finite (no ``.inf`` / ``.nan``)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_float(cls, value: Any, info: Any) -> Any:
        """Float fields stay lax about ints (``lr: 1``) but refuse YAML ``true``/``false`` (pydantic reads 1.0)."""
        if isinstance(value, bool) and cls.model_fields[info.field_name].annotation in (float, float | None):
            raise ValueError(f"must be a number, not {str(value).lower()}")
        return value


class DataConfig(_Strict):
    """Which dataset, where its files live and how images are shaped."""

    name: str = "digits"
    data_dir: str | None = Field(
        None, description="Folder holding dataset files; default: $FEDLEAK_DATA_DIR or the user cache dir."
    )
    download: bool = Field(False, description="Download missing official files (md5-verified).")
    mirror: str | None = Field(None, description="Base URL that replaces the official download host.")
    image_size: SInt | None = Field(
        None, ge=4, le=MAX_IMAGE_SIZE, description="Resize images to this side length (bilinear)."
    )
    channels: SInt | None = Field(None, description="Force 1 (grayscale) or 3 (RGB) channels.")
    normalization: str = Field(
        "default",
        description="'default' (the dataset's documented constants), 'cifar10', 'cifar100', 'none' or 'dataset'.",
    )
    root: str | None = Field(None, description="imagefolder: the class-per-folder directory.")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="Held-out fraction where a dataset has no test split.")
    max_train: SInt | None = Field(None, ge=1, le=MAX_SAMPLES, description="Keep only the first N training samples.")
    max_test: SInt | None = Field(None, ge=1, le=MAX_SAMPLES, description="Keep only the first N test samples.")
    synthetic: dict[str, Any] = Field(default_factory=dict, description="Options of the 'synthetic' dataset.")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments of your loader, when name is an import path "
        "package.module:load (see docs/byo.md)."
    )

    @field_validator("channels")
    @classmethod
    def _channels(cls, v: int | None) -> int | None:
        if v not in (None, 1, 3):
            raise ValueError("channels must be 1 or 3")
        return v


class PartitionConfig(_Strict):
    """How the training set is split among the K clients."""

    num_clients: SInt = Field(10, ge=2, le=MAX_CLIENTS)
    scheme: Literal["iid", "dirichlet"] = "iid"
    beta: float = Field(1.0, gt=0, description="Dirichlet concentration (smaller = more skewed).")
    samples_per_client: SInt | None = Field(
        None, ge=1, le=MAX_SAMPLES, description="IID shard size; default len(train) // num_clients (the whole set, as the original)."
    )
    min_size: SInt = Field(1, ge=0, le=MAX_SAMPLES, description="Dirichlet: redraw until every client has at least this many.")


class CandidatesConfig(_Strict):
    """The fixed candidate set scored every recorded round (see docs/architecture.md)."""

    target_client: SInt = Field(0, ge=0)
    max_members: SInt | None = Field(
        None, ge=1, le=MAX_SAMPLES, description="Cap on the target's samples used as members (null: all of them)."
    )
    n_test: SInt = Field(
        1000, ge=0, le=MAX_SAMPLES, description="At most this many held-out test samples are non-members (all of the "
        "test split when it is smaller; an explicit value above it is warned about).",
    )
    n_other: SInt = Field(
        1000, ge=0, le=MAX_SAMPLES, description="At most this many samples of each other client are non-members (all "
        "of a smaller client's; an explicit value above it is warned about). meta.json records the counts used.",
    )
    protocol: Literal["aligned", "official-compat"] = Field(
        "aligned",
        description="aligned: one fixed candidate list for every client and round. official-compat: non-member "
        "rows redrawn per (client, round) as the original code does (spec W1), to measure its bias.",
    )
    rotating_target: bool = Field(
        False, description="Record every client's samples so that each client can be evaluated as the target."
    )


class ModelConfig(_Strict):
    name: str = Field("mlp", description="A registered model, or an import path package.module:factory (docs/byo.md).")
    options: dict[str, Any] = Field(default_factory=dict, description="Extra constructor arguments.")


class ScheduleConfig(_Strict):
    kind: Literal["constant", "exponential", "cosine", "cosine-official", "milestones"] = "exponential"
    gamma: float = Field(0.99, gt=0, description="exponential: lr <- gamma*lr after each round; milestones: factor.")
    milestones: list[Annotated[int, Strict(), Field(ge=0, le=MAX_ROUNDS)]] = Field(
        default_factory=list, description="0-based rounds after which lr *= gamma (each below fl.rounds)."
    )


class FLConfig(_Strict):
    rounds: SInt = Field(20, ge=1, le=MAX_ROUNDS)
    participation: float = Field(1.0, gt=0, le=1, description="Fraction of clients sampled each round.")
    local_epochs: SInt = Field(1, ge=1, le=MAX_EPOCHS)
    batch_size: SInt = Field(32, ge=1, le=MAX_BATCH)
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0, le=MAX_LR)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    fresh_optimizer: bool = Field(True, description="Re-create the optimizer each round, as the original does.")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    eval_batch_size: SInt = Field(512, ge=1, le=MAX_BATCH)
    eval_train_every: SInt = Field(1, ge=0, le=MAX_ROUNDS, description="Evaluate the global model on train data every N rounds (0: never).")
    threads: SInt | None = Field(None, ge=1, le=MAX_THREADS, description="torch CPU threads (default: torch's choice).")
    vectorize: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Train a round's clients as one stacked (vmapped) computation instead of one by one. 'on': "
        "wherever it reproduces the loop (no dropout/batch-norm/buffers, no defense that changes local training; "
        "otherwise a config error); 'auto': only where it is also faster (measured on a CPU at 1 thread: "
        "digits-quick ~2.5-2.9x per round; MNIST-sized MLP/LeNet are slower, so they keep the loop) and else "
        "the loop, saying why once; 'off': always the loop. Agrees with the loop to float32 rounding, not bit for bit.",
    )

    bn: Literal["fedavg", "local"] = Field(
        "fedavg",
        description="BatchNorm layers (models with running statistics): 'fedavg' uploads their affine parameters "
        "and running statistics and the server averages them by client example count (num_batches_tracked: the "
        "maximum); 'local' is FedBN: each client keeps its BatchNorm parameters and statistics to itself, the "
        "server averages the rest. No effect on models without BatchNorm.",
    )

    @field_validator("vectorize", mode="before")
    @classmethod
    def _yaml_on_off(cls, v: Any) -> Any:
        """YAML 1.1 reads a bare ``on``/``off`` as true/false: take those as the words meant."""
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v


class DefenseConfig(_Strict):
    """Hook for defenses (issue: defenses). ``name: none`` disables all of them."""

    name: str = "none"
    params: dict[str, Any] = Field(default_factory=dict)
    clients: list[SInt] | None = Field(
        None, description="Clients that apply the defense, each in 0..partition.num_clients-1 (default: all)."
    )


class SignalsConfig(_Strict):
    rounds: list[SInt] | None = Field(
        None, description="0-based rounds to record; default every `every`-th round and the last."
    )
    every: SInt = Field(10, ge=1, le=MAX_ROUNDS)
    include_first: bool = Field(False, description="Also record round 0 (the original records it, never uses it).")
    chunk_size: SInt | None = Field(
        None, ge=1, le=MAX_BATCH, description="Per-sample gradient chunk; default chosen from memory_budget_mb."
    )
    memory_budget_mb: SInt = Field(512, ge=16, le=MAX_MEMORY_MB, description="Bound on the per-sample gradient chunk's memory.")
    batch_size: SInt = Field(512, ge=1, le=MAX_BATCH, description="Batch size of the loss forwards.")
    keep_models: bool = Field(False, description="Also keep every recorded round's global model and client uploads "
                              "(RUN/models/, safetensors): what `fedleak export` needs.")

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
    checkpoint_every: SInt = Field(1, ge=1, le=MAX_ROUNDS, description="Save a resumable checkpoint every N rounds.")


class AuditConfig(_Strict):
    """Canary audits riding along in the run they audit (no extra training run): empirical ε lower bounds to set
    beside the accountant's ε. Sample level: Steinke, Nasr & Jagielski (2023); client level: Andrew et al. (2024)."""

    canaries: SInt = Field(0, ge=0, le=MAX_SAMPLES, description="m canary samples, each put into the target "
                           "client's data by an independent seeded coin flip (0: no sample-level audit).")
    kind: Literal["natural", "mislabeled"] = Field("mislabeled", description="Canaries are held-out samples with "
                                                   "their own label (natural) or a seeded wrong label (mislabeled).")
    canary_clients: SInt = Field(0, ge=0, le=MAX_CLIENTS, description="Canary clients whose upload is a fixed random "
                                 "direction at the clipping norm, a seeded half participating (0: no client-level audit).")
    confidence: float = Field(0.95, gt=0, lt=1, description="Confidence level of every empirical ε lower bound.")
    delta: float | None = Field(None, gt=0, lt=1, description="δ of the ε bounds; default the defense's δ, else 1e-5.")


def check_path_name(name: str) -> str:
    """A name used as one path component (a run or sweep folder): not empty, '.', '..', nor holding a separator."""
    if name.strip() in ("", ".", "..") or any(c in name for c in "/\\\x00"):
        raise ValueError(f"{name!r} cannot name a folder; use letters, digits, '-', '_' or '.' (no '/', not '..')")
    return name


class ExperimentConfig(_Strict):
    name: str = "experiment"
    seed: SInt = Field(0, ge=0, le=MAX_SEED)
    device: str = Field(
        "cpu", description="'cpu' or 'cuda[:N]' (checked against the GPUs present): where training, evaluation and "
        "the signals run (random draws stay on the CPU; TF32 is off). A run may resume on another device."
    )
    data: DataConfig = Field(default_factory=DataConfig)
    partition: PartitionConfig = Field(default_factory=PartitionConfig)
    candidates: CandidatesConfig = Field(default_factory=CandidatesConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    fl: FLConfig = Field(default_factory=FLConfig)
    defense: DefenseConfig = Field(default_factory=DefenseConfig)
    signals: SignalsConfig = Field(default_factory=SignalsConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    _name_is_a_folder = field_validator("name")(check_path_name)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        from fedleak.device import device_problem

        why = device_problem(v)
        if why is not None:
            raise ValueError(why)
        return v

    @model_validator(mode="after")
    def _check(self) -> "ExperimentConfig":
        problems = cross_field_problems(self)
        if problems:
            raise KeyedProblems(problems)
        return self


def cross_field_problems(cfg: ExperimentConfig) -> list[tuple[Loc, str]]:
    """Checks that need more than one section (client ids against num_clients, schedule against rounds)."""
    out: list[tuple[Loc, str]] = []
    k = cfg.partition.num_clients
    if cfg.candidates.target_client >= k:
        out.append((("candidates", "target_client"), f"is {cfg.candidates.target_client} but there are only {k} "
                    f"clients (0..{k - 1}, partition.num_clients)"))
    clients = cfg.defense.clients or []
    bad = sorted({c for c in clients if not 0 <= c < k})
    if bad:
        out.append((("defense", "clients"), f"names client(s) {bad} that do not exist; valid ids are 0..{k - 1} "
                    f"(partition.num_clients={k})"))
    dup = sorted({c for c in clients if clients.count(c) > 1})
    if dup:
        out.append((("defense", "clients"), f"lists client(s) {dup} more than once"))
    if cfg.defense.name == "none" and cfg.defense.params:
        out.append((("defense", "params"), f"{sorted(cfg.defense.params)} given but defense.name is 'none'; name the "
                    "defense they belong to or remove them"))
    if cfg.defense.clients == []:
        out.append((("defense", "clients"), "is empty (it defends nobody); list client ids or omit it for all clients"))
    if cfg.signals.rounds == []:
        out.append((("signals", "rounds"), "is empty (nothing would be recorded); list rounds or omit it for the "
                    "default (every signals.every-th round and the last)"))
    sched, rounds = cfg.fl.schedule, cfg.fl.rounds
    if sched.milestones and sched.kind != "milestones":
        out.append((("fl", "schedule", "milestones"), f"are only used with kind: milestones (kind is '{sched.kind}'); "
                    "set kind: milestones or remove them"))
    late = [m for m in sched.milestones if m >= rounds]
    if sched.kind == "milestones" and late:
        out.append((("fl", "schedule", "milestones"), f"{late} are not rounds of this run (0..{rounds - 1}, fl.rounds)"))
    steps = (rounds - 1) if sched.kind == "exponential" else len(sched.milestones) if sched.kind == "milestones" else 0
    if sched.gamma > 1 and math.log10(cfg.fl.lr) + steps * math.log10(sched.gamma) > 300:
        out.append((("fl", "schedule", "gamma"), f"{sched.gamma:g} grows fl.lr={cfg.fl.lr:g} past 1e300 within "
                    f"{rounds} rounds; use gamma <= 1"))
    return out


def parse_config(data: dict[str, Any], source: str = "", overrides: dict[Loc, str] | None = None) -> ExperimentConfig:
    """Validate a dict; raise ConfigError with a one-line message naming each bad key (and the ``--set`` behind it)."""
    problems = non_finite(data)
    try:
        cfg = ExperimentConfig.model_validate(data or {})
    except ValidationError as err:
        seen = {loc for loc, _ in problems}
        problems += [p for p in validation_problems(err, ExperimentConfig) if p[0] not in seen]
    if problems:
        raise ConfigError(format_problems(problems, source, "config", overrides))
    return cfg


# ------------------------------------------------------------------------------------------------ loading


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)):
                continue
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' appears twice in one mapping; keep one of them", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml_mapping(p: Path, what: str = "config", hint: str = "data:, model:, fl:, ...") -> dict[str, Any]:
    """A YAML file whose top level is a non-empty mapping; anything else is a one-line ConfigError."""
    if p.is_dir():
        raise ConfigError(f"{what} {p} is a directory; give the path of a YAML file")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {p} is not a text file (not UTF-8 at byte {e.start}); give a YAML file") from None
    except OSError as e:
        raise ConfigError(f"cannot read {what} {p}: {e.strerror or e}") from None
    if "\x00" in text:
        raise ConfigError(f"{what} {p} is not a text file (it holds NUL bytes); give a YAML file")
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if raw is None:
        raise ConfigError(f"{what} {p} is empty; write the settings to change ({hint}), or '{{}}' for all defaults")
    if not isinstance(raw, dict):
        kind = "list" if isinstance(raw, list) else "string" if isinstance(raw, str) else "single value"
        raise ConfigError(f"{p}: top level must be a mapping of sections ({hint}), not a {kind}")
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load a YAML file (or a preset name from ``configs/``) and apply ``key.sub=value`` overrides."""
    p = resolve_config_path(path)
    raw = read_yaml_mapping(p)
    applied: dict[Loc, str] = {}
    for ov in overrides or []:
        applied[apply_override(raw, ov)] = ov
    return parse_config(raw, str(p), applied)


def parse_yaml_value(value: str, what: str) -> Any:
    """One ``key=value`` value parsed as YAML; invalid YAML is a one-line ConfigError that starts with ``what``."""
    try:
        return yaml.load(value, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as e:
        raise ConfigError(f"{what}: the value is not valid YAML ({str(e).splitlines()[0]})") from None


def apply_override(
    raw: dict[str, Any],
    override: str,
    model: type[BaseModel] | None = None,
    flag: str = "--set",
    example: str = "fl.rounds=5",
    form: str = "section.key=value",
) -> Loc:
    """Apply one ``a.b.c=value`` override (value parsed as YAML) to a raw config dict; returns its key path.

    The one ``--set`` parser of fedleak: experiment configs (``model`` = ExperimentConfig, the default) and
    inversion specs (``model`` = InvertSpec) use it, and ``--defense-param k=v`` too (``flag``/``example`` name
    the option in the messages).
    """
    if "=" not in override:
        raise ConfigError(f"{flag} '{override}' must look like {form}, e.g. {example}")
    key, value = override.split("=", 1)
    parsed = parse_yaml_value(value, f"{flag} '{override}'")
    return set_key(raw, key, parsed, model, f"{flag} '{override}'", f"write {form}, e.g. {example}")


def set_key(
    raw: dict[str, Any], key: str, value: Any, model: type[BaseModel] | None = None, where: str = "",
    how: str = "write section.key=value, e.g. fl.rounds=5",
) -> Loc:
    """Set the dotted ``key`` (``a.b.c``) of a raw config dict to an already parsed ``value``; returns its path.

    Used by :func:`apply_override` and for the ``set:`` mappings of sweep files. ``where`` names the source in
    the messages (e.g. ``--set 'fl.rounds=5'``)."""
    model = ExperimentConfig if model is None else model
    where = where or f"override '{key}'"
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"{where}: '{key.strip()}' is not a key; {how}")
    node = raw
    for i, part in enumerate(parts[:-1]):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            at = ".".join(parts[: i + 1])
            raise ConfigError(f"{where}: '{at}' is a value, not a section" + suggest_key(model, tuple(parts)))
    node[parts[-1]] = value
    return tuple(parts)


def presets_dir() -> Path:
    """The ``configs/`` folder of a source checkout (or editable install), else the copy a wheel ships in the package
    (``fedleak/presets/``, copied from ``configs/`` at build time by setup.py)."""
    here = Path(__file__).resolve().parent
    repo = here.parents[1]
    if (repo / "configs").is_dir() and (repo / "src" / "fedleak") == here:
        return repo / "configs"
    return here / "presets"


def resolve_config_path(path: str | Path) -> Path:
    p = Path(path)
    if p.is_file() or p.is_dir():
        return p
    for cand in (presets_dir() / f"{path}", presets_dir() / f"{path}.yaml"):
        if cand.is_file():
            return cand
    names = sorted(x.stem for x in presets_dir().glob("*.yaml"))
    raise ConfigError(f"config '{path}' not found; give a YAML path or one of the presets: {', '.join(names)}")


def dump_config(cfg: ExperimentConfig) -> str:
    """The config as YAML; an ``audit:`` section left at its defaults, an empty ``data.options``,
    ``signals.keep_models: false`` and ``fl.bn: fedavg`` are omitted, so a run without them has the same
    ``config.yaml`` (and config hash) as before they existed."""
    data = cfg.model_dump(mode="json")
    if cfg.audit == AuditConfig():
        del data["audit"]
    if not cfg.data.options:  # likewise data.options, used only by a loader named by import path
        del data["data"]["options"]
    if not cfg.signals.keep_models:  # likewise signals.keep_models at its default
        del data["signals"]["keep_models"]
    if cfg.fl.bn == "fedavg":  # likewise fl.bn at its default (runs from before BatchNorm keep their hash)
        del data["fl"]["bn"]
    return yaml.safe_dump(data, sort_keys=False)
