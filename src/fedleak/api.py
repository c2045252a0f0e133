"""The Python API (for notebooks and scripts): train, attack and report without YAML, returning typed results.

It is the top layer beside :mod:`fedleak.cli` and does what the commands do (``fedleak train``, ``attack``,
``report``, ``run``) on the same run directories; see docs/api.md::

    from fedleak import api

    cfg = api.config(model=make_net, data=(x_train, y_train, x_test, y_test),
                     config={"partition": {"num_clients": 4}, "fl": {"rounds": 5}})
    res = api.run(cfg, run_dir="runs/mine")
    res.auc("fedmia-ii"), res.tpr("fedmia-ii", 0.001), res.report_html

**What a run records of Python objects.** A config names its model and dataset by string (``config.yaml``):

* a callable that can be imported back (defined in a module on ``sys.path``, not in ``__main__``) is recorded
  as its import path ``package.module:name`` — the CLI, a resumed run and the Flower apps rebuild it from that;
* in-memory data (tensors, a fedleak ``Dataset``, a pair of torch datasets) is recorded as
  ``@tensors:<sha256>``, the sha256 of the materialised arrays, so a resumed run refuses different data;
* a callable defined in a notebook or script (``__main__``) or a lambda is recorded as
  ``@<name>:<sha256 of its source>`` (``@<name>`` where Python has no source for it).

``@`` names are registered in this Python process only: resuming in the same process (same objects) works; the
CLI, another process or the Flower ClientApp cannot rebuild them and say so in one line. Not recorded at all:
what a callable reads besides its arguments (globals, closures, files) — make it importable and pure to have
a run that anyone can reproduce from ``config.yaml``.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import inspect
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedleak.config import ExperimentConfig, apply_override, load_config, parse_config
from fedleak.errors import ConfigError
from fedleak.registry import IN_PROCESS, is_import_path

__all__ = ["RunResult", "attack", "config", "data_name", "load", "model_name", "notes", "report", "run", "train"]


@dataclass(frozen=True)
class RunResult:
    """A run directory and what fedleak has written into it (attack metrics and report, once made)."""

    run_dir: Path
    config: ExperimentConfig
    metrics: dict[str, Any] | None = None  # RUN/attack/metrics.json (None: not attacked yet)
    attack_dir: Path | None = None
    report_html: Path | None = None
    report_md: Path | None = None
    attack_result: Any = None  # the typed attack result (fedleak.attacks.mia.evaluation.Evaluation)
    notes: tuple[str, ...] = field(default=())  # what could not be recorded about Python objects

    @property
    def attacks(self) -> dict[str, dict[str, Any]]:
        """Per attack: its metrics (``auc``, ``tpr@0.1%``, ...), as in RUN/attack/metrics.json."""
        if self.metrics is None:
            raise ConfigError(f"{self.run_dir} has not been attacked yet; call fedleak.api.attack on it")
        return dict(self.metrics["attacks"])

    def auc(self, attack: str) -> float:
        return float(self._attack(attack)["auc"])

    def tpr(self, attack: str, fpr: float = 0.001) -> float:
        """TPR at the FPR target ``fpr`` (one of the run's ``fpr_targets``, default the headline 0.1%)."""
        from fedleak.metrics.roc import fpr_key

        entry, key = self._attack(attack), fpr_key(fpr)
        if key not in entry:
            raise ConfigError(f"no TPR at FPR {fpr:g} for {attack!r}; evaluated at {self.metrics['fpr_targets']}")
        return float(entry[key])

    def _attack(self, name: str) -> dict[str, Any]:
        attacks = self.attacks
        if name not in attacks:
            raise ConfigError(f"no attack {name!r} in {self.attack_dir}; choose from: {', '.join(attacks)}")
        return attacks[name]


# --------------------------------------------------------------------------------------- naming Python objects


def _importable_path(obj: Any) -> str | None:
    """``module:qualname`` when importing it gives back ``obj`` itself (never for ``__main__`` or locals)."""
    module, qual = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not module or not qual or module == "__main__" or not is_import_path(f"{module}:{qual}"):
        return None
    try:
        found: Any = importlib.import_module(module)
        for part in qual.split("."):
            found = getattr(found, part)
    except Exception:
        return None
    return f"{module}:{qual}" if found is obj else None


def _in_process_name(obj: Callable[..., Any]) -> str:
    """``@<name>:<sha256 of the source>`` for a callable that cannot be imported back (``@<name>`` without source)."""
    qual = getattr(obj, "__qualname__", type(obj).__name__)
    try:
        return f"{IN_PROCESS}{qual}:{hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()}"
    except (OSError, TypeError):
        return f"{IN_PROCESS}{qual}"


def notes(cfg: ExperimentConfig) -> tuple[str, ...]:
    """What the config cannot record about the Python objects behind its ``@`` names (empty: nothing missing)."""
    out = []
    for key, name in (("model.name", cfg.model.name), ("data.name", cfg.data.name)):
        if not name.startswith(IN_PROCESS):
            continue
        what = "in-memory data, recorded as its sha256" if name.startswith(f"{IN_PROCESS}tensors:") else (
            "a Python object that cannot be imported back, recorded as its name and the sha256 of its source"
            if ":" in name else "a Python object without readable source, recorded by its name only")
        out.append(f"{key} is {what}: only this Python process can rebuild it (resume here with the same object), "
                   "not the CLI, another process or the Flower apps; make it importable (package.module:name) for that")
    return tuple(out)


def model_name(model: str | Callable[..., Any]) -> str:
    """The ``model.name`` for a registered name, an import path or a factory ``f(num_classes, input_shape, **o)``;
    a factory that cannot be imported back is registered in this process (see the module docstring)."""
    if isinstance(model, str):
        return model
    if not callable(model):
        raise ConfigError(f"model must be a name, an import path or a factory callable, not {type(model).__name__}")
    path = _importable_path(model)
    if path is not None:
        return path
    from fedleak.models import MODELS

    name = _in_process_name(model)
    MODELS.add(name, model, replace=True)
    return name


def data_name(data: Any) -> str:
    """The ``data.name`` for a name / import path, a loader callable, or in-memory data: a fedleak ``Dataset``,
    ``(x_train, y_train, x_test, y_test)`` or a ``(train, test)`` pair of torch datasets (checked here)."""
    from fedleak.data import custom
    from fedleak.data.registry import DATASETS, register_raw, user_loader

    if isinstance(data, str):
        return data
    if callable(data):
        path = _importable_path(data)
        if path is not None:
            return path
        name = _in_process_name(data)
        DATASETS.add(name, user_loader(name, data), replace=True)
        return name
    raw = custom.raw_from_result("in-memory data", data)
    name = f"{IN_PROCESS}tensors:{custom.tensor_digest(raw)}"
    register_raw(name, raw)
    return name


# ------------------------------------------------------------------------------------------------- configs


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def config(
    base: ExperimentConfig | str | Path | Mapping[str, Any] | None = None,
    *,
    model: str | Callable[..., Any] | None = None,
    data: Any = None,
    config: Mapping[str, Any] | None = None,
    set: list[str] | None = None,  # noqa: A002 - the CLI's --set
) -> ExperimentConfig:
    """An :class:`ExperimentConfig` from a base (a config, a YAML path or preset name, a mapping, or the defaults),
    a nested mapping of settings merged over it, ``--set``-style overrides, and a model / data given as names,
    import paths or Python objects (see :func:`model_name`, :func:`data_name`). A model or data given here replaces
    the base's ``model.options`` / ``data.options`` by those ``config`` sets (none: empty). Warns what it cannot record."""
    cfg = _config(base, model, data, config, set)
    for note in notes(cfg):
        warnings.warn(note, stacklevel=2)
    return cfg


def _config(base: Any, model: Any, data: Any, settings: Mapping[str, Any] | None,
            overrides: list[str] | None) -> ExperimentConfig:
    if isinstance(base, ExperimentConfig):
        raw = base.model_dump(mode="json")
    elif isinstance(base, (str, Path)):
        raw = load_config(base).model_dump(mode="json")
    else:
        raw = dict(base or {})
    raw = _merge(raw, settings or {})
    for section, obj, name_of in (("model", model, model_name), ("data", data, data_name)):
        if obj is None:
            continue
        name = name_of(obj)
        node = raw.setdefault(section, {})
        if node.get("name") != name:  # the base's options were for its own model / dataset
            node["options"] = copy.deepcopy(dict((settings or {}).get(section, {})).get("options", {}))
        node["name"] = name
    for ov in overrides or []:
        apply_override(raw, ov)
    return parse_config(raw, "fedleak.api.config")


# ----------------------------------------------------------------------------------------- train / attack / report


def _run_dir(cfg: ExperimentConfig, run_dir: str | Path | None) -> Path:
    return Path(run_dir) if run_dir is not None else Path(cfg.output.dir) / cfg.name


def train(cfg: Any = None, run_dir: str | Path | None = None, *, model: Any = None, data: Any = None,
          config: Mapping[str, Any] | None = None, set: list[str] | None = None,  # noqa: A002
          quiet: bool = True) -> RunResult:
    """``fedleak train``: train the federation and record the signals into ``run_dir`` (default
    ``<output.dir>/<name>``); an existing run directory with the same config is resumed."""
    from fedleak.attacks.client_audit import train_audited

    cfg = _config(cfg, model, data, config, set)
    for note in notes(cfg):
        warnings.warn(note, stacklevel=2)
    out, _ = train_audited(cfg, _run_dir(cfg, run_dir), quiet=quiet)  # + audit.canary_clients' clients.json
    return RunResult(Path(out), cfg, notes=notes(cfg))


def attack(run_dir: str | Path, attacks: list[str] | str | None = None, *, round: int | None = None,  # noqa: A002
           target: int | None = None, rotate: bool | None = None, strict_fpr: bool = False,
           figures: bool = True, **fedmia_options: Any) -> RunResult:
    """``fedleak attack``: score the run with the membership attacks (all by default) and write RUN/attack/."""
    from fedleak.report.outputs import attack_run

    out, ev = attack_run(run_dir, attacks or None, round=round, target=target, rotate=rotate, strict=strict_fpr,
                         make_figures=figures, **fedmia_options)
    cfg = _saved_config(run_dir)
    return RunResult(Path(run_dir), cfg, ev.metrics, out, attack_result=ev, notes=notes(cfg))


def report(run_dir: str | Path) -> RunResult:
    """``fedleak report``: write RUN/report.html and RUN/report.md (attacking with the defaults first if needed)."""
    from fedleak.report.commands import make_report
    from fedleak.report.outputs import attack_dir, load_attack_metrics

    html, md = make_report(Path(run_dir), quiet=True)
    cfg = _saved_config(run_dir)
    ev = load_attack_metrics(run_dir)
    return RunResult(Path(run_dir), cfg, ev.to_json(), attack_dir(run_dir), html, md, ev, notes=notes(cfg))


def run(cfg: Any = None, run_dir: str | Path | None = None, *, model: Any = None, data: Any = None,
        config: Mapping[str, Any] | None = None, set: list[str] | None = None,  # noqa: A002
        quiet: bool = True) -> RunResult:
    """``fedleak run``: train, attack with every attack, and write the report; returns all of it."""
    trained = train(cfg, run_dir, model=model, data=data, config=config, set=set, quiet=quiet)
    attacked = attack(trained.run_dir)
    reported = report(trained.run_dir)
    return RunResult(trained.run_dir, trained.config, reported.metrics, reported.attack_dir, reported.report_html,
                     reported.report_md, attacked.attack_result, trained.notes)


def load(run_dir: str | Path) -> RunResult:
    """An existing run directory: its config, and its attack metrics and report where they exist."""
    from fedleak.report.outputs import attack_dir, load_attack_metrics

    d = Path(run_dir)
    cfg = _saved_config(d)
    ev = load_attack_metrics(d) if (attack_dir(d) / "metrics.json").is_file() else None
    html, md = d / "report.html", d / "report.md"
    return RunResult(d, cfg, None if ev is None else ev.to_json(), attack_dir(d) if ev else None,
                     html if html.is_file() else None, md if md.is_file() else None, ev, notes=notes(cfg))


def _saved_config(run_dir: str | Path) -> ExperimentConfig:
    p = Path(run_dir) / "config.yaml"
    if not p.is_file():
        raise ConfigError(f"{p} not found: {run_dir} is not a run directory; train it first (fedleak.api.train)")
    return load_config(p)
