"""A bounded, expiring map for storage-node state: announcements, router entries, values.

hyperdht keeps this state in generational caches (``xache``, ``record-cache``) where an entry
lives between 2/3 and 4/3 of ``maxAge`` after its last write. Here an entry lives exactly
``max_age`` seconds after its last write, which is simpler to test and never shorter on
average. ``max_size`` bounds memory: writing past it evicts the least recently written entry.

Time is always passed in (``now``, seconds on any monotonic origin): the cache never reads a
clock. Expired entries are dropped lazily on reads and in order on writes, so every operation
costs O(1) amortised.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

__all__ = ["DEFAULT_MAX_AGE", "DEFAULT_MAX_SIZE", "ExpiringCache"]

#: hyperdht's ``defaultMaxSize``: entries per cache.
DEFAULT_MAX_SIZE = 65536
#: hyperdht's ``defaultMaxAge`` (20 min) for records, router entries and bumps.
DEFAULT_MAX_AGE = 20 * 60.0

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ExpiringCache(Generic[K, V]):
    """At most ``max_size`` entries, each alive ``max_age`` seconds after its last ``set``."""

    def __init__(self, max_size: int = DEFAULT_MAX_SIZE,
                 max_age: float = DEFAULT_MAX_AGE) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        if max_age <= 0:
            raise ValueError("max_age must be positive")
        self.max_size = max_size
        self.max_age = max_age
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def set(self, key: K, value: V, now: float) -> list[K]:
        """Write ``key`` and return the keys that were evicted or expired to make room."""
        self._entries.pop(key, None)
        self._entries[key] = (now, value)
        dropped = self.expire(now)
        while len(self._entries) > self.max_size:
            old, _ = self._entries.popitem(last=False)
            dropped.append(old)
        return dropped

    def get(self, key: K, now: float) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        stamp, value = entry
        if now - stamp >= self.max_age:
            del self._entries[key]
            return None
        return value

    def delete(self, key: K) -> bool:
        return self._entries.pop(key, None) is not None

    def expire(self, now: float) -> list[K]:
        """Drop every entry older than ``max_age``; returns their keys (oldest first)."""
        dropped: list[K] = []
        while self._entries:
            key, (stamp, _) = next(iter(self._entries.items()))
            if now - stamp < self.max_age:
                break
            del self._entries[key]
            dropped.append(key)
        return dropped

    def keys(self) -> Iterator[K]:
        return iter(list(self._entries))
