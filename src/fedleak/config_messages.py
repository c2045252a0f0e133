"""One-line messages for configuration errors: key locations, closest-key suggestions, ``--set`` attribution.

Shared by experiment configs (:mod:`fedleak.config`) and sweep files. A problem is ``(location, message)``
where the location is the key path, e.g. ``("fl", "rounds")``.
"""

from __future__ import annotations

import difflib
import math
from typing import Any

from pydantic import BaseModel, ValidationError

Loc = tuple[Any, ...]


class KeyedProblems(ValueError):
    """Problems that span several keys, each with the key (location) it is reported under."""

    def __init__(self, problems: list[tuple[Loc, str]]) -> None:
        super().__init__("; ".join(msg for _, msg in problems))
        self.problems = problems


def _section_fields(model: type[BaseModel] | None, loc: Loc) -> list[str]:
    """The field names of the (nested) section that holds ``loc[-1]``; [] when it is not a pydantic section."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part)) if model is not None else None
        ann = field.annotation if field is not None else None
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return list(model.model_fields) if model is not None else []


def suggest_key(model: type[BaseModel] | None, loc: Loc) -> str:
    """`` (did you mean 'fl.rounds'?)`` for the closest valid key of the same section, or ''."""
    close = difflib.get_close_matches(str(loc[-1]), _section_fields(model, loc), n=1, cutoff=0.6)
    return f" (did you mean '{'.'.join(map(str, (*loc[:-1], close[0])))}'?)" if close else ""


UNKNOWN_KEY = "unknown key"


def _describe(e: dict[str, Any]) -> str:
    if e["type"] in ("int_type", "int_parsing", "int_from_float", "int_parsing_size"):
        return f"must be a whole number written as one (e.g. 20, not 20.0 or 1e20), got {e.get('input')!r}"
    if e["type"] == "finite_number":
        return f"must be a finite number, got {e.get('input')!r}"
    return e["msg"].replace("Input should be", "must be").removeprefix("Value error, ")


def validation_problems(err: ValidationError, model: type[BaseModel] | None = None) -> list[tuple[Loc, str]]:
    """(location, message) for every error of a pydantic ValidationError, with closest-key suggestions."""
    out: list[tuple[Loc, str]] = []
    for e in err.errors():
        loc = tuple(e["loc"])
        inner = (e.get("ctx") or {}).get("error")
        if isinstance(inner, KeyedProblems):
            out += [(loc + tuple(where), msg) for where, msg in inner.problems]
        elif e["type"] == "extra_forbidden":
            out.append((loc, UNKNOWN_KEY + suggest_key(model, loc)))
        else:
            out.append((loc, _describe(e)))
    return out


def _fmt(loc: Loc, msg: str) -> str:
    """``'fl.lr': must be ...``, or ``unknown key 'fl.rouds' (did you mean ...)``."""
    key = ".".join(str(x) for x in loc)
    if not key:
        return msg
    if msg.startswith(UNKNOWN_KEY):
        return f"{UNKNOWN_KEY} '{key}'{msg[len(UNKNOWN_KEY):]}"
    return f"'{key}': {msg}"


def format_problems(problems: list[tuple[Loc, str]], source: str, what: str = "config",
                    overrides: dict[Loc, str] | None = None) -> str:
    """One line: problems under an override are blamed on that ``--set``, the rest on ``source``."""
    by_override: dict[str, list[str]] = {}
    rest: list[str] = []
    for loc, msg in problems:
        hit = [ov for path, ov in (overrides or {}).items() if loc[: len(path)] == path or path[: len(loc)] == loc]
        (by_override.setdefault(hit[-1], []) if hit and loc else rest).append(_fmt(loc, msg))
    parts = [f"invalid {what} {source}: " + "; ".join(rest)] if rest else []
    parts += [f"invalid --set '{ov}': " + "; ".join(msgs) for ov, msgs in by_override.items()]
    return "; ".join(parts)


def format_validation_error(
    err: ValidationError, source: str, what: str = "config", model: type[BaseModel] | None = None
) -> str:
    """One line naming every bad key of a pydantic error (shared by configs and sweep files)."""
    return format_problems(validation_problems(err, model), source, what)


def non_finite(value: Any, loc: Loc = ()) -> list[tuple[Loc, str]]:
    """Every ``inf`` / ``nan`` anywhere in a nested YAML value (shared nodes are visited once)."""
    out: list[tuple[Loc, str]] = []
    seen: set[int] = set()
    stack: list[tuple[Loc, Any]] = [(loc, value)]
    while stack:
        where, v = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            out.append((where, f"must be a finite number, got {v}"))
        elif isinstance(v, (dict, list)) and id(v) not in seen:
            seen.add(id(v))
            items = v.items() if isinstance(v, dict) else enumerate(v)
            stack += [((*where, k), x) for k, x in items]
    return sorted(out, key=lambda p: tuple(map(str, p[0])))
