"""The RPC runtime through generated stubs, over in-memory stream pairs.

Every test runs under trio's MockClock with autojump: deadlines and timeouts
elapse in virtual time, so nothing here sleeps for real.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from tether.rpc import (
    FrameTooLarge,
    LengthPrefixedStream,
    MessageStream,
    RpcConnection,
    RpcError,
    RpcProtocolError,
    ServerContext,
    StatusCode,
    collect_handlers,
    memory_message_stream_pair,
    open_connection,
)
from tether.v1 import health_pb2, infer_pb2, rpc_pb2, services_pb2, services_rpc


def trio_test(fn: Callable[[], Awaitable[None]]) -> Callable[[], None]:
    @functools.wraps(fn)
    def run() -> None:
        trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))

    return run


class Worker(services_rpc.WorkerServicer):
    """A worker servicer that records what happened to its calls."""

    def __init__(self) -> None:
        self.cancelled = trio.Event()
        self.seen_metadata: dict[str, str] = {}
        self.produced = 0

    async def GetHealth(
        self, request: services_pb2.GetHealthRequest, context: ServerContext
    ) -> health_pb2.Health.Report:
        self.seen_metadata = dict(context.metadata)
        if context.metadata.get("fail") == "not-found":
            context.abort(StatusCode.NOT_FOUND, "no such worker", {"worker": "w9"})
        if context.metadata.get("fail") == "crash":
            raise ZeroDivisionError("boom")
        if context.metadata.get("slow"):
            await trio.sleep(float(context.metadata["slow"]))
        report = health_pb2.Health.Report(worker_id="w1", gpu_class="cpu")
        report.capacity.slots = 4
        return report

    async def Infer(
        self, request: infer_pb2.Infer.Request, context: ServerContext
    ) -> AsyncIterator[infer_pb2.Infer.Chunk]:
        count = request.params.max_tokens
        try:
            for seq in range(count):
                if request.input.text == "slow":
                    await trio.sleep(1)
                self.produced += 1
                chunk = infer_pb2.Infer.Chunk(
                    correlation_id=request.correlation_id, seq=seq, done=seq == count - 1
                )
                chunk.payload.text = f"tok{seq}"
                yield chunk
            if request.input.text == "fail-after":
                raise RpcError(StatusCode.RESOURCE_EXHAUSTED, "shed", {"queue": "full"})
        except trio.Cancelled:
            self.cancelled.set()
            raise


@asynccontextmanager
async def pair(servicer: Worker | None = None) -> AsyncIterator[services_rpc.WorkerStub]:
    client_end, server_end = memory_message_stream_pair()
    handlers = collect_handlers(servicer or Worker())
    async with (
        open_connection(server_end, initiator=False, handlers=handlers),
        open_connection(client_end, initiator=True) as client,
    ):
        yield services_rpc.WorkerStub(client)


def infer_request(n: int, text: str = "hi") -> infer_pb2.Infer.Request:
    req = infer_pb2.Infer.Request(tenant_id="t1", model_id="m", correlation_id="c1")
    req.input.text = text
    req.params.max_tokens = n
    return req


@trio_test
async def test_unary_call_returns_typed_response_and_carries_metadata() -> None:
    worker = Worker()
    async with pair(worker) as stub:
        tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        report = await stub.GetHealth(
            services_pb2.GetHealthRequest(), metadata={"TraceParent": tp}
        )
    assert report.worker_id == "w1"
    assert report.capacity.slots == 4
    assert worker.seen_metadata["traceparent"] == tp


@trio_test
async def test_server_stream_delivers_every_chunk_in_order() -> None:
    async with pair() as stub, stub.Infer(infer_request(100)) as chunks:
        got = [c async for c in chunks]
    assert [c.seq for c in got] == list(range(100))
    assert got[-1].done and not got[0].done
    assert got[7].payload.text == "tok7"


@trio_test
async def test_handler_errors_map_to_status_codes() -> None:
    async with pair() as stub:
        with pytest.raises(RpcError) as info:
            await stub.GetHealth(services_pb2.GetHealthRequest(), metadata={"fail": "not-found"})
        assert info.value.code == StatusCode.NOT_FOUND
        assert info.value.details == {"worker": "w9"}
        with pytest.raises(RpcError) as info:
            await stub.GetHealth(services_pb2.GetHealthRequest(), metadata={"fail": "crash"})
        assert info.value.code == StatusCode.UNKNOWN
        assert "ZeroDivisionError" in info.value.message
        # The connection is still good after failed calls.
        assert (await stub.GetHealth(services_pb2.GetHealthRequest())).worker_id == "w1"


@trio_test
async def test_stream_error_after_chunks_arrives_after_them() -> None:
    async with pair() as stub:
        got = []
        with pytest.raises(RpcError) as info:
            async with stub.Infer(infer_request(3, "fail-after")) as chunks:
                async for c in chunks:
                    got.append(c.seq)
        assert got == [0, 1, 2]
        assert info.value.code == StatusCode.RESOURCE_EXHAUSTED


@trio_test
async def test_unknown_method_is_unimplemented() -> None:
    async with pair() as stub:
        registry = services_rpc.RegistryStub(stub.connection)
        with pytest.raises(RpcError) as info:
            await registry.Resolve(services_pb2.ResolveRequest(model_id="x"))
    assert info.value.code == StatusCode.UNIMPLEMENTED
    assert "/tether.v1.Registry/Resolve" in info.value.message


@trio_test
async def test_client_deadline_expires_and_cancels_the_server_handler() -> None:
    worker = Worker()
    async with pair(worker) as stub:
        start = trio.current_time()
        with pytest.raises(RpcError) as info:
            async with stub.Infer(infer_request(10, "slow"), timeout=2.5) as chunks:
                async for _ in chunks:
                    pass
        assert info.value.code == StatusCode.DEADLINE_EXCEEDED
        assert trio.current_time() - start == pytest.approx(2.5)
        with trio.fail_after(1):
            await worker.cancelled.wait()
        assert worker.produced == 2


@trio_test
async def test_server_enforces_the_deadline_it_was_sent() -> None:
    client_end, server_end = memory_message_stream_pair()
    handlers = collect_handlers(Worker())
    async with (
        open_connection(server_end, initiator=False, handlers=handlers),
        open_connection(client_end, initiator=True) as client,
    ):
        # Speak the frames by hand so the client side sets no local deadline.
        raw = await client.open_call(
            "/tether.v1.Worker/GetHealth", b"", timeout=1.0, metadata={"slow": "5"}
        )
        with pytest.raises(RpcError) as info:
            await client.next_item(raw, float("inf"))
    assert info.value.code == StatusCode.DEADLINE_EXCEEDED
    assert "server" in info.value.message


@trio_test
async def test_client_cancellation_by_leaving_the_stream_early() -> None:
    worker = Worker()
    async with pair(worker) as stub:
        async with stub.Infer(infer_request(1000, "slow")) as chunks:
            async for c in chunks:
                if c.seq == 2:
                    break
        with trio.fail_after(1):
            await worker.cancelled.wait()
        assert worker.produced < 10
        assert stub.connection.statistics()["client_calls"] == 0


@trio_test
async def test_client_task_cancellation_propagates_to_the_server() -> None:
    worker = Worker()
    async with pair(worker) as stub:
        with trio.move_on_after(3.5):
            async with stub.Infer(infer_request(1000, "slow")) as chunks:
                async for _ in chunks:
                    pass
        with trio.fail_after(1):
            await worker.cancelled.wait()


@trio_test
async def test_server_side_cancellation_reaches_the_client() -> None:
    """A server shutting down mid-stream ends the client's call, no hang."""
    client_end, server_end = memory_message_stream_pair()
    worker = Worker()
    async with open_connection(client_end, initiator=True) as client:
        server = RpcConnection(server_end, initiator=False, handlers=collect_handlers(worker))
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            stub = services_rpc.WorkerStub(client)
            with pytest.raises(RpcError) as info:
                async with stub.Infer(infer_request(1000, "slow")) as chunks:
                    async for c in chunks:
                        if c.seq == 1:
                            await server.aclose()
            assert info.value.code == StatusCode.UNAVAILABLE
        assert worker.cancelled.is_set()


