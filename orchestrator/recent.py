"""The orchestrator's recent outcomes: how many requests ended, and how many failed for a
worker's reason (``breaker.WORKER_FAILURES``, not a caller's error), in the last
``window_s`` seconds, for ``tether status``. Counts per second, so memory is bounded by
the window whatever the load. No I/O; the clock is injected."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from orchestrator.breaker import WORKER_FAILURES
from tether.rpc import StatusCode

WINDOW_S = 300


class RecentOutcomes:
    def __init__(self, clock: Callable[[], float], *, window_s: int = WINDOW_S) -> None:
        self.clock = clock
        self.window_s = window_s
        #: [second, requests, failures], oldest first.
        self._seconds: deque[list[int]] = deque()

    def record(self, code: StatusCode) -> None:
        now = int(self.clock())
        self._expire(now)
        if not self._seconds or self._seconds[-1][0] != now:
            self._seconds.append([now, 0, 0])
        self._seconds[-1][1] += 1
        self._seconds[-1][2] += code in WORKER_FAILURES

    def totals(self) -> tuple[int, int]:
        """(requests, failures) in the window."""
        self._expire(int(self.clock()))
        return (sum(s[1] for s in self._seconds), sum(s[2] for s in self._seconds))

    def _expire(self, now: int) -> None:
        while self._seconds and self._seconds[0][0] <= now - self.window_s:
            self._seconds.popleft()
