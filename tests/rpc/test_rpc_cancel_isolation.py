"""One call's cancellation stays that call's, over the real transport stack.

RPC over a protomux channel over secret-stream over UDX on loopback UDP, the
stack every Tether connection uses. Calls whose deadline expires or whose
client cancels them mid-stream must end alone: a concurrent call on the same
connection completes and the connection stays open.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
from rpc_stack import rpc_over_udx

from tether.rpc import RpcConnection, RpcError, ServerContext, StatusCode, collect_handlers
from tether.v1 import infer_pb2, services_rpc


class Streamer(services_rpc.WorkerServicer):
    """Streams ``max_tokens`` chunks as fast as flow control allows."""

    def __init__(self) -> None:
        self.started = 0
        self.running = 0
        self.stopped_early = 0
        self.idle = trio.Event()

    async def Infer(
        self, request: infer_pb2.Infer.Request, context: ServerContext
    ) -> AsyncIterator[infer_pb2.Infer.Chunk]:
        self.started += 1
        self.running += 1
        if self.running == 1:
            self.idle = trio.Event()
        finished = False
        try:
            for seq in range(request.params.max_tokens):
                chunk = infer_pb2.Infer.Chunk(correlation_id=request.correlation_id, seq=seq)
                chunk.payload.text = "x" * 200
                yield chunk
                await trio.lowlevel.checkpoint()
            finished = True
        finally:
            self.running -= 1
            self.stopped_early += not finished
            if not self.running:
                self.idle.set()


def _request(n: int) -> infer_pb2.Infer.Request:
    req = infer_pb2.Infer.Request(tenant_id="t", model_id="m", correlation_id="c")
    req.params.max_tokens = n
    return req


@asynccontextmanager
async def _rpc_over_udx(
    streamer: Streamer,
) -> AsyncIterator[tuple[RpcConnection, RpcConnection]]:
    async with rpc_over_udx(collect_handlers(streamer)) as stack:
        yield stack.client, stack.server


def test_deadlines_and_cancels_mid_stream_leave_other_calls_and_the_connection_alone() -> None:
    async def main() -> None:
        rng = random.Random(7)
        with trio.fail_after(60):
            streamer = Streamer()
            async with _rpc_over_udx(streamer) as (client, server):
                stub = services_rpc.WorkerStub(client)
                survivor: list[int] = []
                failures: list[StatusCode] = []

                async def long_call() -> None:
                    async with stub.Infer(_request(3000)) as chunks:
                        survivor.extend([c.seq async for c in chunks])

                async def short_call(i: int) -> None:
                    try:
                        if i % 2:
                            async with stub.Infer(_request(10**6), timeout=0.06) as chunks:
                                async for _ in chunks:
                                    pass
                        else:
                            with trio.move_on_after(rng.uniform(0.01, 0.08)):
                                async with stub.Infer(_request(10**6)) as chunks:
                                    async for _ in chunks:
                                        pass
                    except RpcError as exc:
                        failures.append(exc.code)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(long_call)
                    for i in range(40):
                        nursery.start_soon(short_call, i)
                        await trio.sleep(rng.uniform(0.0, 0.03))
                assert set(failures) <= {StatusCode.DEADLINE_EXCEEDED}
                assert survivor == list(range(3000))
                assert not client.closed and not server.closed
                assert client.statistics() == {"client_calls": 0, "server_calls": 0}
                # Every abandoned call's handler was cancelled and its state released.
                with trio.fail_after(5):
                    await streamer.idle.wait()
                assert server.statistics() == {"client_calls": 0, "server_calls": 0}
                assert streamer.stopped_early == streamer.started - 1  # all but the long call

    trio.run(main)
