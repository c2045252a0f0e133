"""One registration pattern for everything chosen by name (models, datasets, defenses, attacks, presets).

A :class:`Registry` maps names to entries (a class, a builder function, a metadata record)::

    MODELS: Registry[Builder] = Registry("model")

    @MODELS.register("lenet")
    def lenet(num_classes, input_shape, **options): ...

    MODELS.get("lenet")   # unknown names raise ConfigError naming the closest registered name
    MODELS.names()        # in registration order

It is the one hook for later plugins: a user's module registers its own entry the same way.

:meth:`Registry.resolve` is the one lookup that also accepts an **import path** ``package.module:attribute``
(models, datasets, defenses): a registered name wins; otherwise the module is imported from ``sys.path`` plus
the current working directory, and the attribute (dotted: ``mod:Class.factory`` works) must be callable. Every
failure (no such module, the module raising on import, no such attribute, not callable) is a one-line error of
the registry's type. Names starting with ``@`` are objects handed to :mod:`fedleak.api` in one Python process;
they resolve only in that process (see :data:`IN_PROCESS`).
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from fedleak.errors import ConfigError

T = TypeVar("T")

#: Prefix of names that stand for Python objects registered in this process (by fedleak.api), not importable.
IN_PROCESS = "@"
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def is_import_path(name: str) -> bool:
    """``package.module:attribute`` (both halves dotted Python identifiers)."""
    module, sep, attr = str(name).partition(":")
    return bool(sep) and _DOTTED.fullmatch(module) is not None and _DOTTED.fullmatch(attr) is not None


def article(word: str) -> str:
    """``word`` with 'a' or 'an' in front (``an int``, ``a tuple``)."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _import_module(module: str, what: str, error: type[Exception]) -> Any:
    """Import ``module`` with the working directory on ``sys.path`` (appended: installed packages win)."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is not None and (module == e.name or module.startswith(e.name + ".")):
            raise error(
                f"{what}: no module named '{e.name}' on sys.path or in the working directory {cwd}; run from the "
                "folder that holds it, add that folder to PYTHONPATH, or install the package"
            ) from None
        raise error(f"{what}: importing module '{module}' failed: {_first_line(e)}") from None
    except Exception as e:  # the user's module raised while being imported (SyntaxError included)
        raise error(f"{what}: importing module '{module}' failed: {_first_line(e)}") from None


def import_object(path: str, what: str, error: type[Exception] = ConfigError) -> Callable[..., Any]:
    """The callable named by the import path ``package.module:attribute``; ``what`` starts every error message."""
    if not is_import_path(path):
        raise error(f"{what}: '{path}' is not an import path; write package.module:attribute, e.g. my_nets:make_net")
    module, _, attr = path.partition(":")
    obj = _import_module(module, what, error)
    for i, part in enumerate(attr.split(".")):
        if not hasattr(obj, part):
            have = sorted(n for n in vars(obj) if not n.startswith("_")) if hasattr(obj, "__dict__") else []
            close = difflib.get_close_matches(part, have, n=1)
            hint = f" (closest: '{close[0]}')" if close else ""
            owner = module if i == 0 else f"{module}:{'.'.join(attr.split('.')[:i])}"
            raise error(f"{what}: '{owner}' has no attribute '{part}'{hint}; check the name after the ':'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise error(f"{what}: '{path}' is {article(type(obj).__name__)}, not a callable; name a function or class")
    return obj


class Registry(Generic[T]):
    """Name → entry, with a decorator to register and a lookup whose error suggests the closest name."""

    def __init__(self, kind: str, error: type[Exception] = ConfigError) -> None:
        self.kind = kind
        self.error = error  # raised for an unknown name (a user-error type, see fedleak.errors)
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REG.register("name")`` above a class or function adds it under ``name``."""

        def add(entry: T) -> T:
            self.add(name, entry)
            return entry

        return add

    def add(self, name: str, entry: T, replace: bool = False) -> None:
        """Register ``entry`` under ``name`` (a second registration of one name is a programming error, unless
        ``replace``: fedleak.api re-registers an in-process object, e.g. a notebook cell run again)."""
        if name in self._entries and self._entries[name] is not entry and not replace:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._entries[name] = entry

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise self.error(self.unknown(name))
        return self._entries[name]

    __getitem__ = get

    def resolve(self, name: str, wrap: Callable[[str, Callable[..., Any]], T] | None = None) -> T:
        """A registered name, else an import path ``package.module:attribute`` (imported; ``wrap(path, obj)``
        turns the callable into an entry). Anything else is the registry's one-line unknown-name error."""
        if name in self._entries:
            return self._entries[name]
        what = f"{self.kind} '{name}'"
        if str(name).startswith(IN_PROCESS):
            raise self.error(
                f"{what} was a Python object given to fedleak.api in another process and cannot be found here; pass "
                "the same object to fedleak.api again, or make it importable and name it as package.module:attribute"
            )
        if ":" not in str(name):
            raise self.error(self.unknown(name) + "; or give an import path package.module:attribute")
        obj = import_object(str(name), what, self.error)
        return wrap(name, obj) if wrap is not None else obj  # type: ignore[return-value]

    def unknown(self, name: str) -> str:
        """The one-line message for an unknown ``name``: the closest registered name and the full list."""
        close = difflib.get_close_matches(str(name), self.names(), n=1)
        hint = f" (closest: '{close[0]}')" if close else ""
        return f"unknown {self.kind} '{name}'; choose from: {', '.join(sorted(self.names()))}{hint}"

    def names(self) -> list[str]:
        """The registered names, in registration order (not the ``@`` objects of one process, see resolve)."""
        return [n for n in self._entries if not n.startswith(IN_PROCESS)]

    def items(self) -> list[tuple[str, T]]:
        return [(n, self._entries[n]) for n in self.names()]

    def values(self) -> list[T]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


__all__ = ["IN_PROCESS", "Registry", "article", "import_object", "is_import_path"]