@trio_test
async def test_flow_control_bounds_what_the_server_sends_ahead() -> None:
    worker = Worker()
    async with pair(worker) as stub, stub.Infer(infer_request(500)) as chunks:
        first = await chunks.__anext__()
        await trio.sleep(10)  # the client reads nothing; the server must stop
        assert first.seq == 0
        # initial window of 32 messages, none granted back yet
        assert worker.produced <= 33
        rest = [c.seq async for c in chunks]
    assert rest == list(range(1, 500))


@trio_test
async def test_many_concurrent_calls_interleave() -> None:
    results: dict[int, list[int]] = {}
    async with pair() as stub:

        async def one(i: int) -> None:
            async with stub.Infer(infer_request(i + 1)) as chunks:
                results[i] = [c.seq async for c in chunks]

        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(one, i)
    assert all(results[i] == list(range(i + 1)) for i in range(40))


@trio_test
async def test_malformed_frame_fails_only_its_call() -> None:
    client_end, server_end = memory_message_stream_pair()
    async with open_connection(client_end, initiator=True) as client:
        stub = services_rpc.WorkerStub(client)
        errors: list[RpcError] = []

        async def victim() -> None:
            try:
                async with stub.Infer(infer_request(5)) as chunks:
                    async for _ in chunks:
                        pass
            except RpcError as exc:
                errors.append(exc)

        async def bystander() -> None:
            async with stub.Infer(infer_request(2)) as chunks:
                seqs = [c.seq async for c in chunks]
            assert seqs == [0, 1]

        async with trio.open_nursery() as nursery:
            nursery.start_soon(victim)
            await trio.testing.wait_all_tasks_blocked()
            # Play the server by hand: read the two calls' frames.
            opened: dict[int, rpc_pb2.RpcFrame] = {}
            while len(opened) < 1:
                frame = rpc_pb2.RpcFrame.FromString(await server_end.receive_message())
                if frame.WhichOneof("kind") == "open":
                    opened[frame.call_id] = frame
            victim_id = next(iter(opened))
            # A frame with a valid call id and garbage after it.
            await server_end.send_message(bytes([0x08, victim_id]) + b"\x1a\xff\xff\xff")
            await trio.testing.wait_all_tasks_blocked()
            assert errors and isinstance(errors[0], RpcProtocolError)
            assert errors[0].code == StatusCode.INTERNAL
            # The connection still works for a new call answered by hand.
            nursery.start_soon(bystander)
            call_id = None
            while call_id is None:
                frame = rpc_pb2.RpcFrame.FromString(await server_end.receive_message())
                if frame.WhichOneof("kind") == "open":
                    call_id = frame.call_id
            while frame.WhichOneof("kind") != "half_close":
                frame = rpc_pb2.RpcFrame.FromString(await server_end.receive_message())
            for seq in range(2):
                chunk = infer_pb2.Infer.Chunk(seq=seq)
                msg = rpc_pb2.RpcFrame(call_id=call_id)
                msg.message.payload = chunk.SerializeToString()
                await server_end.send_message(msg.SerializeToString())
            end = rpc_pb2.RpcFrame(call_id=call_id)
            end.trailer.SetInParent()
            await server_end.send_message(end.SerializeToString())


