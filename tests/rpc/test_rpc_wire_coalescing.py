"""What a call costs on the wire, over the real transport stack.

RPC over a coalescing protomux channel over secret-stream over UDX on loopback UDP, as
``tether.net.swarm`` runs it:

* a unary call is one protomux frame each way (open, request and half-close in one
  batch; the response with its trailer);
* calls written in the same run-loop tick leave in one frame (``Mux(coalesce=True)``),
  and nothing waits for a tick to fill: a lone call's frame leaves at the end of its tick;
* frames reach the connection from the network's receive path, so a window grant is
  counted before the messages it allows can arrive (a grant counted only after its send
  returned failed calls whose peer answered within the same tick).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio
import trio.testing
from rpc_stack import rpc_over_udx

from p2p_transport import tick
from p2p_transport.protomux import Mux, PushMessageStream
from tether.rpc import RpcConnection, ServerContext, collect_handlers
from tether.v1 import health_pb2, infer_pb2, rpc_pb2, services_pb2, services_rpc


class Service(services_rpc.WorkerServicer):
    async def GetHealth(
        self, request: services_pb2.GetHealthRequest, context: ServerContext
    ) -> health_pb2.Health.Report:
        return health_pb2.Health.Report(worker_id="w1")

    async def Infer(
        self, request: infer_pb2.Infer.Request, context: ServerContext
    ) -> AsyncIterator[infer_pb2.Infer.Chunk]:
        for seq in range(request.params.max_tokens):
            yield infer_pb2.Infer.Chunk(correlation_id=request.correlation_id, seq=seq)


class _Frames:
    """Records the frames a protomux core writes (one per secret-stream message)."""

    def __init__(self, mux: Mux) -> None:
        self.frames: list[bytes] = []
        output = mux.core._output

        def record(data: bytes) -> None:
            self.frames.append(data)
            output(data)

        mux.core._output = record  # type: ignore[method-assign]


@asynccontextmanager
async def _connected() -> AsyncIterator[tuple[RpcConnection, _Frames, _Frames]]:
    async with rpc_over_udx(collect_handlers(Service()), coalesce=True) as stack:
        assert isinstance(stack.client_mux.stream, PushMessageStream)
        yield stack.client, _Frames(stack.client_mux), _Frames(stack.server_mux)


def _is_batch(frame: bytes) -> bool:
    return frame[:2] == b"\x00\x00"  # channel 0 (control), type 0 (batch)


def test_a_unary_call_is_one_frame_each_way() -> None:
    async def main() -> None:
        with trio.fail_after(30):
            async with _connected() as (client, sent, answered):
                stub = services_rpc.WorkerStub(client)
                report = await stub.GetHealth(services_pb2.GetHealthRequest(), timeout=10)
                assert report.worker_id == "w1"
                assert len(sent.frames) == 1 and _is_batch(sent.frames[0])
                assert len(answered.frames) == 1 and _is_batch(answered.frames[0])

    trio.run(main)


def test_calls_made_in_one_tick_leave_in_one_frame() -> None:
    async def main() -> None:
        with trio.fail_after(30):
            async with _connected() as (client, sent, _answered):
                stub = services_rpc.WorkerStub(client)
                reports: list[str] = []

                async def call() -> None:
                    report = await stub.GetHealth(services_pb2.GetHealthRequest(), timeout=10)
                    reports.append(report.worker_id)

                async with trio.open_nursery() as nursery:
                    for _ in range(8):  # all runnable in the same tick
                        nursery.start_soon(call)
                assert reports == ["w1"] * 8
                # Their 24 frames (open, request, half-close each) left in one write.
                assert len(sent.frames) == 1 and _is_batch(sent.frames[0])

    trio.run(main)


def test_a_stream_with_a_one_message_window_streams_whole() -> None:
    """Every grant is answered at once by the server: the answers must find it counted."""

    async def main() -> None:
        with trio.fail_after(30):
            async with _connected() as (client, _sent, _answered):
                client.initial_window = 2
                stub = services_rpc.WorkerStub(client)
                request = infer_pb2.Infer.Request(correlation_id="c")
                request.params.max_tokens = 300
                async with stub.Infer(request, timeout=20) as chunks:
                    seqs = [c.seq async for c in chunks]
                assert seqs == list(range(300))

    trio.run(main)


class _EagerPeer:
    """Test double of a message stream whose peer answers a window grant before the send
    that carried it returns (as a peer on the receive path can, within one tick): it plays
    a server streaming ``total`` messages under the client's credits."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.sent_messages = 0
        self.credits = 0
        self.call_id = 0
        self.deliver_to: Callable[[bytes], None] | None = None
        self.delivering = trio.Event()
        self.ended = trio.Event()

    def _send_more(self) -> None:
        assert self.deliver_to is not None
        while self.credits and self.sent_messages < self.total:
            frame = rpc_pb2.RpcFrame(call_id=self.call_id)
            chunk = infer_pb2.Infer.Chunk(seq=self.sent_messages)
            frame.message.payload = chunk.SerializeToString()
            self.sent_messages += 1
            self.credits -= 1
            self.deliver_to(frame.SerializeToString())
        if self.sent_messages == self.total:
            trailer = rpc_pb2.RpcFrame(call_id=self.call_id)
            trailer.trailer.SetInParent()
            self.sent_messages += 1
            self.deliver_to(trailer.SerializeToString())

    async def send_message(self, data: bytes) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        frame = rpc_pb2.RpcFrame.FromString(data)
        kind = frame.WhichOneof("kind")
        if kind == "open":
            self.call_id, self.credits = frame.call_id, frame.open.initial_window
        elif kind == "half_close":
            self._send_more()
        elif kind == "window":
            self.credits += frame.window.credits
            self._send_more()  # before this send returns
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def deliver(self, on_message: Callable[[bytes], None]) -> None:
        self.deliver_to = on_message
        self.delivering.set()
        await self.ended.wait()

    async def receive_message(self) -> bytes:
        raise AssertionError("the connection takes frames with deliver()")

    async def aclose(self) -> None:
        self.ended.set()
        await trio.lowlevel.checkpoint()


