"""Circuit breakers per (model, region): open after consecutive worker failures, one
probe when half-open, closed again by a success; caller errors do not count."""

from __future__ import annotations

from orchestrator.breaker import BreakerState, CircuitBreakers
from tether.rpc import StatusCode


def test_breaker_opens_probes_once_and_closes() -> None:
    now = [0.0]
    b = CircuitBreakers(failure_threshold=2, open_s=10, clock=lambda: now[0])
    b.record("m", "eu", StatusCode.INVALID_ARGUMENT)  # the caller's fault: not counted
    b.record("m", "eu", StatusCode.UNAVAILABLE)
    assert b.state("m", "eu") is BreakerState.CLOSED
    b.record("m", "eu", StatusCode.DEADLINE_EXCEEDED)
    assert b.state("m", "eu") is BreakerState.OPEN
    assert not b.allow("m", "eu")
    assert b.allow("m", "us")  # other regions are separate
    now[0] = 10.0
    assert b.state("m", "eu") is BreakerState.HALF_OPEN
    assert b.allow("m", "eu")
    assert not b.allow("m", "eu")  # one probe at a time
    b.record("m", "eu", StatusCode.INTERNAL)  # the probe failed: open again, from now
    assert b.state("m", "eu") is BreakerState.OPEN
    now[0] = 20.0
    assert b.allow("m", "eu")
    b.release("m", "eu")  # the probe's client left: no verdict, the slot is free again
    assert b.allow("m", "eu")
    b.record("m", "eu", StatusCode.OK)
    assert b.state("m", "eu") is BreakerState.CLOSED
    assert b.snapshot() == {("m", "eu"): BreakerState.CLOSED}
