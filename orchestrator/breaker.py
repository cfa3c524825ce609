"""Circuit breakers per (model, region) (spec §3.2, ADR-003).

A breaker counts the outcomes of dispatches to the workers of one model in one
region. ``failure_threshold`` consecutive failures open it: for ``open_s`` its
workers are not candidates, so requests go to other regions or fail fast with
UNAVAILABLE instead of piling onto a broken pool. After that it is half-open:
one request goes through as a probe; success closes it, failure opens it again.
Only failures that say something about the workers count (UNAVAILABLE,
DEADLINE_EXCEEDED, INTERNAL, UNKNOWN); a caller's bad input or quota does not.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

import trio

from tether.rpc import StatusCode

#: Outcomes that count against the workers of a (model, region).
WORKER_FAILURES = frozenset(
    {
        StatusCode.UNAVAILABLE,
        StatusCode.DEADLINE_EXCEEDED,
        StatusCode.INTERNAL,
        StatusCode.UNKNOWN,
    }
)


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass
class _Breaker:
    failures: int = 0
    opened_at: float | None = None
    probing: bool = False


class CircuitBreakers:
    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        open_s: float = 30.0,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.open_s = open_s
        self.clock = clock
        self._breakers: dict[tuple[str, str], _Breaker] = {}

    def state(self, model: str, region: str) -> BreakerState:
        b = self._breakers.get((model, region))
        if b is None or b.opened_at is None:
            return BreakerState.CLOSED
        if self.clock() - b.opened_at < self.open_s:
            return BreakerState.OPEN
        return BreakerState.HALF_OPEN

    def allow(self, model: str, region: str) -> bool:
        """May a request go to this (model, region) now? A half-open breaker lets one
        probe through at a time."""
        state = self.state(model, region)
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN:
            return False
        b = self._breakers[(model, region)]
        if b.probing:
            return False
        b.probing = True
        return True

    def record(self, model: str, region: str, code: StatusCode) -> None:
        """Count one dispatch outcome (OK, or the status it failed with)."""
        b = self._breakers.setdefault((model, region), _Breaker())
        b.probing = False
        if code == StatusCode.OK:
            b.failures, b.opened_at = 0, None
        elif code in WORKER_FAILURES:
            b.failures += 1
            if b.opened_at is not None or b.failures >= self.failure_threshold:
                b.opened_at = self.clock()  # (re)open: a failed probe restarts the wait

    def release(self, model: str, region: str) -> None:
        """A dispatch ended without an outcome (the client left): free the probe slot."""
        b = self._breakers.get((model, region))
        if b is not None:
            b.probing = False

    def snapshot(self) -> dict[tuple[str, str], BreakerState]:
        return {key: self.state(*key) for key in self._breakers}
