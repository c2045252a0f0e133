"""One registration pattern for everything chosen by name (models, datasets, defenses, attacks, presets).

A :class:`Registry` maps names to entries (a class, a builder function, a metadata record)::

    MODELS: Registry[Builder] = Registry("model")

    @MODELS.register("lenet")
    def lenet(num_classes, input_shape, **options): ...

    MODELS.get("lenet")   # unknown names raise ConfigError naming the closest registered name
    MODELS.names()        # in registration order

It is the one hook for later plugins: a user's module registers its own entry the same way.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from fedleak.errors import ConfigError

T = TypeVar("T")


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

    def add(self, name: str, entry: T) -> None:
        """Register ``entry`` under ``name`` (a second registration of one name is a programming error)."""
        if name in self._entries and self._entries[name] is not entry:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._entries[name] = entry

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise self.error(self.unknown(name))
        return self._entries[name]

    __getitem__ = get

    def unknown(self, name: str) -> str:
        """The one-line message for an unknown ``name``: the closest registered name and the full list."""
        close = difflib.get_close_matches(str(name), self.names(), n=1)
        hint = f" (closest: '{close[0]}')" if close else ""
        return f"unknown {self.kind} '{name}'; choose from: {', '.join(sorted(self.names()))}{hint}"

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())

    def values(self) -> list[T]:
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


__all__ = ["Registry"]