@trio_test
async def test_garbage_request_frames_are_answered_with_errors_not_hangs() -> None:
    client_end, server_end = memory_message_stream_pair()
    async with open_connection(
        server_end, initiator=False, handlers=collect_handlers(Worker())
    ):
        # Call 1: a request body that is not a GetHealthRequest.
        for kind in ("open", "message", "half_close"):
            f = rpc_pb2.RpcFrame(call_id=1)
            if kind == "open":
                f.open.method = "/tether.v1.Worker/GetHealth"
            elif kind == "message":
                f.message.payload = b"\xff\xff\xff"
            else:
                f.half_close.SetInParent()
            await client_end.send_message(f.SerializeToString())
        # Call 3: half-close without a request; call 5: undecodable frame.
        f = rpc_pb2.RpcFrame(call_id=3)
        f.open.method = "/tether.v1.Worker/GetHealth"
        await client_end.send_message(f.SerializeToString())
        f = rpc_pb2.RpcFrame(call_id=3)
        f.half_close.SetInParent()
        await client_end.send_message(f.SerializeToString())
        await client_end.send_message(b"\x08\x05\xff")
        codes: dict[int, tuple[int, str]] = {}
        with trio.fail_after(5):
            while len(codes) < 3:
                frame = rpc_pb2.RpcFrame.FromString(await client_end.receive_message())
                assert frame.WhichOneof("kind") == "trailer"
                codes[frame.call_id] = (frame.trailer.code, frame.trailer.message)
    assert codes[1][0] == StatusCode.INVALID_ARGUMENT
    assert codes[3][0] == StatusCode.INTERNAL
    assert codes[5][0] == StatusCode.INTERNAL
    assert "undecodable" in codes[5][1]


@trio_test
async def test_oversized_frames_are_skipped_and_the_stream_resynchronises() -> None:
    left, right = trio.testing.memory_stream_pair()
    sender = LengthPrefixedStream(left, max_frame_size=1 << 20)
    receiver = LengthPrefixedStream(right, max_frame_size=1000)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender.send_message, b"x" * 5000)
        with pytest.raises(FrameTooLarge):
            await receiver.receive_message()
        nursery.start_soon(sender.send_message, b"ok")
        assert await receiver.receive_message() == b"ok"


