"""Per-tenant token buckets (spec §3.2 backpressure at the Gateway).

Each tenant has a bucket of ``burst`` tokens refilled at ``rate`` per second;
a request takes one token or is refused with RESOURCE_EXHAUSTED and a retry
hint. The clock is injected (trio's by default) so tests run in virtual time.
Buckets idle long enough to be full again are forgotten, which bounds memory
by the number of recently active tenants.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import trio

from tether.errors import ResourceExhausted


@dataclass
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    def __init__(
        self,
        *,
        rate: float,
        burst: int,
        clock: Callable[[], float] = trio.current_time,
        max_tenants: int = 100_000,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.max_tenants = max_tenants
        self._buckets: dict[str, _Bucket] = {}

    def take(self, tenant_id: str, rate: float | None = None) -> None:
        """Take one token for ``tenant_id`` or raise ResourceExhausted."""
        now = self.clock()
        rate = rate or self.rate
        bucket = self._buckets.get(tenant_id)
        if bucket is None:
            if len(self._buckets) >= self.max_tenants:
                self._forget_full(now)
            bucket = self._buckets[tenant_id] = _Bucket(float(self.burst), now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.tokens < 1.0:
            wait = (1.0 - bucket.tokens) / rate
            raise ResourceExhausted(
                f"rate limit for tenant {tenant_id!r}: {rate:g} requests/s, burst {self.burst}; "
                f"retry in {wait:.2f} s",
                details={"tenant": tenant_id},
                retry_after_s=wait,
            )
        bucket.tokens -= 1.0

    def _forget_full(self, now: float) -> None:
        full_after = self.burst / self.rate
        for tenant, bucket in list(self._buckets.items()):
            if now - bucket.updated >= full_after:
                del self._buckets[tenant]
