"""``tether.aio``'s thread bridge without a network: a test double of the trio client
streams to an asyncio reader and a blocking one; the hand-over is bounded, a reader that
leaves cancels the trio side, errors arrive unwrapped. (The real client on a real network:
``tests/integration/test_aio_client.py``.)"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from tether import aio
from tether.errors import NotFound


class CountingClient:
    """Test double of ``GatewayClient``: ``generate`` yields ``n`` numbered items as fast
    as they are taken, and records how far it got and whether it was cancelled."""

    def __init__(self) -> None:
        self.produced = 0
        self.cancelled = trio.Event()

    async def generate(self, model: str, prompt: str, *, n: int = 100) -> AsyncIterator[int]:
        if model == "missing":
            raise NotFound(f"unknown model {model}")
        try:
            for i in range(n):
                self.produced += 1
                yield i
                await trio.lowlevel.checkpoint()
        except trio.Cancelled:
            self.cancelled.set()
            raise

    async def list_models(self) -> str:
        return "models"


@contextlib.asynccontextmanager
async def connected(client: CountingClient) -> AsyncIterator[Any]:
    async with trio.open_nursery() as nursery:  # errors leave trio wrapped in a group
        yield client
        nursery.cancel_scope.cancel()


def portal_for(client: CountingClient) -> aio._Portal:
    portal = aio._Portal()
    portal.start(lambda: connected(client)).result(timeout=10)
    return portal


def test_an_asyncio_reader_gets_every_item_through_a_bounded_hand_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(aio, "QUEUED_CHUNKS", 4)
    double = CountingClient()
    client = aio.AsyncGatewayClient(portal_for(double))
    seen: dict[str, Any] = {}

    async def main() -> None:
        async with client:
            got = []
            async for item in client.generate("m", "p", n=50):
                got.append(item)
                if len(got) == 1:
                    await asyncio.sleep(0.2)  # a slow reader: the trio side must wait
                    seen["ahead"] = double.produced - len(got)
            seen["got"] = got
            seen["models"] = await client.list_models()
            try:
                await anext(client.generate("missing", "p"))
            except NotFound as exc:  # one error, not a trio exception group
                seen["error"] = exc

    asyncio.run(main())
    assert seen["got"] == list(range(50))
    assert seen["ahead"] <= 4 + 1, seen["ahead"]
    assert seen["models"] == "models"
    assert isinstance(seen["error"], NotFound)


def test_a_blocking_reader_that_leaves_cancels_the_trio_side() -> None:
    double = CountingClient()
    with aio.GatewayClientSync(portal_for(double)) as client:
        stream = client.generate("m", "p", n=10_000)
        assert [next(stream) for _ in range(3)] == [0, 1, 2]
        stream.close()  # the reader leaves
        portal = client._portal
        done = portal.call(lambda _c: _wait(double.cancelled)).result(timeout=10)
        assert done and double.produced < 10_000


async def _wait(event: trio.Event) -> bool:
    with trio.fail_after(10):
        await event.wait()
    return True
