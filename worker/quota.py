"""QuotaGuard: the worker's local admission control.

A worker runs at most ``slots`` requests at once and lets at most
``queue_limit`` more wait for a slot; past that it sheds new work with
RESOURCE_EXHAUSTED instead of queueing without bound. One tenant may hold at
most ``per_tenant`` of the running-or-waiting requests, so a noisy tenant
cannot fill the queue for everyone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from tether.errors import ResourceExhausted


@dataclass(frozen=True)
class QuotaStats:
    slots: int
    in_use: int
    queue_depth: int
    queue_limit: int


class QuotaGuard:
    def __init__(self, *, slots: int, queue_limit: int, per_tenant: int | None = None) -> None:
        if slots < 1:
            raise ValueError("a worker needs at least one slot")
        self.slots = slots
        self.queue_limit = queue_limit
        self.per_tenant = per_tenant if per_tenant is not None else slots + queue_limit
        self._slots = trio.Semaphore(slots)
        self._waiting = 0
        self._by_tenant: dict[str, int] = {}

    def stats(self) -> QuotaStats:
        return QuotaStats(
            slots=self.slots,
            in_use=self.slots - self._slots.value,
            queue_depth=self._waiting,
            queue_limit=self.queue_limit,
        )

    @asynccontextmanager
    async def admit(self, tenant_id: str) -> AsyncIterator[None]:
        """Hold a slot for the block, waiting in the bounded queue if needed."""
        held = self._by_tenant.get(tenant_id, 0)
        if held >= self.per_tenant:
            raise ResourceExhausted(
                f"tenant {tenant_id!r} already has {held} requests on this worker",
                details={"tenant": tenant_id, "limit": str(self.per_tenant)},
            )
        if self._slots.value == 0 and self._waiting >= self.queue_limit:
            raise ResourceExhausted(
                "worker queue is full; retry on another worker or later",
                details={"queue_limit": str(self.queue_limit)},
            )
        await trio.lowlevel.checkpoint_if_cancelled()
        self._by_tenant[tenant_id] = held + 1
        try:
            # A free slot is taken at once, without yielding: requests arriving in the same
            # tick then see it taken (Semaphore.acquire yields after taking it, and a
            # request counted as waiting meanwhile made the next ones find the queue full).
            try:
                self._slots.acquire_nowait()
            except trio.WouldBlock:
                self._waiting += 1
                try:
                    await self._slots.acquire()
                finally:
                    self._waiting -= 1
            try:
                yield
            finally:
                self._slots.release()
        finally:
            left = self._by_tenant[tenant_id] - 1
            if left:
                self._by_tenant[tenant_id] = left
            else:
                del self._by_tenant[tenant_id]
