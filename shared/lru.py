"""A bounded in-process map, least recently used out first: the runtime's per-config and per-upload caches."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Lru(Generic[K, V]):
    """At most ``max_entries`` values; ``get`` and ``put`` make an entry the most recent. ``on_evict`` is called
    with each value dropped to make room (not with values replaced, or removed by ``pop_where``)."""

    __slots__ = ("_items", "max_entries", "on_evict")

    def __init__(self, max_entries: int, on_evict: Callable[[V], None] | None = None) -> None:
        self.max_entries = max_entries
        self.on_evict = on_evict
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            dropped = self._items.popitem(last=False)[1]
            if self.on_evict is not None:
                self.on_evict(dropped)

    def pop(self, key: K) -> V | None:
        return self._items.pop(key, None)

    def pop_where(self, matches: Callable[[K], bool]) -> list[V]:
        """Remove the entries whose key ``matches``; their values."""
        return [self._items.pop(k) for k in [k for k in self._items if matches(k)]]

    def __len__(self) -> int:
        return len(self._items)
