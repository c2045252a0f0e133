"""Validation of a defense's ``params`` mapping: unknown names and bad values become one-line errors."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from fedleak.config import ConfigError


@dataclass(frozen=True)
class Param:
    """One accepted parameter: its default, its type and an optional check.

    ``kind``: "float", "int", "bool", "str" or "floats" (a list of floats). ``choices`` restricts a str.
    ``check(value) -> str | None`` returns a message (what is wrong) or None.
    ``optional``: the value may be None (YAML ``null``).
    """

    default: Any
    kind: str = "float"
    doc: str = ""
    choices: Sequence[str] | None = None
    check: Callable[[Any], str | None] | None = None
    optional: bool = False


def _coerce(defense: str, name: str, value: Any, p: Param) -> Any:
    where = f"defense '{defense}': parameter '{name}'"
    if value is None:
        if p.optional:
            return None
        raise ConfigError(f"{where} must not be null")
    try:
        if p.kind == "float":
            if isinstance(value, bool):
                raise TypeError
            out: Any = float(value)
        elif p.kind == "int":
            if isinstance(value, (bool, float)):  # 1e20 or 4.0 is not an int; nor is inf
                raise TypeError
            out = int(value)
        elif p.kind == "bool":
            if not isinstance(value, bool):
                raise TypeError
            out = value
        elif p.kind == "str":
            out = str(value)
        elif p.kind == "floats":
            vals = value if isinstance(value, (list, tuple)) else [value]
            out = [float(v) for v in vals]
        else:  # pragma: no cover - programming error
            raise AssertionError(p.kind)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{where} must be of type {p.kind}, got {value!r}") from None
    if p.kind in ("float", "floats") and not all(math.isfinite(v) for v in (out if p.kind == "floats" else [out])):
        raise ConfigError(f"{where} must be a finite number, got {value!r}")
    if p.choices is not None and out not in p.choices:
        raise ConfigError(f"{where} must be one of {', '.join(map(str, p.choices))}, got {value!r}")
    if p.check is not None:
        msg = p.check(out)
        if msg:
            raise ConfigError(f"{where} {msg} (got {value!r})")
    return out


def parse_params(defense: str, given: dict[str, Any] | None, spec: dict[str, Param]) -> dict[str, Any]:
    """Defaults merged with ``given``; unknown names and bad values raise ConfigError (one line)."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(spec))
    if unknown:
        raise ConfigError(
            f"defense '{defense}': unknown parameter(s) {', '.join(unknown)}; allowed: {', '.join(sorted(spec))}"
        )
    return {name: _coerce(defense, name, given.get(name, p.default), p) for name, p in spec.items()}


def between(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> Callable[[Any], str | None]:
    def check(v: float) -> str | None:
        bad = (v <= lo if lo_open else v < lo) or (v >= hi if hi_open else v > hi)
        if bad:
            return f"must lie in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        return None

    return check


def positive(v: float) -> str | None:
    return None if v > 0 else "must be > 0"


def non_negative(v: float) -> str | None:
    return None if v >= 0 else "must be >= 0"
