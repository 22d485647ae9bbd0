"""One small registry for named plug-ins: converters (per model family) and quantizers (per method).

A name may be registered once; asking for an unknown name lists the known ones. Other packages add their
own entries through Python entry points (groups ``mtk.converters`` and ``mtk.quantizers``); those are
loaded explicitly, the first time a registry is queried, and a broken plug-in fails loudly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from mtk.errors import UnsupportedError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects of one kind. ``kind`` names them in error messages ("architecture")."""

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._items: dict[str, T] = {}
        self._plugins_loaded = entry_point_group is None

    def add(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = item
        return item

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""

        def decorate(item: T) -> T:
            return self.add(name, item)

        return decorate

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in entry_points(group=self.entry_point_group):
            # The entry point's object is registered under the entry point's name; importing its module may
            # already have registered the same object through the decorator, which is not a duplicate.
            item = ep.load()
            if self._items.get(ep.name) is not item:
                self.add(ep.name, item)

    def get(self, name: str) -> T:
        self._load_plugins()
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise UnsupportedError(f"unknown {self.kind} {name!r}; supported: {known}") from None

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        self._load_plugins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
