"""The worker's local admission (``worker.quota.QuotaGuard``): requests that arrive in
the same tick (one protomux frame carries the opens of many calls) are admitted or shed
by the free slots and the queue's room, nothing else. Under trio's MockClock."""

from __future__ import annotations

import trio
import trio.testing

from tether.errors import ResourceExhausted
from worker.quota import QuotaGuard


def test_a_burst_in_one_tick_fills_slots_and_queue_exactly() -> None:
    async def main() -> None:
        guard = QuotaGuard(slots=2, queue_limit=2)
        release = trio.Event()
        admitted: list[int] = []
        shed: list[int] = []

        async def one(i: int) -> None:
            try:
                async with guard.admit("acme"):
                    admitted.append(i)
                    await release.wait()
            except ResourceExhausted:
                shed.append(i)

        async with trio.open_nursery() as nursery:
            for i in range(6):  # all runnable in the same tick
                nursery.start_soon(one, i)
            await trio.testing.wait_all_tasks_blocked()
            stats = guard.stats()
            assert (stats.in_use, stats.queue_depth) == (2, 2)
            assert len(admitted) == 2 and len(shed) == 2
            release.set()
        assert len(admitted) == 4 and len(shed) == 2
        assert (guard.stats().in_use, guard.stats().queue_depth) == (0, 0)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_cancelled_waiter_leaves_the_queue() -> None:
    async def main() -> None:
        guard = QuotaGuard(slots=1, queue_limit=1)
        release = trio.Event()

        async def hold() -> None:
            async with guard.admit("acme"):
                await release.wait()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(hold)
            await trio.testing.wait_all_tasks_blocked()
            with trio.move_on_after(1):
                async with guard.admit("acme"):
                    raise AssertionError("no slot was free")
            assert guard.stats().queue_depth == 0
            release.set()
        assert guard.stats().in_use == 0

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
