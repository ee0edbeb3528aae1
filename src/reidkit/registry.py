"""One name -> builder registry used by models, backbones, losses and miners."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from .errors import ReIDError

T = TypeVar("T")


class Registry(Generic[T]):
    """`@registry.register("name")` records a class or builder; `registry.get(name)` returns it or raises
    `error(...)` listing the available names."""

    def __init__(self, kind: str, error: type[ReIDError]):
        self.kind, self.error = kind, error
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(entry: T) -> T:
            if name in self._entries and self._entries[name] is not entry:
                raise self.error(f"{self.kind} name {name!r} registered twice")
            self._entries[name] = entry
            return entry

        return decorator

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise self.error(f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}")
        return self._entries[name]