def _mock_clock(fn: Callable[[], Awaitable[None]]) -> Callable[[], None]:
    @functools.wraps(fn)
    def run() -> None:
        trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))

    return run


@_mock_clock
async def test_a_grant_answered_before_its_send_returns_is_no_protocol_error() -> None:
    peer = _EagerPeer(total=64)
    conn = RpcConnection(peer, initiator=True, initial_window=4)
    async with trio.open_nursery() as nursery:
        await nursery.start(conn.run)
        await peer.delivering.wait()
        stub = services_rpc.WorkerStub(conn)
        async with stub.Infer(infer_pb2.Infer.Request(), timeout=10) as chunks:
            seqs = [c.seq async for c in chunks]
        assert seqs == list(range(64))
        nursery.cancel_scope.cancel()


@_mock_clock
async def test_tick_end_callbacks_run_once_after_the_runnable_tasks_then_the_hooks() -> None:
    order: list[str] = []

    def hook(timeout: float) -> None:
        if order and order[-1] != "hook":
            order.append("hook")

    def broken() -> None:
        order.append("broken")
        raise RuntimeError("a failing callback is logged, and the others still run")

    tick.add_hook(hook)
    try:
        async def task(name: str) -> None:
            order.append(name)
            tick.at_tick_end(lambda: order.append(f"end {name}"))
            if name == "a":
                tick.at_tick_end(broken)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(task, "a")
            nursery.start_soon(task, "b")
        assert sorted(order[:2]) == ["a", "b"]
        assert set(order[2:5]) == {"end a", "end b", "broken"}
        assert order[5] == "hook"
        order.clear()
        tick.at_tick_end(lambda: order.append("again"))
        await trio.sleep(1)
        assert order == ["again", "hook"]  # the instrument survived the failure
    finally:
        tick.remove_hook(hook)
