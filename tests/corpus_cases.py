"""The bad-input corpus of tests/test_bad_input_corpus.py: generated cases, one per (command, input).

A :class:`Case` is an argv for ``fedleak`` plus an optional ``setup`` that writes the bad files into a fresh
temporary folder first. Tokens in the argv are replaced at run time:

    {tmp}   the case's temporary folder (also the working directory of the command)
    {cfg}   {tmp}/cfg.yaml, written by the config cases
    {run}   {tmp}/run, a fresh copy of a trained and attacked run (only cases with ``needs_run``)

Every case is bad input: each must end in exit code 2 and one ``error:`` line, without a traceback. The values
are chosen by hand from what each key means (the tables below), not read off the code under test.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import yaml

# A seconds-long synthetic experiment (the config cases that are wrongly accepted train it).
BASE: dict[str, Any] = {
    "name": "corpus",
    "seed": 1,
    "data": {"name": "synthetic", "synthetic": {"n_train": 48, "n_test": 16, "num_classes": 3, "size": 6}},
    "partition": {"num_clients": 3},
    "candidates": {"n_test": 8, "n_other": 4},
    "model": {"name": "mlp", "options": {"hidden": [4]}},
    "fl": {"rounds": 2, "batch_size": 8, "lr": 0.05},
    "signals": {"every": 1},
}


@dataclass
class Ctx:
    tmp: Path
    run: Path | None = None

    @property
    def cfg(self) -> Path:
        return self.tmp / "cfg.yaml"

    def expand(self, arg: str) -> str:
        for token, value in (("{tmp}", self.tmp), ("{cfg}", self.cfg), ("{run}", self.run)):
            if token in arg:
                assert value is not None, f"{token} used by a case without needs_run"
                arg = arg.replace(token, str(value))
        return arg


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    setup: Callable[[Ctx], None] | None = None
    needs_run: bool = False
    needle: str | None = None  # must appear in the error line (the file or key the message has to name)
    requires: str | None = None  # a module the command needs (an optional extra): skip without it
    seconds: int = 60  # longer than this is a hang (a case that may block on a FIFO gets less)


# ------------------------------------------------------------------------------------------------ helpers


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def config_with(**changes: Any) -> dict[str, Any]:
    """BASE with dotted keys (written ``a__b`` here) set."""
    raw = copy.deepcopy(BASE)
    for key, value in changes.items():
        set_dotted(raw, key.replace("__", "."), value)
    return raw


def writer(raw: dict[str, Any] | None = None, text: str | None = None) -> Callable[[Ctx], None]:
    """{tmp}/cfg.yaml: ``raw`` (default BASE) as YAML, or ``text`` as it is."""

    def setup(ctx: Ctx) -> None:
        body = text if text is not None else yaml.safe_dump(raw if raw is not None else BASE, sort_keys=False)
        ctx.cfg.write_text(body)

    return setup


def with_value(key: str, value: Any) -> Callable[[Ctx], None]:
    raw = copy.deepcopy(BASE)
    set_dotted(raw, key, value)
    return writer(raw)


def chain(*steps: Callable[[Ctx], None]) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        for s in steps:
            s(ctx)

    return setup


def make_fifo(rel: str) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        os.mkfifo(ctx.tmp / rel)

    return setup


def make_dir(rel: str) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        (ctx.tmp / rel).mkdir(parents=True, exist_ok=True)

    return setup


def make_file(rel: str, data: bytes = b"not what you expected\n") -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        p = ctx.tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)

    return setup


# --------------------------------------------------------------------------------- config values, by kind

# (label, value) pairs. The label is the case id's suffix: "fl.lr=string".
STRING, LIST, MAPPING, NULL, BOOL = ("string", "abc"), ("list", [1]), ("mapping", {"a": 1}), ("null", None), \
    ("bool", True)
FRACTION, NAN, INF, NINF = ("fraction", 1.5), ("nan", float("nan")), ("inf", float("inf")), ("-inf", float("-inf"))
HUGE_INT, HUGE_FLOAT = ("huge", 10**30), ("huge", 1e300)
NEGATIVE, ZERO, EMPTY = ("negative", -1), ("zero", 0), ("empty", "")


def int_values(lo: int, optional: bool = False) -> list[tuple[str, Any]]:
    """Every key that holds a count, size or id: none of these is a valid value."""
    out = [STRING, LIST, MAPPING, BOOL, FRACTION, NAN, INF, HUGE_INT, NEGATIVE]
    if lo >= 1:
        out.append(ZERO)
    if not optional:
        out.append(NULL)
    return out


def float_values(positive: bool, bounded: bool) -> list[tuple[str, Any]]:
    """``positive``: 0 is invalid too; ``bounded``: the key has an upper limit well below 1e300."""
    out = [STRING, LIST, MAPPING, NULL, BOOL, NAN, INF, NINF, NEGATIVE]
    if positive:
        out.append(ZERO)
    if bounded:
        out.append(HUGE_FLOAT)
    return out


BOOL_VALUES = [STRING, ("int", 2), ("fraction", 0.5), LIST, MAPPING, NULL]
STR_VALUES = [("int", 123), LIST, MAPPING, BOOL]
LITERAL_VALUES = [("unknown", "abc"), ("int", 1), LIST, NULL]
INTLIST_VALUES = [STRING, ("scalar", 5), MAPPING, ("fractions", [1.5]), ("strings", ["a"]), ("nulls", [None]),
                  ("negative", [-1]), ("huge", [10**30])]
DICT_VALUES = [STRING, LIST, ("scalar", 5), NULL]

# key -> the bad values of that key. Written out by hand from what each key means (docs/config), so that a
# key the code forgets to validate shows up here as an accepted value.
CONFIG_VALUES: dict[str, list[tuple[str, Any]]] = {
    "name": STR_VALUES + [NULL],
    "seed": int_values(0),
    "device": STR_VALUES + [NULL, EMPTY, ("unknown", "abc"), ("no-such-gpu", "cuda:99")],
    "data.name": STR_VALUES + [NULL, EMPTY, ("unknown", "no-such-dataset")],
    "data.data_dir": STR_VALUES,
    "data.download": BOOL_VALUES,
    "data.mirror": STR_VALUES,
    "data.image_size": int_values(4, optional=True) + [("below-min", 2)],
    "data.channels": int_values(1, optional=True) + [("two", 2)],
    "data.normalization": STR_VALUES + [NULL, EMPTY, ("unknown", "abc")],
    "data.root": STR_VALUES,
    "data.test_fraction": float_values(positive=True, bounded=True) + [("one", 1)],
    "data.max_train": int_values(1, optional=True),
    "data.max_test": int_values(1, optional=True),
    "data.synthetic": DICT_VALUES,
    "partition.num_clients": int_values(2) + [("one", 1)],
    "partition.scheme": LITERAL_VALUES,
    "partition.beta": float_values(positive=True, bounded=False),
    "partition.samples_per_client": int_values(1, optional=True),
    "partition.min_size": int_values(0),
    "candidates.target_client": int_values(0) + [("no-such-client", 3)],
    "candidates.max_members": int_values(1, optional=True),
    "candidates.n_test": int_values(0),
    "candidates.n_other": int_values(0),
    "candidates.protocol": LITERAL_VALUES,
    "candidates.rotating_target": BOOL_VALUES,
    "model.name": STR_VALUES + [NULL, EMPTY, ("unknown", "no-such-model")],
    "model.options": DICT_VALUES,
    "fl.rounds": int_values(1),
    "fl.participation": float_values(positive=True, bounded=True),
    "fl.local_epochs": int_values(1),
    "fl.batch_size": int_values(1),
    "fl.optimizer": LITERAL_VALUES,
    "fl.lr": float_values(positive=True, bounded=False) + [HUGE_FLOAT],  # 1e300 diverges: must say so
    "fl.momentum": float_values(positive=False, bounded=True) + [("one", 1)],
    "fl.weight_decay": float_values(positive=False, bounded=False),
    "fl.fresh_optimizer": BOOL_VALUES,
    "fl.schedule.kind": LITERAL_VALUES,
    "fl.schedule.gamma": float_values(positive=True, bounded=False),
    "fl.schedule.milestones": INTLIST_VALUES,
    "fl.eval_batch_size": int_values(1),
    "fl.eval_train_every": int_values(0),
    "fl.threads": int_values(1, optional=True),
    "defense.name": STR_VALUES + [NULL, EMPTY, ("unknown", "no-such-defense")],
    "defense.params": DICT_VALUES,
    "defense.clients": [v for v in INTLIST_VALUES if v[0] != "negative"] + [("empty", [])],
    "signals.rounds": INTLIST_VALUES + [("empty", []), ("not-a-round", [7])],
    "signals.every": int_values(1),
    "signals.include_first": BOOL_VALUES,
    "signals.chunk_size": int_values(1, optional=True),
    "signals.memory_budget_mb": int_values(16) + [("below-min", 8)],
    "signals.batch_size": int_values(1),
    "output.dir": STR_VALUES + [NULL],
    "output.checkpoint_every": int_values(1),
}

SECTIONS = ("data", "partition", "candidates", "model", "fl", "fl.schedule", "defense", "signals", "output")


# what the error must name when it is not the key itself ("unknown dataset 'x'; known: ..." is clear)
VALUE_NEEDLES = {"data.name": "dataset", "data.normalization": "normalization", "model.name": "model",
                 "defense.name": "defense"}


def config_value_cases() -> list[Case]:
    """Every key of the experiment config set to every kind of wrong value, through ``fedleak train``."""
    out = []
    for key, values in CONFIG_VALUES.items():
        for label, value in values:
            needle = VALUE_NEEDLES.get(key, key) if label in ("unknown", "empty") else key
            out.append(Case(f"{key}={label}", ("train", "{cfg}", "-o", "{tmp}/r"), with_value(key, value),
                            needle=needle))
    return out


def config_structure_cases() -> list[Case]:
    """Whole sections of the wrong shape, unknown keys, and YAML that means something other than it says."""
    argv = ("train", "{cfg}", "-o", "{tmp}/r")
    out = []
    for sec in SECTIONS:
        for label, value in (STRING, LIST, ("scalar", 5), NULL):
            out.append(Case(f"section-{sec}={label}", argv, with_value(sec, value), needle=f"'{sec}"))
        out.append(Case(f"unknown-key-in-{sec}", argv, with_value(f"{sec}.bogus_key", 1), needle="bogus_key"))
    out.append(Case("unknown-section", argv, with_value("bogus_section", {"a": 1}), needle="bogus_section"))
    base_yaml = yaml.safe_dump(BASE, sort_keys=False)
    # a key given twice: YAML keeps the last, so a typo'd copy-paste silently wins
    dup = base_yaml.replace("  lr: 0.05\n", "  lr: 0.05\n  lr: 5.0\n")
    out.append(Case("duplicate-key-fl.lr", argv, writer(text=dup), needle="lr"))
    dup_sec = base_yaml + "fl:\n  rounds: 1\n"
    out.append(Case("duplicate-section-fl", argv, writer(text=dup_sec), needle="fl"))
    out.append(Case("python-object-tag", argv, writer(text=base_yaml + "seed: !!python/object/apply:os.getpid []\n")))
    out.append(Case("yaml-syntax-error", argv, writer(text=base_yaml + "fl: [unclosed\n"), needle="cfg.yaml"))
    out.append(Case("tab-indentation", argv, writer(text="fl:\n\trounds: 2\n"), needle="cfg.yaml"))
    out.append(Case("utf16-text", argv, lambda c: c.cfg.write_bytes(base_yaml.encode("utf-16")), needle="cfg.yaml"))
    return out


def config_semantic_cases() -> list[Case]:
    """Values of the right type that cannot work together or with the data."""
    argv = ("train", "{cfg}", "-o", "{tmp}/r")
    syn = BASE["data"]["synthetic"]
    cases = [
        ("dirichlet-min-size-unreachable", config_with(partition__scheme="dirichlet", partition__min_size=1000),
         "min_size"),
        ("samples-per-client-above-data", config_with(partition__samples_per_client=1000), "samples_per_client"),
        ("milestones-without-kind", config_with(fl__schedule={"kind": "exponential", "milestones": [0]}), None),
        ("mlp-hidden-zero", config_with(model__options={"hidden": [0]}), "hidden"),
        ("mlp-hidden-negative", config_with(model__options={"hidden": [-4]}), "hidden"),
        ("mlp-hidden-string", config_with(model__options={"hidden": "abc"}), "hidden"),
        ("mlp-hidden-null", config_with(model__options={"hidden": None}), "hidden"),
        ("mlp-hidden-huge", config_with(model__options={"hidden": [10**30]}), "hidden"),
        ("mlp-unknown-option", config_with(model__options={"hidden": [4], "bogus": 1}), "bogus"),
        ("lenet-init-unknown", config_with(model__name="lenet_dlg", model__options={"init": "bogus"}), "init"),
        ("resnet-groups-zero", config_with(model__name="resnet18_gn", data__synthetic={**syn, "size": 16},
                                           model__options={"groups": 0}), "groups"),
        ("resnet-groups-string", config_with(model__name="resnet18_gn", data__synthetic={**syn, "size": 16},
                                             model__options={"groups": "abc"}), "groups"),
        ("normalization-cifar10-on-grey", config_with(data__normalization="cifar10"), "normalization"),
        ("imagefolder-without-root", config_with(data__name="imagefolder"), "root"),
        ("mnist-with-empty-data-dir", config_with(data__name="mnist"), "mnist"),
        ("download-from-bad-mirror", config_with(data__name="mnist", data__download=True,
                                                 data__mirror="not a url"), "not a url"),
        ("data-dir-is-a-file", config_with(data__name="mnist", data__data_dir="cfg.yaml"), "cfg.yaml"),
        ("signals-rounds-beyond-run", config_with(signals__rounds=[5]), "signals.rounds"),
        ("defense-clients-empty-list", config_with(defense={"name": "perturb", "clients": []}), "defense.clients"),
    ]
    for key in ("n_train", "n_test", "num_classes", "size", "channels"):
        for label, value in (STRING, ZERO, NEGATIVE, FRACTION, HUGE_INT, NULL, LIST):
            # an absurd count is refused by the memory estimate, which names data.synthetic as a whole
            cases.append((f"synthetic.{key}={label}", config_with(data__synthetic={**syn, key: value}),
                          "data.synthetic" if label == "huge" else f"data.synthetic.{key}"))
    for label, value in (STRING, NEGATIVE, NAN, NULL, LIST):
        cases.append((f"synthetic.noise={label}", config_with(data__synthetic={**syn, "noise": value}),
                      "data.synthetic.noise"))
    cases.append(("synthetic.num_classes=one", config_with(data__synthetic={**syn, "num_classes": 1}), "num_classes"))
    cases.append(("synthetic.channels=two", config_with(data__synthetic={**syn, "channels": 2}), "channels"))
    cases.append(("synthetic.unknown-option", config_with(data__synthetic={**syn, "bogus": 1}), "bogus"))
    out = [Case(i, argv, writer(raw), needle=n) for i, raw, n in cases]
    # a run directory name that is not a name: without --out the run goes to <output.dir>/<name>
    out.append(Case("name-empty-without-out", ("train", "{cfg}"), writer(config_with(name="")), needle="name"))
    out.append(Case("name-with-dotdot-without-out", ("train", "{cfg}"), writer(config_with(name="../escaped")),
                    needle="name"))
    out.append(Case("output.dir-is-a-file-without-out", ("train", "{cfg}"),
                    chain(make_file("afile"), writer(config_with(output__dir="afile"))), needle="afile"))
    return out


# ------------------------------------------------------------------------------------------ defense params

FLOAT_PARAM_VALUES = [STRING, LIST, NAN, NEGATIVE, NULL]
# defense -> {param: kind}, kinds as documented in docs/defenses.md
DEFENSE_PARAMS: dict[str, dict[str, str]] = {
    "perturb": {"sigma": "float", "clip": "float?", "delta": "prob"},
    "dpsgd": {"noise_multiplier": "float", "max_grad_norm": "float", "delta": "prob"},
    "sparse": {"p": "prob", "scope": "choice", "min_numel": "int"},
    "quant": {"bits": "int", "rounding": "choice"},
    "mixup": {"alpha": "float", "labels_only": "bool"},
    "augment": {"recipe": "choice", "crop_padding": "int?", "hflip": "prob?", "rotation": "float?", "p": "prob"},
    "sampling": {"p": "prob", "mode": "choice"},
    "instahide": {"k": "int", "max_coef": "floats", "sign_mask": "bool"},
}
PARAM_VALUES: dict[str, list[tuple[str, Any]]] = {
    "float": [STRING, LIST, NAN, INF, NEGATIVE, NULL, MAPPING],
    "float?": [STRING, LIST, NAN, INF, NEGATIVE, MAPPING],
    "prob": [STRING, LIST, NAN, NEGATIVE, ("above-one", 1.5), NULL],
    "prob?": [STRING, LIST, NAN, NEGATIVE, ("above-one", 1.5)],
    "int": [STRING, LIST, FRACTION, NEGATIVE, HUGE_INT, NULL, BOOL],
    "int?": [STRING, LIST, FRACTION, NEGATIVE, HUGE_INT, BOOL],
    "bool": [STRING, ("int", 2), NULL, LIST],
    "choice": [("unknown", "abc"), ("int", 1), LIST, MAPPING, NULL],
    "floats": [STRING, ("nan", [0.5, float("nan")]), ("reversed", [0.9, 0.1]), ("above-one", [2.0, 3.0]),
               ("empty", []), ("mapping", {"a": 1})],
}


# generic values that are valid for one parameter
VALID_PARAMS = {
    ("sparse", "min_numel", "huge"),  # every tensor stays dense: a no-op sparsifier, but a well-defined one
}


def defense_param_cases() -> list[Case]:
    argv = ("train", "{cfg}", "-o", "{tmp}/r")
    out = []
    for name, params in DEFENSE_PARAMS.items():
        for param, kind in params.items():
            for label, value in PARAM_VALUES[kind]:
                if (name, param, label) in VALID_PARAMS:
                    continue
                raw = config_with(defense={"name": name, "params": {param: value}})
                out.append(Case(f"{name}.{param}={label}", argv, writer(raw), needle=param))
        out.append(Case(f"{name}.unknown-param", argv, writer(config_with(defense={"name": name,
                                                                                   "params": {"bogus": 1}})),
                        needle="bogus"))
    out.append(Case("augment+sampling.unknown-param", argv,
                    writer(config_with(defense={"name": "augment+sampling", "params": {"bogus": 1}})), needle="bogus"))
    out.append(Case("none-with-params", argv, writer(config_with(defense={"name": "none", "params": {"sigma": 1}})),
                    needle="sigma"))
    return out


# ------------------------------------------------------------------------------------------ --set and paths


# `fedleak train CFG --set X`: (label, X, what the error must name)
SET_OVERRIDES = [
    ("set-section-to-scalar", "fl=5", "'fl'"),
    ("set-empty-key", "=5", "--set"),
    ("set-empty-value", "fl.lr=", "fl.lr"),
    ("set-through-a-value", "seed.x=1", "seed"),
    ("set-unknown-section", "bogus.x=1", "bogus"),
    ("set-synthetic-string", "data.synthetic.n_train=abc", "n_train"),
    ("set-hidden-zero", "model.options.hidden=[0]", "hidden"),
    ("set-defense-param-without-defense", "defense.params.sigma=abc", "sigma"),
    ("set-yaml-tag", "seed=!!python/object/apply:os.getpid []", "seed"),
    ("set-space-in-key", "fl. lr=0.1", "lr"),
    ("set-trailing-dot", "fl.=1", "--set"),
]


def set_cases() -> list[Case]:
    """``--set`` / ``--data-dir`` / ``--out`` / paths on train, run, flower-sim and datasets."""
    out = [Case(f"train-{i}", ("train", "{cfg}", "-o", "{tmp}/r", "--set", s), writer(), needle=n)
           for i, s, n in SET_OVERRIDES]
    return out + path_cases() + front_end_cases()


def path_cases() -> list[Case]:
    """Paths of the wrong kind: missing, a directory for a file, a file for a directory, a FIFO."""
    return [
        Case("train-config-missing", ("train", "{tmp}/missing.yaml", "-o", "{tmp}/r"), needle="missing.yaml"),
        Case("train-config-is-a-dir", ("train", "{tmp}/d.yaml", "-o", "{tmp}/r"), make_dir("d.yaml"), needle="d.yaml"),
        Case("train-config-is-a-fifo", ("train", "{tmp}/p.yaml", "-o", "{tmp}/r"), make_fifo("p.yaml"),
             needle="p.yaml"),
        Case("train-config-empty-name", ("train", "", "-o", "{tmp}/r")),
        Case("train-out-is-a-file", ("train", "{cfg}", "-o", "{tmp}/afile"), chain(writer(), make_file("afile")),
             needle="afile"),
        Case("train-out-under-a-file", ("train", "{cfg}", "-o", "{tmp}/afile/r"), chain(writer(), make_file("afile")),
             needle="afile"),
        Case("train-out-is-a-fifo", ("train", "{cfg}", "-o", "{tmp}/p"), chain(writer(), make_fifo("p")),
             needle="{tmp}/p"),
        Case("train-data-dir-is-a-file", ("train", "{cfg}", "-o", "{tmp}/r", "--data-dir", "{tmp}/afile"),
             chain(writer(config_with(data__name="mnist")), make_file("afile")), needle="afile"),
        Case("train-data-dir-missing", ("train", "{cfg}", "-o", "{tmp}/r", "--data-dir", "{tmp}/nowhere"),
             writer(config_with(data__name="mnist")), needle="nowhere"),
        Case("train-preset-typo", ("train", "digits-quik", "-o", "{tmp}/r"), needle="digits-quik"),
        Case("train-out-holds-another-runs-files", ("train", "{cfg}", "-o", "{tmp}/r"),
             chain(writer(), make_file("r/metrics.jsonl", b'{"round": 0}\n')), needle="{tmp}/r"),
        Case("datasets-data-dir-is-a-file", ("datasets", "--data-dir", "{tmp}/afile"), make_file("afile"),
             needle="afile"),
        Case("datasets-data-dir-is-a-fifo", ("datasets", "--data-dir", "{tmp}/p"), make_fifo("p"),
             needle="{tmp}/p"),
    ]


def front_end_cases() -> list[Case]:
    """The config front end of `train` through the other commands that share it."""
    out = [
        Case("run-unknown-key", ("run", "{cfg}", "-o", "{tmp}/r"), with_value("fl.rouds", 2), needle="fl.rouds"),
        Case("run-binary-config", ("run", "{cfg}", "-o", "{tmp}/r"), lambda c: c.cfg.write_bytes(bytes(range(256))),
             needle="cfg.yaml"),
        Case("run-set-typo", ("run", "{cfg}", "-o", "{tmp}/r", "--set", "fl.lr=abc"), writer(), needle="fl.lr"),
        Case("run-out-is-a-file", ("run", "{cfg}", "-o", "{tmp}/afile"), chain(writer(), make_file("afile")),
             needle="afile"),
        Case("run-config-is-a-dir", ("run", "{tmp}/d.yaml", "-o", "{tmp}/r"), make_dir("d.yaml"), needle="d.yaml"),
        Case("flower-sim-unknown-key", ("flower-sim", "{cfg}", "-o", "{tmp}/r"), with_value("fl.rouds", 2),
             needle="fl.rouds"),
        Case("flower-sim-non-finite", ("flower-sim", "{cfg}", "-o", "{tmp}/r", "--set", "fl.lr=.nan"), writer(),
             needle="fl.lr"),
        Case("flower-sim-config-missing", ("flower-sim", "{tmp}/missing.yaml", "-o", "{tmp}/r"), needle="missing.yaml"),
        Case("flower-sim-out-is-a-file", ("flower-sim", "{cfg}", "-o", "{tmp}/afile"),
             chain(writer(), make_file("afile")), needle="afile"),
    ]
    # flower-sim needs the flower extra; without it every case is the (tested) "Flower is not installed" line
    return [replace(c, requires="flwr") if c.argv[0] == "flower-sim" else c for c in out]


# --------------------------------------------------------------------------------- run directory readers


def _clear(p: Path) -> None:
    if p.is_dir():
        shutil.rmtree(p)
    elif p.exists():
        p.unlink()


def in_run(rel: str, *, data: bytes | None = None, obj: Any = None, kind: str = "") -> Callable[[Ctx], None]:
    """Replace RUN/rel by bytes, by a JSON value, or by a directory / FIFO (``kind``)."""

    def setup(ctx: Ctx) -> None:
        p = ctx.run / rel
        _clear(p)
        if kind == "dir":
            p.mkdir()
        elif kind == "fifo":
            os.mkfifo(p)
        else:
            p.write_bytes(data if data is not None else json.dumps(obj).encode())

    return setup


def edit_json(rel: str, edit: Callable[[Any], None]) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        p = ctx.run / rel
        d = json.loads(p.read_text())
        edit(d)
        p.write_text(json.dumps(d))

    return setup


def truncate(rel: str, keep: int) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        p = ctx.run / rel
        p.write_bytes(p.read_bytes()[:keep])

    return setup


def append_metrics_line(record: dict[str, Any]) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        with open(ctx.run / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    return setup


def edit_config_and_blank_meta(ctx: Ctx) -> None:
    p = ctx.run / "config.yaml"
    raw = yaml.safe_load(p.read_text())
    raw["fl"]["lr"] = 0.5
    p.write_text(yaml.safe_dump(raw))
    (ctx.run / "meta.json").write_text("{}")


def _set_all_auc(m: dict[str, Any]) -> None:
    for a in m["attacks"].values():
        a["auc"] = "abc"


GARBAGE = b"\x00\x01garbage\xff\xfe" * 10
PICKLE = b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01."
NPY_HEADER_ONLY = b"\x93NUMPY\x01\x00v\x00{'descr': '<f8', 'fortran_order': False, 'shape': (0,), }" + b" " * 53 + b"\n"
MJ, SZ = "attack/metrics.json", "attack/scores.npz"
BOTH = ("report", "summarize")

# paths given as a run directory that hold no run: (label, setup, path)
NOT_RUNS = [
    ("missing", None, "{tmp}/nowhere"),
    ("empty-dir", make_dir("empty"), "{tmp}/empty"),
    ("a-file", make_file("afile"), "{tmp}/afile"),
    ("a-fifo", make_fifo("p"), "{tmp}/p"),
    ("config-only", make_file("c/config.yaml", yaml.safe_dump(BASE).encode()), "{tmp}/c"),
]
# attack/metrics.json as report and summarize read it back: (label, damage, commands). report re-attacks when
# metrics.json lacks attacks, so an empty or partial attack list is no error there.
METRICS_JSON_DAMAGE = [
    ("garbage", in_run(MJ, data=GARBAGE), BOTH),
    ("empty", in_run(MJ, data=b""), BOTH),
    ("truncated", truncate(MJ, 100), BOTH),
    ("json-list", in_run(MJ, obj=[1, 2]), BOTH),
    ("json-empty-object", in_run(MJ, obj={}), BOTH),
    ("no-attacks-key", edit_json(MJ, lambda m: m.pop("attacks")), BOTH),
    ("attacks-is-a-list", edit_json(MJ, lambda m: m.__setitem__("attacks", [])), ("summarize",)),
    ("auc-is-a-string", edit_json(MJ, _set_all_auc), BOTH),
    ("round-is-a-string", edit_json(MJ, lambda m: m.__setitem__("round", "last")), ("report",)),
    ("a-directory", in_run(MJ, kind="dir"), BOTH),
]
# attack/scores.npz as `summarize --by-origin` reads it
SCORES_NPZ_DAMAGE = [
    ("garbage", in_run(SZ, data=GARBAGE)),
    ("empty", in_run(SZ, data=b"")),
    ("pickle", in_run(SZ, data=PICKLE)),
    ("truncated", truncate(SZ, 200)),
    ("a-directory", in_run(SZ, kind="dir")),
    ("npy-not-npz", in_run(SZ, data=NPY_HEADER_ONLY)),
]
# other files and folders: (label, damage, commands, what the error must name)
OTHER_DAMAGE = [
    ("attack-dir-is-a-file", in_run("attack", data=b"x"), ("attack", "report"), "attack"),
    ("report.html-a-directory", in_run("report.html", kind="dir"), ("report",), "report.html"),
    ("metrics.jsonl-test-acc-string", append_metrics_line({"round": 1, "test_acc": "abc"}), BOTH, "metrics.jsonl"),
    ("metrics.jsonl-round-negative", append_metrics_line({"round": -5, "test_acc": 0.5}), ("report",), "metrics.jsonl"),
    ("metrics.jsonl-a-directory", in_run("metrics.jsonl", kind="dir"), ("report",), "metrics.jsonl"),
    ("meta.json-list", in_run("meta.json", obj=[1]), ("attack", "report"), "meta.json"),
    ("meta.json-client-sizes-string", edit_json("meta.json", lambda m: m.__setitem__("client_sizes", "abc")),
     ("report",), "meta.json"),
    ("meta.json-blanked-and-config-edited", edit_config_and_blank_meta, ("attack", "report"), "config.yaml"),
    ("config.yaml-a-directory", in_run("config.yaml", kind="dir"), ("attack", "report"), "config.yaml"),
    ("signals-is-a-file", in_run("signals", data=b"x"), ("attack",), "signals"),
    ("round-file-is-a-directory", in_run("signals/round_0001.npz", kind="dir"), ("attack",), "round_0001.npz"),
]
# `fedleak train RUN/config.yaml --out RUN` on a finished run whose files are of the wrong kind
RESUME_DAMAGE = [
    ("checkpoint.pt-a-directory", in_run("checkpoint.pt", kind="dir"), "checkpoint.pt"),
    ("candidates.npz-a-directory", in_run("candidates.npz", kind="dir"), "candidates.npz"),
    ("split.npz-a-directory", in_run("split.npz", kind="dir"), "split.npz"),
    ("meta.json-a-directory", in_run("meta.json", kind="dir"), "meta.json"),
    ("signals-is-a-file", in_run("signals", data=b"x"), "signals"),
    ("final_model.pt-a-directory", in_run("final_model.pt", kind="dir"), "final_model.pt"),
    ("metrics.jsonl-binary", in_run("metrics.jsonl", data=GARBAGE), "metrics.jsonl"),
    ("lock-is-a-directory", in_run(".lock", kind="dir"), ".lock"),
]


def run_dir_cases() -> list[Case]:
    """attack / report / summarize / train-resume on run directories that are not one, or damaged in ways the
    integrity tests do not cover yet."""
    out = []
    for label, setup, path in NOT_RUNS:
        for cmd in (("attack",), ("report",), ("summarize",), ("summarize", "--by-origin")):
            out.append(Case(f"{'-'.join(cmd)}-run-dir-{label}", (*cmd, path), setup, needle=path.split("/")[-1]))
    for label, setup, cmds in METRICS_JSON_DAMAGE:
        out += [Case(f"{cmd}-{MJ.replace('/', '-')}-{label}", (cmd, "{run}"), setup, True, "metrics.json")
                for cmd in cmds]
    for label, setup in SCORES_NPZ_DAMAGE:
        out.append(Case(f"summarize-by-origin-{SZ.replace('/', '-')}-{label}", ("summarize", "--by-origin", "{run}"),
                        setup, True, "scores.npz"))
    for label, setup, cmds, needle in OTHER_DAMAGE:  # (an attack wrongly accepted draws no figures: 3 s less)
        out += [Case(f"{cmd}-{label}", (cmd, "{run}", *(["--no-figures"] if cmd == "attack" else [])), setup, True,
                     needle) for cmd in cmds]
    # a FIFO where a round file should be: reading it must not block (a fixed reader answers at once)
    out.append(Case("attack-round-file-is-a-fifo", ("attack", "{run}"), in_run("signals/round_0001.npz", kind="fifo"),
                    True, "round_0001.npz", seconds=3))
    for label, setup, needle in RESUME_DAMAGE:
        out.append(Case(f"train-resume-{label}", ("train", "{run}/config.yaml", "-o", "{run}"), setup, True, needle))
    return out


# --------------------------------------------------------------------------------------- attack options


def attack_option_cases() -> list[Case]:
    opts = [
        ("attacks-nonsense", ["--attacks", "nonsense"], "nonsense"),
        ("attacks-empty", ["--attacks", ""], "attack"),
        ("attacks-only-commas", ["--attacks", ",,"], "attack"),
        ("attacks-one-bad-in-list", ["--attacks", "fedmia-ii,bogus"], "bogus"),
        ("round-not-recorded", ["--round", "99"], "round"),
        ("round-too-negative", ["--round", "-99"], "round"),
        ("round-not-an-int", ["--round", "last"], "--round"),
        ("target-negative", ["--target", "-1"], "target"),
        ("target-no-such-client", ["--target", "99"], "target"),
        ("target-not-an-int", ["--target", "x"], "--target"),
        ("ddof-negative", ["--ddof", "-1"], "ddof"),
        ("ddof-larger-than-shadows", ["--ddof", "1000000"], "ddof"),
        ("eps-negative", ["--eps", "-1"], "eps"),
        ("eps-nan", ["--eps", "nan"], "eps"),
        ("eps-inf", ["--eps", "inf"], "eps"),
        ("eps-not-a-number", ["--eps", "abc"], "--eps"),
        ("aggregation-unknown", ["--aggregation", "median"], "median"),
        ("aggregation-empty", ["--aggregation", ""], "aggregation"),
        ("outlier-filter-and-robust", ["--outlier-filter", "--robust"], "robust"),
        ("unknown-option-headline", ["--headline", "tpr"], "--headline"),
    ]
    return [Case(f"attack-{i}", ("attack", "{run}", "--no-figures", *a), needs_run=True, needle=n) for i, a, n in opts]


def summarize_cases() -> list[Case]:
    return [
        Case("summarize-no-run-dirs", ("summarize",)),
        Case("summarize-the-same-run-twice", ("summarize", "{run}", "{run}"), needs_run=True, needle="run"),
        Case("summarize-one-good-one-missing", ("summarize", "{run}", "{tmp}/nowhere"), needs_run=True,
             needle="nowhere"),
        Case("summarize-unknown-option", ("summarize", "--headline", "{run}"), needs_run=True, needle="--headline"),
    ]


# ------------------------------------------------------------------------------------------------- invert

# A cheap valid inversion: one 16x16 synthetic image, DLG's LeNet, one L-BFGS step (the bad cases that are
# wrongly accepted run this).
INVERT = ("invert", "--preset", "dlg", "--dataset", "synthetic", "--iterations", "1", "-q", "-o", "{tmp}/inv")


# (label, args added to INVERT, what the error must name)
INVERT_ARGS: list[tuple[str, list[str], str]] = [
    ("preset-unknown", ["--preset", "bogus"], "bogus"),
    ("preset-empty", ["--preset", ""], "preset"),
    ("dataset-unknown", ["--dataset", "bogus"], "bogus"),
    ("dataset-without-files", ["--dataset", "mnist"], "mnist"),
    ("data-dir-is-a-file", ["--dataset", "mnist", "--data-dir", "{tmp}/afile"], "afile"),
    ("model-unknown", ["--model", "bogus"], "bogus"),
    ("defense-unknown", ["--defense", "bogus"], "--defense"),
    ("defense-param-not-kv", ["--defense", "soteria", "--defense-param", "rate"], "rate"),
    ("defense-param-unknown", ["--defense", "soteria", "--defense-param", "bogus=1"], "bogus"),
    ("defense-param-rate-string", ["--defense", "soteria", "--defense-param", "rate=abc"], "rate"),
    ("defense-param-rate-nan", ["--defense", "soteria", "--defense-param", "rate=.nan"], "rate"),
    ("defense-param-layer-unknown", ["--defense", "soteria", "--defense-param", "layer=bogus"], "bogus"),
    ("pruning-rate-negative", ["--defense", "soteria", "--pruning-rate", "-5"], "rate"),
    ("pruning-rate-above-100", ["--defense", "soteria", "--pruning-rate", "150"], "rate"),
    ("pruning-rate-without-pruning", ["--pruning-rate", "50"], "--pruning-rate"),
    ("noise-scale-negative", ["--defense", "dp-gaussian", "--noise-scale", "-1"], "scale"),
    ("clip-zero", ["--defense", "dp-gaussian", "--clip", "0"], "clip"),
    ("clip-negative", ["--defense", "dp-laplace", "--clip", "-1"], "clip"),
    ("noise-scale-without-dp", ["--noise-scale", "1"], "--noise-scale"),
    ("images-zero", ["--images", "0"], "images"),
    ("images-negative", ["--images", "-1"], "images"),
    ("images-not-an-int", ["--images", "abc"], "--images"),
    ("start-index-negative", ["--start-index", "-1"], "start_index"),
    ("start-index-beyond-split", ["--start-index", "100000"], "100000"),
    ("batch-size-zero", ["--batch-size", "0"], "batch_size"),
    ("iterations-negative", ["--iterations", "-1"], "iterations"),
    ("restarts-zero", ["--restarts", "0"], "restarts"),
    ("local-steps-negative", ["--local-steps", "-1"], "local_steps"),
    ("local-lr-zero", ["--local-lr", "0"], "local_lr"),
    ("seed-negative", ["--seed", "-1"], "seed"),
    ("threads-zero", ["--threads", "0"], "threads"),
    ("threads-huge", ["--threads", "100000"], "threads"),
    ("labels-unknown", ["--labels", "maybe"], "--labels"),
    ("attack-unknown", ["--attack", "bogus"], "--attack"),
    ("adaptive-unknown", ["--adaptive", "bogus"], "--adaptive"),
    ("adaptive-readout-with-fedavg", ["--adaptive", "readout", "--local-steps", "1"], "readout"),
    ("set-not-kv", ["--set", "tv"], "tv"),
    ("set-unknown-key", ["--set", "bogus=1"], "bogus"),
    ("set-unknown-attack-key", ["--set", "attack.bogus=1"], "bogus"),
    ("set-attack-to-scalar", ["--set", "attack=5"], "attack"),
    ("set-through-a-value", ["--set", "seed.x=1"], "seed"),
    ("set-empty-key", ["--set", "=1"], "--set"),
    ("set-optimizer-unknown", ["--set", "attack.optimizer=bogus"], "optimizer"),
    ("set-indices-empty", ["--set", "indices=[]"], "indices"),
    ("set-indices-negative", ["--set", "indices=[-1]"], "indices"),
    ("set-model-options-unknown", ["--set", "model_options={bogus: 1}"], "bogus"),
    ("set-split-unknown", ["--set", "split=validation"], "split"),
    ("set-value-bad-yaml", ["--set", "attack.tv=[1,"], "attack.tv"),
    ("set-normalization-unknown", ["--set", "normalization=bogus"], "normalization"),
    ("set-tv-negative", ["--set", "attack.tv=-1"], "tv"),
    ("set-lr-zero", ["--set", "attack.lr=0"], "lr"),
    ("out-is-a-file", ["-o", "{tmp}/afile"], "afile"),
    ("out-under-a-file", ["-o", "{tmp}/afile/inv"], "afile"),
]


def invert_cases() -> list[Case]:
    out = []
    for label, args, needle in INVERT_ARGS:
        setup = make_file("afile") if any("afile" in a for a in args) else None
        out.append(Case(f"invert-{label}", (*INVERT, *args), setup, needle=needle))
    out.append(Case("invert-missing-out", ("invert", "--preset", "dlg", "--dataset", "synthetic"), needle="--out"))
    return out


# -------------------------------------------------------------------------------------------------- sweep

TINY_SWEEP_BASE = config_with(fl__rounds=1)


def sweep_writer(spec: dict[str, Any] | None = None, base: dict[str, Any] | None = None,
                 base_text: str | bytes | None = None) -> Callable[[Ctx], None]:
    """{tmp}/sweep.yaml (one perturb setting, one seed, base.yaml) with ``spec`` merged in; {tmp}/base.yaml."""

    def setup(ctx: Ctx) -> None:
        if base_text is not None:
            body = base_text if isinstance(base_text, bytes) else base_text.encode()
        else:
            body = yaml.safe_dump(base if base is not None else TINY_SWEEP_BASE).encode()
        (ctx.tmp / "base.yaml").write_bytes(body)
        sweep = {"base": "base.yaml", "out": str(ctx.tmp / "out"), "seeds": [0],
                 "defenses": [{"name": "perturb", "strength": {"sigma": [0.1]}}], **(spec or {})}
        (ctx.tmp / "sweep.yaml").write_text(yaml.safe_dump(sweep))

    return setup


def _perturb(**grid: Any) -> dict[str, Any]:
    return {"defenses": [{"name": "perturb", **grid}]}


# keys of the sweep file: (label, merged into the spec, what the error must name)
SWEEP_SPECS: list[tuple[str, dict[str, Any], str]] = [
    ("unknown-key", {"bogus": 1}, "bogus"),
    ("base-missing", {"base": "nowhere.yaml"}, "nowhere"),
    ("base-null", {"base": None}, "base"),
    ("base-list", {"base": ["a"]}, "base"),
    ("seeds-empty", {"seeds": []}, "seeds"),
    ("seeds-string", {"seeds": "abc"}, "seeds"),
    ("seeds-strings", {"seeds": ["a"]}, "seeds"),
    ("seeds-negative", {"seeds": [-1]}, "seed"),
    ("seeds-fraction", {"seeds": [1.5]}, "seeds"),
    ("seeds-numeric-string", {"seeds": ["1"]}, "seeds"),
    ("seeds-duplicate", {"seeds": [0, 0]}, "seed"),
    ("seeds-bool", {"seeds": [True]}, "seeds"),
    ("threads-zero", {"threads": 0}, "threads"),
    ("threads-string", {"threads": "abc"}, "threads"),
    ("threads-fraction", {"threads": 1.5}, "threads"),
    ("threads-huge", {"threads": 10**9}, "threads"),
    ("defenses-not-a-list", {"defenses": "perturb"}, "defenses"),
    ("defense-without-name", {"defenses": [{"strength": {"sigma": [0.1]}}]}, "name"),
    ("defense-unknown", {"defenses": [{"name": "bogus"}]}, "bogus"),
    ("defense-unknown-key", _perturb(bogus=1), "bogus"),
    ("strength-not-a-mapping", _perturb(strength=[0.1]), "strength"),
    ("strength-two-params", _perturb(strength={"sigma": [0.1], "clip": [1]}), "strength"),
    ("strength-empty-values", _perturb(strength={"sigma": []}), "strength"),
    ("strength-scalar-values", _perturb(strength={"sigma": 0.1}), "sigma"),
    ("strength-bad-value", _perturb(strength={"sigma": ["abc"]}), "sigma"),
    ("strength-nan", _perturb(strength={"sigma": [float("nan")]}), "sigma"),
    ("strength-repeated-value", _perturb(strength={"sigma": [0.1, 0.1]}), "0.1"),
    ("strength-unknown-param", _perturb(strength={"bogus": [1]}), "bogus"),
    ("params-unknown", _perturb(params={"bogus": 1}), "bogus"),
    ("params-not-a-mapping", _perturb(params=[1]), "params"),
    ("clients-no-such-client", _perturb(clients=[99]), "clients"),
    ("labels-repeated", {"defenses": [{"name": "perturb"}, {"name": "perturb"}]}, "label"),
    ("none-with-baseline", {"defenses": [{"name": "none"}]}, "none"),
    ("nothing-to-run", {"defenses": [], "baseline": False}, "nothing to run"),
    ("baseline-string", {"baseline": "abc"}, "baseline"),
    ("variants-not-a-list", {"variants": "abc"}, "variants"),
    ("variant-without-label", {"variants": [{"set": {"fl.rounds": 1}}]}, "label"),
    ("variant-labels-repeated", {"variants": [{"label": "a"}, {"label": "a"}]}, "variant"),
    ("variant-set-unknown-key", {"variants": [{"label": "a", "set": {"fl.rouds": 1}}]}, "fl.rouds"),
    ("variant-set-through-a-value", {"variants": [{"label": "a", "set": {"seed.x": 1}}]}, "seed"),
    ("set-unknown-key", {"set": {"fl.rouds": 1}}, "fl.rouds"),
    ("set-bad-value", {"set": {"fl.lr": "abc"}}, "fl.lr"),
    ("set-not-a-mapping", {"set": ["fl.rounds=1"]}, "set"),
    ("set-empty-key", {"set": {"": 1}}, "set"),
    ("attacks-names-unknown", {"attacks": {"names": ["bogus"]}}, "bogus"),
    ("attacks-names-number", {"attacks": {"names": 5}}, "names"),
    ("attacks-options-unknown", {"attacks": {"options": {"bogus": 1}}}, "bogus"),
    ("attacks-options-aggregation-unknown", {"attacks": {"options": {"aggregation": "median"}}}, "median"),
    ("attacks-options-ddof-negative", {"attacks": {"options": {"ddof": -1}}}, "ddof"),
    ("attacks-rotate-string", {"attacks": {"rotate": "abc"}}, "rotate"),
    ("attacks-unknown-key", {"attacks": {"bogus": 1}}, "bogus"),
    ("attacks-not-a-mapping", {"attacks": "all"}, "attacks"),
    ("hypervolume-unknown-key", {"hypervolume": {"bogus": 1}}, "bogus"),
    ("name-empty", {"name": "", "out": None}, "name"),
]
# the sweep file and its base config as files: (label, setup, what the error must name)
SWEEP_FILES: list[tuple[str, Callable[[Ctx], None] | None, str]] = [
    ("file-missing", None, "sweep.yaml"),
    ("file-is-a-dir", make_dir("sweep.yaml"), "sweep.yaml"),
    ("file-is-a-fifo", make_fifo("sweep.yaml"), "sweep.yaml"),
    ("file-binary", make_file("sweep.yaml", bytes(range(256))), "sweep.yaml"),
    ("file-nul-bytes", make_file("sweep.yaml", b"base: base.yaml\n\x00\x00"), "sweep.yaml"),
    ("file-empty", make_file("sweep.yaml", b""), "sweep.yaml"),
    ("file-top-level-list", make_file("sweep.yaml", b"- base\n"), "sweep.yaml"),
    ("file-bad-yaml", make_file("sweep.yaml", b"base: [unclosed\n"), "sweep.yaml"),
    ("file-python-tag", make_file("sweep.yaml", b"base: !!python/object/apply:os.getpid []\n"), "sweep.yaml"),
    ("base-binary", sweep_writer(base_text=bytes(range(256))), "base.yaml"),
    ("base-bad-yaml", sweep_writer(base_text="fl: [unclosed\n"), "base.yaml"),
    ("base-top-level-list", sweep_writer(base_text="- fl\n"), "base.yaml"),
    ("base-is-a-dir", chain(make_dir("basedir.yaml"), sweep_writer({"base": "basedir.yaml"})), "basedir.yaml"),
    ("base-unknown-key", sweep_writer(base=config_with(fl__rouds=1)), "fl.rouds"),
    ("base-non-finite", sweep_writer(base=config_with(fl__lr=float("nan"))), "fl.lr"),
    ("base-python-tag", sweep_writer(base_text="seed: !!python/object/apply:os.getpid []\n"), "base.yaml"),
]
# options of `fedleak sweep ... --dry-run`: (label, args, what the error must name)
SWEEP_OPTIONS: list[tuple[str, list[str], str]] = [
    ("backend-unknown", ["--backend", "slurm"], "slurm"),
    ("workers-zero", ["--workers", "0"], "--workers"),
    ("workers-negative", ["--workers", "-3"], "--workers"),
    ("timeout-negative", ["--timeout", "-1"], "timeout"),
    ("timeout-zero", ["--timeout", "0"], "timeout"),
    ("timeout-nan", ["--timeout", "nan"], "timeout"),
    ("cpus-per-run-zero", ["--cpus-per-run", "0"], "cpus"),
    ("cpus-per-run-negative", ["--cpus-per-run", "-1"], "cpus"),
    ("set-not-kv", ["--set", "fl.rounds"], "fl.rounds"),
    ("set-bad-yaml", ["--set", "fl.lr=[1,"], "fl.lr"),
    ("set-unknown-key", ["--set", "fl.rouds=1"], "fl.rouds"),
    ("set-through-a-value", ["--set", "seed.x=1"], "seed"),
    ("data-dir-is-a-file", ["--data-dir", "{tmp}/afile", "--set", "data.name=mnist"], "afile"),
    ("address-with-local-backend", ["--address", "ray://nowhere:1"], "address"),
    ("dry-run-and-report-only", ["--report-only"], "report-only"),
]


def sweep_cases() -> list[Case]:
    dry = ("sweep", "{tmp}/sweep.yaml", "--dry-run")
    out = [Case(f"sweep-{label}", dry, sweep_writer(spec), needle=n) for label, spec, n in SWEEP_SPECS]
    out += [Case(f"sweep-{label}", dry, setup, needle=n) for label, setup, n in SWEEP_FILES]
    for label, args, needle in SWEEP_OPTIONS:
        setup = chain(make_file("afile"), sweep_writer()) if any("afile" in a for a in args) else sweep_writer()
        out.append(Case(f"sweep-option-{label}", (*dry, *args), setup, needle=needle))
    # an output folder that is a file is only touched by a real run (inline: no worker processes)
    real = ("sweep", "{tmp}/sweep.yaml", "--backend", "inline", "--no-plots")
    out.append(Case("sweep-out-is-a-file", real, chain(make_file("afile"), sweep_writer({"out": "afile"})),
                    needle="afile"))
    out.append(Case("sweep-option-out-is-a-file", (*real, "--out", "{tmp}/afile"),
                    chain(make_file("afile"), sweep_writer()), needle="afile"))
    return out


# ----------------------------------------------------------------------------------- command-line syntax


def usage_cases() -> list[Case]:
    """click's own checks: missing arguments, unknown commands/options, values of the wrong type."""
    return [
        Case("usage-unknown-command", ("trian",), needle="trian"),
        Case("usage-train-missing-config", ("train",), needle="CONFIG"),
        Case("usage-attack-missing-run-dir", ("attack",), needle="RUN_DIR"),
        Case("usage-train-unknown-option", ("train", "{cfg}", "--rounds", "5"), writer(), needle="--rounds"),
        Case("usage-set-without-value", ("train", "{cfg}", "--set"), writer(), needle="--set"),
        Case("usage-invert-choice", ("invert", "-o", "{tmp}/inv", "--defense", "bogus"), needle="--defense"),
        Case("usage-flower-num-cpus-zero", ("flower-sim", "{cfg}", "--num-cpus", "0"), writer(), needle="--num-cpus"),
    ]


def all_families() -> dict[str, list[Case]]:
    return {
        "config_value": config_value_cases(),
        "config_structure": config_structure_cases(),
        "config_semantic": config_semantic_cases(),
        "defense_param": defense_param_cases(),
        "set_and_paths": set_cases(),
        "run_dir": run_dir_cases(),
        "attack_option": attack_option_cases(),
        "summarize": summarize_cases(),
        "invert": invert_cases(),
        "sweep": sweep_cases(),
        "usage": usage_cases(),
    }
