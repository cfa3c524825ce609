"""Circuit breakers per (model, region) (spec §3.2, ADR-003).

A breaker counts the outcomes of dispatches to the workers of one model in one
region. ``failure_threshold`` consecutive failures open it: for ``open_s`` its
workers are not candidates, so requests go to other regions or fail fast with
UNAVAILABLE instead of piling onto a broken pool. After that it is half-open:
one request goes through as a probe; success closes it, failure opens it again.
Only failures that say something about the workers count (UNAVAILABLE,
DEADLINE_EXCEEDED, INTERNAL, UNKNOWN); a caller's bad input or quota does not.

A pool can also be too slow to use. With ``slow_first_chunk_s`` set, the time to
the first chunk of each successful dispatch is kept (the last ``latency_window``);
once ``min_samples`` are in and their p95 is over the budget, the breaker opens
as it does for failures, and a half-open probe must come in under the budget to
close it.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

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
    #: Why it opened last, in words (for the error a refused request gets).
    reason: str = ""
    first_chunk_s: deque[float] = field(default_factory=deque)


class CircuitBreakers:
    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        open_s: float = 30.0,
        slow_first_chunk_s: float | None = None,
        latency_window: int = 50,
        min_samples: int = 10,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        if latency_window < min_samples or min_samples < 1:
            raise ValueError("need 1 <= min_samples <= latency_window")
        self.failure_threshold = failure_threshold
        self.open_s = open_s
        self.slow_first_chunk_s = slow_first_chunk_s
        self.latency_window = latency_window
        self.min_samples = min_samples
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

    def record(
        self, model: str, region: str, code: StatusCode, *, first_chunk_s: float | None = None
    ) -> None:
        """Count one dispatch outcome (OK, or the status it failed with) and, for a
        success, how long its first chunk took."""
        b = self._breakers.setdefault((model, region), _Breaker())
        probe, b.probing = b.opened_at is not None, False
        if code == StatusCode.OK:
            b.failures = 0
            slow = self._slow(b, first_chunk_s, probe)
            if slow:
                self._open(b, slow)
            else:
                b.opened_at = None
        elif code in WORKER_FAILURES:
            b.failures += 1
            if probe or b.failures >= self.failure_threshold:
                self._open(b, f"its workers failed {b.failures} times in a row")

    def _slow(self, b: _Breaker, first_chunk_s: float | None, probe: bool) -> str:
        """Why this pool is too slow now, or '' (always '' without a budget)."""
        budget = self.slow_first_chunk_s
        if budget is None or first_chunk_s is None:
            return ""
        if probe:  # a probe closes a breaker only by coming in under the budget
            b.first_chunk_s.clear()
            if first_chunk_s > budget:
                return f"its probe's first chunk took {first_chunk_s:.3g} s (budget {budget:g} s)"
            return ""
        b.first_chunk_s.append(first_chunk_s)
        while len(b.first_chunk_s) > self.latency_window:
            b.first_chunk_s.popleft()
        if len(b.first_chunk_s) < self.min_samples:
            return ""
        ordered = sorted(b.first_chunk_s)
        p95 = ordered[math.ceil(0.95 * len(ordered)) - 1]  # nearest rank
        if p95 <= budget:
            return ""
        b.first_chunk_s.clear()  # the next verdict comes from fresh samples
        return f"its p95 time to first chunk is {p95:.3g} s, over the {budget:g} s budget"

    def _open(self, b: _Breaker, reason: str) -> None:
        b.opened_at = self.clock()  # (re)open: a failed probe restarts the wait
        b.reason = reason

    def reason(self, model: str, region: str) -> str:
        """Why the breaker of (model, region) last opened ('' if it never did)."""
        b = self._breakers.get((model, region))
        return b.reason if b is not None else ""

    def release(self, model: str, region: str) -> None:
        """A dispatch ended without an outcome (the client left): free the probe slot."""
        b = self._breakers.get((model, region))
        if b is not None:
            b.probing = False

    def tripped(self) -> dict[tuple[str, str], bool]:
        """Each pool: whether its breaker is open or half-open (not closed). Reads no
        clock, so a metrics thread may call it."""
        return {key: b.opened_at is not None for key, b in list(self._breakers.items())}

    def snapshot(self) -> dict[tuple[str, str], BreakerState]:
        return {key: self.state(*key) for key in self._breakers}
