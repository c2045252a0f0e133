"""The membership attacks' registry (:data:`ATTACKS`), name resolution and the one check of the FedMIA options.

The formulas and their registration (one ``ATTACKS.add`` line per attack) are in ``attacks.py``; importing
``fedleak.attacks.mia`` fills the registry.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np

from fedleak.errors import FedleakError
from fedleak.registry import Registry
from fedleak.signals.loading import Signals

AGGREGATIONS = ("mean", "mean-log", "stouffer", "fisher", "max")


@dataclass(frozen=True)
class AttackInfo:
    """A registered membership attack: its scoring function and what the reports say about it."""

    name: str
    label: str  # the paper's name
    kind: str  # "single" | "temporal" | "fedmia"
    measure: str
    description: str
    fn: Callable[..., np.ndarray]

    def __call__(self, signals: Signals, **kw: Any) -> np.ndarray:
        return self.fn(signals, **kw)


#: Every membership attack, in the order of the reports (added by ``attacks.py``, one line each).
ATTACKS: Registry[AttackInfo] = Registry("attack", error=FedleakError)

_ALIASES = {
    "fedmia1": "fedmia-i",
    "fedmia-1": "fedmia-i",
    "fedmia2": "fedmia-ii",
    "fedmia-2": "fedmia-ii",
    "loss": "blackbox-loss",
    "cosine": "grad-cosine",
    "cos": "grad-cosine",
}


def resolve_names(names: Iterable[str] | str | None) -> list[str]:
    """Normalise attack names (case, paper labels, commas); None or 'all' = every attack."""
    if names is None:
        return list(ATTACKS)
    if isinstance(names, str):
        names = [names]
    out: list[str] = []
    by_label = {i.label.lower(): n for n, i in ATTACKS.items()}
    for item in names:
        for raw in str(item).split(","):
            key = raw.strip().lower().replace("_", "-").replace(" ", "-")
            if not key:
                continue
            if key == "all":
                out.extend(ATTACKS)
                continue
            name = key if key in ATTACKS else _ALIASES.get(key) or by_label.get(key)
            if name is None:
                raise FedleakError(f"unknown attack '{raw.strip()}'; choose from {', '.join(ATTACKS)} (or 'all')")
            out.append(name)
    seen: set[str] = set()
    uniq = [n for n in out if not (n in seen or seen.add(n))]
    if not uniq:
        raise FedleakError(f"no attack selected; choose from {', '.join(ATTACKS)}")
    return uniq


def runnable_names(signals: Signals, names: Iterable[str] | str | None) -> list[str]:
    """:func:`resolve_names`, except that *every attack* (None or 'all') leaves out the attacks on an array the run
    did not record (a run recorded before margins existed); an attack named explicitly stays (and says so)."""
    sel = resolve_names(names)
    items = [] if names is None else [names] if isinstance(names, str) else list(names)
    if names is None or any(p.strip().lower() == "all" for i in items for p in str(i).split(",")):
        sel = [n for n in sel if signals.has(ATTACKS[n].measure)]
    return sel


FEDMIA_OPTIONS = ("aggregation", "ddof", "eps", "outlier_filter", "robust")


def check_fedmia_options(options: dict[str, Any]) -> None:
    """The one check of the FedMIA options (``aggregation``, ``ddof``, ``eps``, ``outlier_filter``, ``robust``):
    a FedleakError naming the first bad one. ``run_attacks``, ``fedmia``, ``fedmia_rounds``, ``evaluate`` and the
    sweep file (before any signal is read) all call it; an option left out is not checked (its default is valid)."""
    bad = sorted(set(options) - set(FEDMIA_OPTIONS))
    if bad:
        raise FedleakError(f"unknown attack options {bad}; FedMIA accepts {', '.join(FEDMIA_OPTIONS)}")
    agg, ddof, eps = options.get("aggregation", "mean"), options.get("ddof", 0), options.get("eps", 1e-8)
    if agg not in AGGREGATIONS:
        raise FedleakError(f"unknown FedMIA aggregation '{agg}'; choose from {', '.join(AGGREGATIONS)}")
    if _is_bool(ddof) or not isinstance(ddof, numbers.Integral) or ddof < 0:
        raise FedleakError(f"ddof must be an integer >= 0 (got {ddof!r})")
    if _is_bool(eps) or not isinstance(eps, numbers.Real) or not (eps >= 0 and math.isfinite(eps)):
        raise FedleakError(f"eps must be a finite number >= 0 (got {eps!r})")  # `eps < 0` alone lets NaN through
    for flag in ("outlier_filter", "robust"):
        if not _is_bool(options.get(flag, False)):
            raise FedleakError(f"{flag} must be true or false (got {options[flag]!r})")
    if options.get("outlier_filter") and options.get("robust"):
        raise FedleakError("choose either the 3-sigma outlier filter or the robust (median/MAD) null, not both")


def _is_bool(x: Any) -> bool:
    return isinstance(x, (bool, np.bool_))
