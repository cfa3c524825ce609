"""A small bounded cache whose entries expire, for lookups that a hot path repeats
(a model's resolution, a tenant token) and that may be a little stale.

A named cache counts its lookups (``tether.cache.lookups`` by ``cache`` and ``result``:
``hit``, ``miss``, or ``stale``: an entry was there but past its time, so the value had
to be fetched again): the stale-cache rate SLI is ``stale`` over all lookups."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import trio

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    def __init__(
        self,
        *,
        ttl_s: float,
        max_entries: int,
        clock: Callable[[], float] = trio.current_time,
        name: str | None = None,
    ) -> None:
        self.ttl_s = ttl_s
        #: Counts lookups under this name (None: not counted).
        self.name = name
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> V | None:
        hit = self._entries.get(key)
        if hit is None:
            self._count("miss")
            return None
        expires, value = hit
        if self.clock() >= expires:
            del self._entries[key]
            self._count("stale")
            return None
        self._entries.move_to_end(key)
        self._count("hit")
        return value

    def _count(self, result: str) -> None:
        if self.name is not None:
            from tether import telemetry

            telemetry.cache_lookups().add(1, {"cache": self.name, "result": result})

    def put(self, key: K, value: V) -> None:
        self._entries[key] = (self.clock() + self.ttl_s, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
