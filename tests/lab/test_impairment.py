"""The relay's impairment core (sans IO, no namespaces): seeded loss is repeatable, delays
keep order, the queue is bounded, and a block drops everything."""

from __future__ import annotations

import pytest

from tests.lab_env import netlab


def test_seeded_loss_is_repeatable_and_near_the_rate() -> None:
    def delivered(seed: int) -> list[int]:
        imp = netlab.Impairment(loss=0.3, seed=seed)
        for i in range(1000):
            imp.offer(0.0, bytes([i % 256]), i)
        return [dest for _, dest in imp.due(0.0)]

    first = delivered(7)
    assert first == delivered(7)
    assert first != delivered(8)
    assert 650 <= len(first) <= 750


def test_delay_holds_datagrams_in_order_until_due() -> None:
    imp = netlab.Impairment(delay_ms=100)
    imp.offer(1.0, b"a", "x")
    imp.offer(1.05, b"b", "x")
    assert imp.due(1.099) == []
    assert imp.next_deadline() == pytest.approx(1.1)
    assert imp.due(1.1) == [(b"a", "x")]
    assert imp.due(2.0) == [(b"b", "x")]


def test_queue_is_bounded_and_block_drops_everything() -> None:
    imp = netlab.Impairment(delay_ms=10, max_queued=3)
    for i in range(5):
        imp.offer(0.0, b"", i)
    assert len(imp.queue) == 3 and imp.dropped == 2
    imp.set({"blocked": True})
    imp.offer(0.0, b"", 9)
    assert imp.dropped == 3
    with pytest.raises(ValueError, match="loss"):
        imp.set({"loss": 2})
