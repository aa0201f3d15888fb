"""A tiny name -> factory registry (timm-style): duplicates raise, unknown names list the choices,
and each entry carries a metadata mapping readable without calling the factory."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from captionkit.errors import UnknownNameError

T = TypeVar("T", bound=Callable)


class Registry(Generic[T]):
    """Maps names to factories and their metadata. ``register`` is a decorator; ``get`` and
    ``info`` fail loudly with :class:`UnknownNameError`."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._info: dict[str, Mapping[str, Any]] = {}

    def register(self, name: str, **info: Any) -> Callable[[T], T]:
        """Decorator registering a factory as ``name``, with ``info`` as its (read-only)
        metadata; a name already taken raises ``ValueError``."""

        def deco(fn: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = fn
            self._info[name] = MappingProxyType(dict(info))
            return fn

        return deco

    def get(self, name: str) -> T:
        """The factory registered as ``name``."""
        self._require(name)
        return self._items[name]

    def info(self, name: str) -> Mapping[str, Any]:
        """The metadata registered with ``name`` (empty when none was given)."""
        self._require(name)
        return self._info[name]

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def _require(self, name: str) -> None:
        if name not in self._items:
            raise UnknownNameError(self.kind, name, self.names())

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)
