"""Named inversion experiments that reproduce each original setting (inversion.md §1, §2, §6.2 item 2).

An :class:`InvertSpec` is one complete, validated experiment (data, model, victim, defence, attack); a preset is
a named spec, one YAML file in ``configs/inversion/`` (read like the experiment presets). The CLI starts from a
preset and overrides fields (``--set`` through :func:`fedleak.config.apply_override`); unknown keys are rejected.

========================  ===================================================================================
preset                    reproduces
========================  ===================================================================================
``dlg``                   DLG (Zhu et al.): 3-conv sigmoid LeNet, U(−0.5, 0.5) init, seed 1234, CIFAR-100 image
                          25, [0,1] inputs (no normalisation), joint data + soft labels, L2 over all tensors,
                          L-BFGS (PyTorch defaults, lr 1), 300 steps
``idlg``                  iDLG (Zhao et al.): as ``dlg`` with the analytic row-sum label, hard-label CE, early
                          stop at 1e-6 (the original's default dataset, LFW, is replaced by CIFAR-100)
``soteria-dlg``           Soteria's DLG notebook: 4-conv sigmoid LeNet, U(−0.5, 0.5), seed 50, CIFAR-10 image 25,
                          [0,1] inputs, Soteria at 1 % with the notebook's ``‖J_i‖/r_i`` score, DLG 300 steps
``soteria-gs``            Soteria's GS script: ConvNet-64 with BatchNorm in eval mode right after initialisation
                          (running mean 0, variance 1), CIFAR-10 (IG constants), labels known, Adam lr 0.1,
                          signed, boxed, TV 1e-4, 24,000 iterations with step decay, 1 restart; Soteria (legacy
                          ``‖J_i‖/(r_i+0.1)``) at the rate given on the command line (README: 60)
``ig-cifar``              IG's notebook "Recovery from Gradient Information": ConvNet-64, CIFAR-10, labels
                          known, cosine cost, Adam 0.1, signed, boxed, TV 1e-6, 4,000 iterations
========================  ===================================================================================

Differences that cannot be avoided are documented in ``docs/inversion.md`` (``ig-cifar``'s ConvNet-64 replaces
BatchNorm by a per-image normalisation with the same parameters; the GS script's ``auto.jpg`` is not bundled,
so test images are used; the step-decay milestones are the integers 3N//8, 5N//8, 7N//8; fedleak clips the random
start into the pixel box, ``attack.clip_start: false`` does not).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from fedleak.attacks.inversion.optimize import InversionConfig
from fedleak.config import MAX_BATCH, MAX_SAMPLES, MAX_THREADS, SInt, presets_dir, read_yaml_mapping
from fedleak.config_messages import format_validation_error, non_finite
from fedleak.data.normalization import NORMALIZATIONS
from fedleak.errors import ConfigError, FedleakError
from fedleak.registry import Registry

# upper limits of the attack's loops (checked before anything runs)
MAX_ITERATIONS = 1_000_000
MAX_RESTARTS = 1000
MAX_LBFGS_INNER = 10_000
MAX_IMAGES = 100_000
MAX_JOINT_IMAGES = 1024
MAX_SEED = 2**32 - 1



class InvertSpec(BaseModel):
    """One inversion experiment. Every field has a CLI flag or ``--set``/``--defense-param`` override."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    name: str = "custom"
    description: str = ""
    # data
    dataset: str = "cifar10"
    data_dir: str | None = None
    split: Literal["test", "train"] = "test"
    start_index: SInt = Field(0, ge=0, le=MAX_SAMPLES, description="First image of the split to attack.")
    indices: list[Annotated[int, Strict(), Field(ge=0, le=MAX_SAMPLES)]] | None = Field(None, description="Explicit image indices (overrides start_index/images).")
    images: SInt = Field(1, ge=1, le=MAX_IMAGES, description="How many images are attacked in total.")
    batch_size: SInt = Field(1, ge=1, le=MAX_JOINT_IMAGES, description="Images per shared update (attacked jointly).")
    normalization: str = Field(
        "auto", description="Model input normalisation: none, auto (the inversion originals' constants for their "
        "datasets, <dataset>-ig) or any key of fedleak.data.normalization.NORMALIZATIONS."
    )
    # model
    model: str = "convnet64"
    model_options: dict[str, Any] = Field(default_factory=dict)
    model_seed: SInt = Field(0, ge=0, le=MAX_SEED)
    # victim
    labels_known: bool = True
    local_steps: SInt = Field(0, ge=0, le=MAX_ITERATIONS, description="0: FedSGD gradient; k >= 1: FedAvg update after k local steps.")
    local_lr: float = Field(1e-4, gt=0)
    local_batch_size: SInt | None = Field(None, ge=1, le=MAX_BATCH)
    bn_mode: Literal["train", "eval"] = Field(
        "eval", description="BatchNorm models: the victim computes its gradient with the running statistics of the "
        "sent model state (eval; the Soteria GS script's setting) or with its batch's statistics (train); declared "
        "in the side information, replayed by the attacker. No effect on models without BatchNorm.")
    defense: Literal[
        "none", "soteria", "prune", "prune-global", "dp-gaussian", "dp-laplace", "perturb", "quant", "sparse"
    ] = "none"
    defense_params: dict[str, Any] = Field(default_factory=dict)
    # attack
    attack: InversionConfig = Field(default_factory=InversionConfig)
    adaptive: Literal["none", "drop", "mask", "readout"] = Field(
        "none",
        description="Adaptive attack vs Soteria: drop the defended weight from the cost; mask its zero entries; "
        "or drop it and add the closed-form read-out features as a target (FedSGD, one image per update).",
    )
    feature_weight: float = Field(1.0, ge=0, description="Weight of the read-out feature term (adaptive=readout).")
    parallel: SInt = Field(
        8, ge=1, le=MAX_JOINT_IMAGES, description="One-image FedSGD attacks with Adam/SGD are optimised this many at a time "
        "(independent, identical to one by one; see attacks.inversion.parallel). 1 = strictly one by one.")
    seed: SInt = Field(0, ge=0, le=MAX_SEED, description="Seeds the defence noise and the attack's initialisations.")
    threads: SInt | None = Field(None, ge=1, le=MAX_THREADS, description="torch CPU threads (default: torch's choice).")

    @field_validator("attack", "defense_params", "model_options", mode="before")
    @classmethod
    def _finite_and_whole(cls, v: Any, info: ValidationInfo) -> Any:
        """Nested settings: no inf/nan anywhere, and the attack's int knobs must be written as ints."""
        data = v.model_dump() if isinstance(v, BaseModel) else v
        bad = non_finite(data, (info.field_name,))
        if bad:
            raise ValueError("; ".join(f"{'.'.join(map(str, loc))} {msg}" for loc, msg in bad))
        if info.field_name == "attack" and isinstance(data, dict):
            ints = [k for k, f in InversionConfig.model_fields.items() if f.annotation is int]
            floats = [k for k in ints if isinstance(data.get(k), float)]
            if floats:
                raise ValueError(f"attack.{floats[0]} must be a whole number written as one, got {data[floats[0]]!r}")
        return v

    @field_validator("normalization")
    @classmethod
    def _known_normalization(cls, v: str) -> str:
        if v not in ("none", "auto", *NORMALIZATIONS):
            raise ValueError(f"unknown normalization {v!r}; choose from: none, auto, {', '.join(NORMALIZATIONS)}")
        return v

    @field_validator("attack")
    @classmethod
    def _attack_limits(cls, v: InversionConfig) -> InversionConfig:
        for key, limit in (("iterations", MAX_ITERATIONS), ("restarts", MAX_RESTARTS), ("lbfgs_inner", MAX_LBFGS_INNER)):
            if getattr(v, key) > limit:
                raise ValueError(f"attack.{key}={getattr(v, key)} is above the limit {limit}")
        return v

    @model_validator(mode="after")
    def _check(self) -> "InvertSpec":
        if self.adaptive == "readout" and self.local_steps > 0:
            raise ValueError("adaptive='readout' needs FedSGD (local_steps=0)")
        if self.adaptive == "readout" and self.batch_size != 1:
            raise ValueError("adaptive='readout' is exact for one image per update (batch_size=1)")
        if self.indices is not None and len(self.indices) == 0:
            raise ValueError("indices must not be empty")
        return self

    def image_indices(self) -> list[int]:
        if self.indices is not None:
            return list(self.indices)
        return list(range(self.start_index, self.start_index + self.images))

    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        key = self.normalization
        if key == "auto":  # the inversion originals' constants for their datasets, else none
            key = f"{self.dataset}-ig" if f"{self.dataset}-ig" in NORMALIZATIONS else "none"
        return ((0.0,), (1.0,)) if key == "none" else NORMALIZATIONS[key]


#: The inversion presets: one YAML file each in ``configs/inversion/`` (only the settings that differ from
#: InvertSpec's defaults), read the same way as the experiment presets and registered by file name.
PRESETS: Registry[InvertSpec] = Registry("inversion preset", error=FedleakError)


def _load_presets() -> None:
    for path in sorted((presets_dir() / "inversion").glob("*.yaml")):
        raw = read_yaml_mapping(path, "inversion preset", "dataset:, model:, attack:, ...")
        try:
            PRESETS.add(path.stem, InvertSpec.model_validate({**raw, "name": path.stem}))
        except ValidationError as err:
            raise ConfigError(format_validation_error(err, str(path), "inversion preset")) from None


_load_presets()


def get_preset(name: str) -> InvertSpec:
    """A fresh copy of the preset ``name`` (FedleakError naming the closest preset when unknown)."""
    return PRESETS.get(name).model_copy(deep=True)
