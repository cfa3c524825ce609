"""Batched responses: what a relay forwards in one frame, and what it never delays.

A relay (here a ``Worker`` servicer that forwards another worker's stream, as the
orchestrator and the gateway do) takes what has already arrived upstream with
``next_batch`` and yields it as one batch: the runtime sends it as one ``batch``
frame when the client accepts batches and the credits allow, as its original bytes.
Every test runs under trio's MockClock with autojump: nothing sleeps for real.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio
import trio.testing

from tether.rpc import (
    Encoded,
    MessageStream,
    Responses,
    RpcError,
    RpcProtocolError,
    ServerContext,
    StatusCode,
    collect_handlers,
    memory_message_stream_pair,
    open_connection,
)
from tether.v1 import infer_pb2, rpc_pb2, services_rpc


def trio_test(fn: Callable[[], Awaitable[None]]) -> Callable[[], None]:
    @functools.wraps(fn)
    def run() -> None:
        trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))

    return run


def chunk(seq: int, done: bool = False) -> infer_pb2.Infer.Chunk:
    c = infer_pb2.Infer.Chunk(correlation_id="c1", seq=seq, done=done)
    c.payload.text = f"tok{seq}"
    return c


class Source(services_rpc.WorkerServicer):
    """The upstream: ``max_tokens`` chunks; ``pause_after`` (input text, a number) makes
    it wait 10 s after that chunk; ``all-at-once`` yields them as one batch."""

    def __init__(self) -> None:
        self.produced = 0
        self.cancelled = trio.Event()

    async def Infer(
        self, request: infer_pb2.Infer.Request, context: ServerContext
    ) -> AsyncIterator[Responses[infer_pb2.Infer.Chunk]]:
        n = request.params.max_tokens
        try:
            if request.input.text == "all-at-once":
                self.produced = n
                yield [chunk(s, s == n - 1) for s in range(n)]
                return
            for seq in range(n):
                self.produced += 1
                yield chunk(seq, seq == n - 1)
                if request.input.text == str(seq):
                    await trio.sleep(10)
        except (trio.Cancelled, GeneratorExit):  # (GeneratorExit: cancelled at a yield)
            self.cancelled.set()
            raise


class Relay(services_rpc.WorkerServicer):
    """Forwards the upstream's stream as it arrives: what is waiting, in one batch."""

    def __init__(self, upstream: services_rpc.WorkerStub) -> None:
        self.upstream = upstream
        self.batches: list[list[Encoded[infer_pb2.Infer.Chunk]]] = []
        self.cancelled = trio.Event()

    async def Infer(
        self, request: infer_pb2.Infer.Request, context: ServerContext
    ) -> AsyncIterator[Responses[infer_pb2.Infer.Chunk]]:
        try:
            async with self.upstream.Infer(request) as chunks:
                while batch := await chunks.next_batch():
                    self.batches.append(batch)
                    yield batch
        except (trio.Cancelled, GeneratorExit):  # (GeneratorExit: cancelled at a yield)
            self.cancelled.set()
            raise


class _Recorder:
    """Test double around a message stream: keeps every frame it receives."""

    def __init__(self, inner: MessageStream) -> None:
        self.inner = inner
        self.frames: list[rpc_pb2.RpcFrame] = []

    async def send_message(self, data: bytes) -> None:
        await self.inner.send_message(data)

    async def receive_message(self) -> bytes:
        data = await self.inner.receive_message()
        self.frames.append(rpc_pb2.RpcFrame.FromString(data))
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()

    def responses(self) -> list[str]:
        """'m' for a message frame, 'b<n>' for a batch of n, in order."""
        kinds = []
        for f in self.frames:
            if f.HasField("message"):
                kinds.append("m")
            elif f.HasField("batch"):
                kinds.append(f"b{len(f.batch.payloads)}")
        return kinds


@asynccontextmanager
async def relayed(
    source: Source,
) -> AsyncIterator[tuple[services_rpc.WorkerStub, Relay, _Recorder]]:
    """client -> relay -> source; the recorder sees what reaches the client."""
    up_client, up_server = memory_message_stream_pair()
    down_client, down_server = memory_message_stream_pair()
    recorder = _Recorder(down_client)
    async with (
        open_connection(up_server, initiator=False, handlers=collect_handlers(source)),
        open_connection(up_client, initiator=True) as to_source,
    ):
        relay = Relay(services_rpc.WorkerStub(to_source))
        async with (
            open_connection(down_server, initiator=False, handlers=collect_handlers(relay)),
            open_connection(recorder, initiator=True) as client,
        ):
            yield services_rpc.WorkerStub(client), relay, recorder


def infer_request(n: int, text: str = "") -> infer_pb2.Infer.Request:
    req = infer_pb2.Infer.Request(model_id="m", correlation_id="c1")
    req.input.text = text
    req.params.max_tokens = n
    return req


