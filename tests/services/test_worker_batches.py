"""The worker sends together the chunks its engine made while the stream was away.

With continuous batching the batch steps on while one stream's handler is busy
sending; that stream's pieces then wait, and the engine's ``ready()`` says so. The
worker takes every piece that is ready and yields them as one batch (one frame), and
never holds a chunk back waiting for another. A scripted engine stream (a test double
of ``worker.engine.runtime.EngineRun``) plays the engine; virtual time.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable

import trio
import trio.testing

from tether.keys import KeyPair
from tether.rpc import ServerContext
from tether.v1 import health_pb2, infer_pb2, presence_pb2
from worker.service import WorkerConfig, WorkerService


def trio_test(fn: Callable[[], Awaitable[None]]) -> Callable[[], None]:
    @functools.wraps(fn)
    def run() -> None:
        trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))

    return run


class _Stream:
    """Test double of an engine run: ``plan`` is the pieces, in groups that are ready
    together; between groups it waits 1 s (a step it waits for)."""

    def __init__(self, plan: list[list[str]], request: infer_pb2.Infer.Request) -> None:
        self._pending: list[tuple[infer_pb2.Payload, infer_pb2.Usage | None]] = []
        self._groups = [list(g) for g in plan]
        self._request = request
        self._made = 0
        self._ended = False

    def ready(self) -> bool:
        return bool(self._pending) or not self._groups  # (then the end comes at once)

    def __aiter__(self) -> _Stream:
        return self

    async def __anext__(self) -> tuple[infer_pb2.Payload, infer_pb2.Usage | None]:
        if not self._pending:
            if not self._groups:
                if self._ended:
                    raise StopAsyncIteration
                self._ended = True
                usage = infer_pb2.Usage(model_id=self._request.model_id,
                                        output_tokens=self._made)
                return infer_pb2.Payload(), usage
            await trio.sleep(1)
            self._pending = [(infer_pb2.Payload(text=t), None) for t in self._groups.pop(0)]
            self._made += len(self._pending)
        return self._pending.pop(0)

    async def aclose(self) -> None:
        pass


class _Engine:
    def __init__(self, plan: list[list[str]]) -> None:
        self.plan = plan

    def supported(self) -> list[presence_pb2.ModelKey]:
        return [presence_pb2.ModelKey(model_id="m", version="1.0")]

    def cache_manifest(self) -> list[health_pb2.CachedModel]:
        return []

    def stream(self, request: infer_pb2.Infer.Request) -> _Stream:
        return _Stream(self.plan, request)


async def batches(plan: list[list[str]]) -> list[tuple[float, list[str]]]:
    """(when, texts) of each batch the worker yields for ``plan``."""
    worker = WorkerService(WorkerConfig(worker_id="w1", region="local"), _Engine(plan),
                           KeyPair.generate())
    request = infer_pb2.Infer.Request(model_id="m", correlation_id="c1")
    request.input.text = "hi"
    out = []
    start = trio.current_time()
    got: AsyncIterator[list[infer_pb2.Infer.Chunk]] = worker.batches(
        request, ServerContext("Infer", {})
    )
    async for batch in got:
        out.append((trio.current_time() - start, [c.payload.text for c in batch]))
    return out


@trio_test
async def test_pieces_ready_together_go_in_one_batch_and_none_waits() -> None:
    got = await batches([["a"], ["b", "c", "d"], ["e"]])
    # A chunk goes once the next piece (or the end) shows it is not the last: "a" when
    # "b" comes, with "b" and "c", which were ready with it; "d" when "e" comes, and
    # the end (the final chunk, with usage) was ready with "e".
    assert got == [(2, ["a", "b", "c"]), (3, ["d", "e", ""])]


@trio_test
async def test_the_batches_carry_every_chunk_in_order_and_the_last_is_done() -> None:
    worker = WorkerService(WorkerConfig(worker_id="w1", region="local"),
                           _Engine([["a", "b"], ["c"]]), KeyPair.generate())
    request = infer_pb2.Infer.Request(model_id="m", correlation_id="c1")
    request.input.text = "hi"
    chunks = [c async for c in worker.chunks(request, ServerContext("Infer", {}))]
    assert [c.seq for c in chunks] == [0, 1, 2, 3]
    assert [c.done for c in chunks] == [False, False, False, True]
    assert chunks[-1].usage.output_tokens == 3
