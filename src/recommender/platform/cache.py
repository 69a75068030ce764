"""Bounded in-process caches for results that are dear to compute and cheap to check.

`RecentCache` entries carry whatever the caller needs to decide they still hold (a counter Redis
bumps on every change, a time); the cache only bounds memory, forgetting the least recently used
first. `PeriodicCache` reads each key's value again once a fixed period has passed.
"""

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class RecentCache(Generic[K, V]):
    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def discard(self, key: K) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class PeriodicCache(Generic[K, V]):
    """Each key's value, read at most once per `seconds` per process: for values a few seconds
    of staleness cannot change (counts over days). At most `max_entries` keys are kept; the
    least recently used is dropped first."""

    def __init__(
        self,
        read: Callable[[K], Awaitable[V]],
        seconds: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._seconds = seconds
        self._clock = clock
        self._cached: RecentCache[K, tuple[float, V]] = RecentCache(max_entries)

    async def get(self, key: K) -> V:
        now = self._clock()
        cached = self._cached.get(key)
        if cached is None or now >= cached[0]:
            cached = (now + self._seconds, await self._read(key))
            self._cached.put(key, cached)
        return cached[1]
