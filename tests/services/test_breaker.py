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


def test_a_slow_pool_opens_its_breaker_and_a_fast_probe_closes_it() -> None:
    now = [0.0]
    b = CircuitBreakers(
        open_s=10, slow_first_chunk_s=0.5, latency_window=20, min_samples=10,
        clock=lambda: now[0],
    )
    for _ in range(19):
        b.record("m", "eu", StatusCode.OK, first_chunk_s=0.1)
    b.record("m", "eu", StatusCode.OK, first_chunk_s=2.0)  # 1 in 20: p95 still fine
    assert b.state("m", "eu") is BreakerState.CLOSED
    b.record("m", "eu", StatusCode.OK, first_chunk_s=2.0)
    # 2 of the last 20 over budget: p95 is over it, and the breaker says so.
    assert b.state("m", "eu") is BreakerState.OPEN
    assert b.reason("m", "eu") == "its p95 time to first chunk is 2 s, over the 0.5 s budget"
    b.record("m", "us", StatusCode.OK, first_chunk_s=2.0)  # too few samples to judge
    assert b.state("m", "us") is BreakerState.CLOSED
    now[0] = 10.0
    assert b.allow("m", "eu")
    b.record("m", "eu", StatusCode.OK, first_chunk_s=0.9)  # the probe is slow too
    assert b.state("m", "eu") is BreakerState.OPEN
    assert "probe's first chunk took 0.9 s" in b.reason("m", "eu")
    now[0] = 20.0
    assert b.allow("m", "eu")
    b.record("m", "eu", StatusCode.OK, first_chunk_s=0.2)
    assert b.state("m", "eu") is BreakerState.CLOSED
    # Judged afresh: the samples from before it opened are gone.
    for _ in range(9):
        b.record("m", "eu", StatusCode.OK, first_chunk_s=0.1)
    assert b.state("m", "eu") is BreakerState.CLOSED


def test_without_a_budget_latency_never_opens_a_breaker() -> None:
    b = CircuitBreakers(min_samples=1, latency_window=1, clock=lambda: 0.0)
    for _ in range(100):
        b.record("m", "eu", StatusCode.OK, first_chunk_s=60.0)
    assert b.state("m", "eu") is BreakerState.CLOSED
    b.record("m", "eu", StatusCode.UNAVAILABLE)
    assert b.reason("m", "eu") == ""


def test_failures_give_their_reason() -> None:
    b = CircuitBreakers(failure_threshold=2, clock=lambda: 0.0)
    b.record("m", "eu", StatusCode.INTERNAL)
    b.record("m", "eu", StatusCode.INTERNAL)
    assert b.reason("m", "eu") == "its workers failed 2 times in a row"