@trio_test
async def test_waiting_chunks_go_on_in_one_frame_in_order_as_their_own_bytes() -> None:
    source = Source()
    async with (
        relayed(source) as (stub, relay, recorder),
        stub.Infer(infer_request(20, "all-at-once")) as chunks,
    ):
        got = [c async for c in chunks]
    assert [c.seq for c in got] == list(range(20))
    assert got[-1].done and not any(c.done for c in got[:-1])
    # The source's one batch reached the relay whole, and went on as one frame.
    assert [len(b) for b in relay.batches] == [20]
    assert recorder.responses() == ["b20"]
    # Forwarded as received: the bytes the client got are the relay's input bytes.
    assert [e.data for e in relay.batches[0]] == [c.SerializeToString() for c in got]


@trio_test
async def test_a_lone_chunk_is_forwarded_at_once() -> None:
    """Nothing waits to fill a batch: the chunk before a 10 s pause reaches the client
    with no delay (virtual time), alone."""
    source = Source()
    async with (
        relayed(source) as (stub, _, recorder),
        stub.Infer(infer_request(3, "0")) as chunks,
    ):
        start = trio.current_time()
        first = await chunks.__anext__()
        assert first.seq == 0
        assert trio.current_time() - start < 0.1
        rest = [c.seq async for c in chunks]
        assert trio.current_time() - start >= 10
    assert rest == [1, 2]
    assert recorder.responses()[0] == "m"


@trio_test
async def test_a_batch_never_exceeds_the_credits() -> None:
    """A batch bigger than the client's window goes out as the credits come back."""
    source = Source()
    client_end, server_end = memory_message_stream_pair()
    recorder = _Recorder(client_end)
    async with (
        open_connection(server_end, initiator=False, handlers=collect_handlers(source)),
        open_connection(recorder, initiator=True, initial_window=8) as conn,
    ):
        stub = services_rpc.WorkerStub(conn)
        async with stub.Infer(infer_request(50, "all-at-once")) as chunks:
            first = await chunks.__anext__()
            await trio.sleep(10)  # the client reads nothing more: the server must stop
            sent_ahead = sum(
                len(f.batch.payloads) if f.HasField("batch") else 1
                for f in recorder.frames
                if f.HasField("batch") or f.HasField("message")
            )
            assert sent_ahead == 8
            rest = [c.seq async for c in chunks]
    assert [first.seq, *rest] == list(range(50))
    assert recorder.responses()[0] == "b8"


@trio_test
async def test_leaving_mid_batch_cancels_the_relay_and_the_source() -> None:
    source = Source()
    async with relayed(source) as (stub, relay, _):
        async with stub.Infer(infer_request(40, "25")) as chunks:
            async for c in chunks:
                if c.seq == 3:
                    break  # the rest of the batch it came in is dropped
        with trio.fail_after(5):
            await relay.cancelled.wait()
            await source.cancelled.wait()
        # The connections still serve the next call.
        async with stub.Infer(infer_request(2, "all-at-once")) as chunks:
            assert [c.seq async for c in chunks] == [0, 1]


@trio_test
async def test_a_client_that_did_not_ask_gets_one_frame_per_message() -> None:
    """An older client (no accept_batch) is sent plain message frames, in order."""
    client_end, server_end = memory_message_stream_pair()
    async with open_connection(
        server_end, initiator=False, handlers=collect_handlers(Source())
    ):
        opening = rpc_pb2.RpcFrame(call_id=1)
        opening.open.method = "/tether.v1.Worker/Infer"
        opening.open.initial_window = 32
        message = rpc_pb2.RpcFrame(call_id=1)
        message.message.payload = infer_request(5, "all-at-once").SerializeToString()
        close = rpc_pb2.RpcFrame(call_id=1)
        close.half_close.SetInParent()
        for frame in (opening, message, close):
            await client_end.send_message(frame.SerializeToString())
        kinds, seqs = [], []
        while True:
            frame = rpc_pb2.RpcFrame.FromString(await client_end.receive_message())
            kinds.append(frame.WhichOneof("kind"))
            if frame.HasField("message"):
                seqs.append(infer_pb2.Infer.Chunk.FromString(frame.message.payload).seq)
            if frame.HasField("trailer"):
                break
    assert kinds == ["message"] * 5 + ["trailer"]
    assert seqs == list(range(5))


@trio_test
async def test_a_batch_beyond_the_credits_is_a_protocol_error_on_that_call() -> None:
    client_end, server_end = memory_message_stream_pair()
    errors: list[RpcError] = []
    async with open_connection(client_end, initiator=True, initial_window=4) as conn:
        stub = services_rpc.WorkerStub(conn)

        async def call() -> None:
            try:
                async with stub.Infer(infer_request(10)) as chunks:
                    async for _ in chunks:
                        pass
            except RpcError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            frame = rpc_pb2.RpcFrame.FromString(await server_end.receive_message())
            assert frame.open.accept_batch
            batch = rpc_pb2.RpcFrame(call_id=frame.call_id)
            batch.batch.payloads.extend(chunk(s).SerializeToString() for s in range(5))
            await server_end.send_message(batch.SerializeToString())
    assert errors and isinstance(errors[0], RpcProtocolError)
    assert errors[0].code == StatusCode.INTERNAL
