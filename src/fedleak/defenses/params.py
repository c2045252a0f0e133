"""Each defense's ``params``: one pydantic model per defense (``class SparseParams(DefenseParams)``).

Field types come from :func:`param` so YAML values are checked the same way everywhere: ``float`` accepts ints
and numeric strings but not booleans and only finite values; ``int`` refuses ``4.0`` and ``1e20``; ``bool`` is
strict; a ``choices`` field names its choices. Unknown names and bad values become one line:
``defense 'sparse': parameter 'p' must lie in [0, 1] (got 2.0)``.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Callable, Sequence

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from fedleak.errors import ConfigError

Check = Callable[[Any], "str | None"]
#: the kinds of parameter (the first argument of :func:`param`)
FLOAT, INT, BOOL, STR, FLOATS, STRS = "float", "int", "bool", "str", "floats", "strs"
_TYPES: dict[str, Any] = {FLOAT: float, INT: int, BOOL: bool, STR: str, FLOATS: list[float], STRS: list[str]}


def _coerce(value: Any, kind: str) -> Any:
    if kind == "float":
        if isinstance(value, bool):
            raise TypeError
        return float(value)
    if kind == "int":
        if isinstance(value, (bool, float)):  # 1e20 or 4.0 is not an int; nor is inf
            raise TypeError
        return int(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise TypeError
        return value
    if kind == "str":
        return str(value)
    if kind == "strs":
        return [str(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    vals = value if isinstance(value, (list, tuple)) else [value]
    return [float(v) for v in vals]


def _validator(kind: str, check: Check | None, choices: Sequence[str] | None, optional: bool) -> Callable[[Any], Any]:
    def validate(value: Any) -> Any:
        if value is None:
            if optional:
                return None
            raise ValueError("must not be null")
        try:
            out = _coerce(value, kind)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"must be of type {kind}, got {value!r}") from None
        if kind in ("float", "floats") and not all(math.isfinite(v) for v in (out if kind == "floats" else [out])):
            raise ValueError(f"must be a finite number, got {value!r}")
        if choices is not None and out not in choices:
            raise ValueError(f"must be one of {', '.join(map(str, choices))}, got {value!r}")
        msg = check(out) if check is not None else None
        if msg:
            raise ValueError(f"{msg} (got {value!r})")
        return out

    return validate


def param(
    kind: str, *, check: Check | None = None, choices: Sequence[str] | None = None, optional: bool = False
) -> Any:
    """The annotation of one parameter: ``x: param(FLOAT, check=positive) = Field(1.0, description=...)``."""
    base = _TYPES[kind] | None if optional else _TYPES[kind]
    return Annotated[base, BeforeValidator(_validator(kind, check, choices, optional))]


class DefenseParams(BaseModel):
    """Base of every defense's params model: unknown names are refused."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


def parse_params(defense: str, given: dict[str, Any] | None, model: type[DefenseParams]) -> dict[str, Any]:
    """Defaults merged with ``given``, checked by ``model``; the first problem raises ConfigError (one line)."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(model.model_fields))
    if unknown:
        raise ConfigError(
            f"defense '{defense}': unknown parameter(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(model.model_fields))}"
        )
    try:
        return model.model_validate(given).model_dump()
    except ValidationError as err:
        e = err.errors()[0]
        why = str(e.get("ctx", {}).get("error", e["msg"]))
        raise ConfigError(f"defense '{defense}': parameter '{e['loc'][0]}' {why}") from None


def describe(model: type[DefenseParams]) -> dict[str, str]:
    """``{name: "description (default ...)"}`` of a params model (for docs and --help)."""
    return {k: f"{f.description} (default {f.default!r})" for k, f in model.model_fields.items()}


def between(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> Check:
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


__all__ = [
    "BOOL", "FLOAT", "FLOATS", "INT", "STR", "STRS", "DefenseParams", "Field", "between", "describe", "non_negative", "param",
    "parse_params", "positive",
]