@trio_test
async def test_connection_loss_fails_open_calls_with_unavailable() -> None:
    client_end, server_end = memory_message_stream_pair()
    async with open_connection(client_end, initiator=True) as client:
        stub = services_rpc.WorkerStub(client)

        async def drop_server() -> None:
            await server_end.receive_message()
            await server_end.aclose()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drop_server)
            with pytest.raises(RpcError) as info:
                await stub.GetHealth(services_pb2.GetHealthRequest())
        assert info.value.code == StatusCode.UNAVAILABLE
        with pytest.raises(RpcError):
            await stub.GetHealth(services_pb2.GetHealthRequest())


class _CancelAfterFirstSend:
    """Test double around a message stream: cancels ``scope`` once the first message is out,
    as a deadline expiring between two frames would."""

    def __init__(self, inner: MessageStream) -> None:
        self.inner = inner
        self.scope: trio.CancelScope | None = None

    async def send_message(self, data: bytes) -> None:
        await self.inner.send_message(data)
        if self.scope is not None:
            self.scope.cancel()
            self.scope = None

    async def receive_message(self) -> bytes:
        return await self.inner.receive_message()

    async def aclose(self) -> None:
        await self.inner.aclose()


@trio_test
async def test_a_call_cancelled_while_opening_leaves_no_state_on_the_server() -> None:
    client_end, server_end = memory_message_stream_pair()
    wrapped = _CancelAfterFirstSend(client_end)
    server = RpcConnection(server_end, initiator=False, handlers=collect_handlers(Worker()))
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        async with open_connection(wrapped, initiator=True) as client:
            stub = services_rpc.WorkerStub(client)
            with trio.CancelScope() as scope:
                wrapped.scope = scope
                await stub.GetHealth(services_pb2.GetHealthRequest())
            assert scope.cancelled_caught
            await trio.sleep(1)
            # The open the server saw was released, and the connection still serves.
            assert server.statistics() == {"client_calls": 0, "server_calls": 0}
            assert (await stub.GetHealth(services_pb2.GetHealthRequest())).worker_id == "w1"
        nursery.cancel_scope.cancel()


class _SlowByteStream(trio.abc.Stream):
    """Test double of a byte stream whose ``send_all`` takes a frame in two writes a second
    apart (as a socket under back-pressure does)."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.halfway = trio.Event()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        half = len(data) // 2
        await self.inner.send_all(data[:half])
        self.halfway.set()
        await trio.sleep(1)
        await self.inner.send_all(data[half:])

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return bytes(await self.inner.receive_some(max_bytes))

    async def aclose(self) -> None:
        await self.inner.aclose()


@trio_test
async def test_a_frame_cancelled_part_way_still_goes_out_whole() -> None:
    left, right = trio.testing.memory_stream_pair()
    slow = _SlowByteStream(left)
    sender, receiver = LengthPrefixedStream(slow), LengthPrefixedStream(right)
    async with trio.open_nursery() as nursery:

        async def cancel_halfway() -> None:
            await slow.halfway.wait()
            scope.cancel()

        nursery.start_soon(cancel_halfway)
        with trio.CancelScope() as scope:
            await sender.send_message(b"first frame")
    await sender.send_message(b"second frame")
    assert await receiver.receive_message() == b"first frame"
    assert await receiver.receive_message() == b"second frame"


class _FrameRecorder:
    """Test double around a message stream: records the kind of every frame it receives."""

    def __init__(self, inner: MessageStream) -> None:
        self.inner = inner
        self.received: list[rpc_pb2.RpcFrame] = []

    async def send_message(self, data: bytes) -> None:
        await self.inner.send_message(data)

    async def receive_message(self) -> bytes:
        data = await self.inner.receive_message()
        self.received.append(rpc_pb2.RpcFrame.FromString(data))
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()


@trio_test
async def test_a_waiting_call_probes_its_peer_harmlessly() -> None:
    """While a call waits for its next message it sends window frames granting nothing:
    data on the wire, so that a transport notices a peer that is gone; the server is not
    disturbed by them."""
    client_end, server_end = memory_message_stream_pair()
    recorder = _FrameRecorder(server_end)
    handlers = collect_handlers(Worker())
    async with (
        open_connection(recorder, initiator=False, handlers=handlers),
        open_connection(client_end, initiator=True, probe_after_s=0.25) as client,
    ):
        stub = services_rpc.WorkerStub(client)
        async with stub.Infer(infer_request(3, text="slow")) as chunks:  # 1 s per chunk
            got = [c.seq async for c in chunks]
    assert got == [0, 1, 2]
    probes = [f for f in recorder.received if f.HasField("window") and not f.window.credits]
    assert len(probes) >= 3 * 3  # about four a second while waiting 3 s
