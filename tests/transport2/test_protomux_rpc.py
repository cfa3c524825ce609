"""protomux core (pairing, reject, batches, close, id reuse, fuzz) and protomux-rpc over paired
in-memory muxes (values, errors, events, concurrency, capability, timeouts)."""

from __future__ import annotations

import contextlib

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from p2p_transport import protomux
from p2p_transport.protomux import (
    ChannelMessageStream,
    Mux,
    Protomux,
    ProtomuxError,
    Uint24FramedStream,
)
from p2p_transport.rpc import (
    RpcChannel,
    RpcError,
    RpcProtocolError,
    RpcRequest,
    RpcResponse,
    capability,
    decode_request,
    decode_response,
    decode_value,
    encode_request,
    encode_response,
    encode_value,
)


def _pump(a: Protomux, b: Protomux) -> None:
    """Deliver queued frames both ways until both outboxes are empty."""
    while a.outbox or b.outbox:
        out_a, a.outbox = a.outbox, []
        for f in out_a:
            b.receive(f)
        out_b, b.outbox = b.outbox, []
        for f in out_b:
            a.receive(f)


def test_open_frame_matches_node() -> None:
    # Node's RPC server open: 00 01 01 0c "protomux-rpc" 20 <32-byte key>
    key = bytes(range(32))
    m = Protomux()
    ch = m.create_channel("protomux-rpc", key)
    assert ch is not None
    ch.open()
    assert m.outbox == [b"\x00\x01\x01\x0cprotomux-rpc\x20" + key]


def test_pairing_messages_and_close() -> None:
    a, b = Protomux(), Protomux()
    got: list[tuple[str, object]] = []
    ca = a.create_channel("p", b"x", handshake=True,
                          on_open=lambda h: got.append(("a-open", h)),
                          on_message=lambda t, p: got.append(("a-msg", (t, p))),
                          on_close=lambda r: got.append(("a-close", r)))
    cb = b.create_channel("p", b"x", handshake=True,
                          on_open=lambda h: got.append(("b-open", h)),
                          on_close=lambda r: got.append(("b-close", r)))
    assert ca is not None and cb is not None
    ca.open(b"HA")
    cb.open(b"HB")
    _pump(a, b)
    assert ("a-open", b"HB") in got and ("b-open", b"HA") in got
    assert cb.send(3, b"payload")
    _pump(a, b)
    assert ("a-msg", (3, b"payload")) in got
    cb.close()
    _pump(a, b)
    assert ("b-close", False) in got and ("a-close", True) in got
    assert not cb.send(0, b"late")
    # the freed ids are reused by the next pair
    ca2, cb2 = a.create_channel("p", b"x"), b.create_channel("p", b"x")
    assert ca2 is not None and cb2 is not None
    ca2.open()
    cb2.open()
    _pump(a, b)
    assert ca2.opened and cb2.opened and ca2.local_id == 1


def test_unknown_channel_is_rejected_and_pair_can_create() -> None:
    a, b = Protomux(), Protomux()
    closed: list[bool] = []
    ca = a.create_channel("nobody", on_close=closed.append)
    assert ca is not None
    ca.open()
    _pump(a, b)
    assert closed == [True] and ca.closed

    created = []

    def notify(id_: bytes | None) -> None:
        ch = b.create_channel("svc", id_)
        assert ch is not None
        created.append(ch)
        ch.open()

    b.pair("svc", None, notify)
    cs = a.create_channel("svc", b"k")
    assert cs is not None
    cs.open()
    _pump(a, b)
    assert cs.opened and created[0].opened and created[0].id == b"k"
    assert a.create_channel("svc", b"k") is None  # unique


def test_batches_are_decoded_and_replies_batched() -> None:
    a, b = Protomux(), Protomux()
    seen: list[tuple[int, bytes]] = []
    ca = a.create_channel("p")
    cb = b.create_channel("p", on_message=lambda t, p: seen.append((t, p)))
    assert ca is not None and cb is not None
    a.cork()
    ca.open()
    ca.send(1, b"one")
    ca.send(2, b"two")
    a.uncork()
    assert len(a.outbox) == 1 and a.outbox[0][:2] == b"\x00\x00"
    cb.open()
    _pump(a, b)
    assert seen == [(1, b"one"), (2, b"two")]


def test_protocol_violations() -> None:
    m = Protomux()
    with pytest.raises(ProtomuxError):
        m.receive(b"\x00\x01\x05\x01p\x00")  # remote id jumps ahead
    with pytest.raises(ProtomuxError):
        Protomux().receive(b"\x00\x02\x07")  # reject of an id we never opened
    m = Protomux()
    m.receive(b"\x00\x01\x01\x01p\x00")
    m.receive(b"\x00\x01\x02\x01q\x00")  # rejected at once, the id space grew by one each time
    assert m.outbox == [b"\x00\x02\x01", b"\x00\x02\x02"]
    m.receive(b"\x05\x00junk")  # message for an unknown channel is ignored
    m.receive(b"")


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=40), max_size=6))
def test_protomux_fuzz(frames: list[bytes]) -> None:
    m = Protomux()
    m.pair("p", None, lambda i: None)
    for f in frames:
        for blob in (f, b"\x00" + f, b"\x00\x00" + f, b"\x00\x01" + f):
            for end in range(1, len(blob) + 1):  # every prefix, as a frame of its own
                with contextlib.suppress(ProtomuxError):
                    m.receive(blob[:end])


def test_rpc_codec_matches_node_frames() -> None:
    # response frames observed from Node (without the channel/type prefix)
    assert encode_response(RpcResponse(1, encode_value(b"x" * 15))) == b"\x00\x01\x0f" + b"x" * 15
    err = RpcError("Request failed", "REQUEST_ERROR", cause_message="boom")
    wire = encode_response(RpcResponse(2, None, err))
    assert wire[0] == 0x07
    back = decode_response(wire).error
    assert back is not None
    assert (back.code, back.message, back.cause_message, back.cause_code) == (
        "REQUEST_ERROR", "Request failed", "boom", None)
    req = RpcRequest(1, "echo", encode_value(b"hi from python"))
    assert b"\x01\x00" + encode_request(req) == (
        b"\x01\x00\x01\x04echo\x0ehi from python")
    assert decode_request(encode_request(req)) == req
    assert encode_value(b"") == encode_value(None) == b"\x00"


@settings(max_examples=300)
@given(st.binary(max_size=60))
def test_rpc_decoders_fuzz(data: bytes) -> None:
    for end in range(len(data) + 1):
        for fn in (decode_request, decode_response, decode_value):
            with contextlib.suppress(RpcProtocolError):
                fn(data[:end])


def _memory_pair() -> tuple[Uint24FramedStream, Uint24FramedStream]:
    left, right = trio.testing.memory_stream_pair()
    return Uint24FramedStream(left), Uint24FramedStream(right)


async def _rpc_pair(nursery: trio.Nursery, *, cap_a: bytes | None = None,
                    cap_b: bytes | None = None) -> tuple[RpcChannel, RpcChannel, Mux, Mux]:
    sa, sb = _memory_pair()
    ma, mb = Mux(sa), Mux(sb)
    key = bytes(32)
    hh = bytes(range(64))
    client = RpcChannel(ma, id_=key, capability_key=cap_a, is_initiator=True,
                        handshake_hash=hh if cap_a else None)
    server = RpcChannel(mb, id_=key, capability_key=cap_b, is_initiator=False,
                        handshake_hash=hh if cap_b else None)
    server.open()
    client.open()
    # channels exist before any frame is read, so each side's open finds its pair
    await nursery.start(ma.run)
    await nursery.start(mb.run)
    return client, server, ma, mb


def test_rpc_request_error_event_concurrency() -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            client, server, _, _ = await _rpc_pair(nursery)
            notes: list[bytes | None] = []

            async def echo(v: bytes | None) -> bytes | None:
                return v

            async def fail(v: bytes | None) -> bytes | None:
                exc = ValueError("boom")
                exc.code = "E_BOOM"  # type: ignore[attr-defined]
                raise exc

            async def slow(v: bytes | None) -> bytes | None:
                assert v is not None
                await trio.sleep(v[0])
                return v

            async def note(v: bytes | None) -> bytes | None:
                notes.append(v)
                return None

            for name, fn in (("echo", echo), ("fail", fail), ("slow", slow), ("note", note)):
                server.respond(name, fn)
            await client.opened.wait()
            assert await client.request("echo", b"hi") == b"hi"
            assert await client.request("echo", b"") is None  # optionalBuffer: empty is null
            assert await client.request("echo", b"z" * 60000) == b"z" * 60000
            with pytest.raises(RpcError) as info:
                await client.request("fail", b"")
            assert (info.value.code, info.value.cause_message, info.value.cause_code) == (
                "REQUEST_ERROR", "boom", "E_BOOM")
            with pytest.raises(RpcError) as info:
                await client.request("nope")
            assert info.value.code == "UNKNOWN_METHOD"
            assert info.value.message == "Unknown method 'nope'"
            await client.event("note", b"n1")
            await client.event("nope", b"ignored")
            assert await client.request("echo", b"sync") == b"sync"
            assert notes == [b"n1"]

            order: list[int] = []

            async def call(i: int) -> None:
                await client.request("slow", bytes([i]))
                order.append(i)

            async with trio.open_nursery() as calls:
                for i in (3, 1, 2):
                    calls.start_soon(call, i)
            assert order == [1, 2, 3]  # answered out of order, as each finished

            with pytest.raises(RpcError) as info:
                await client.request("slow", bytes([5]), timeout=1)
            assert info.value.code == "TIMEOUT_EXCEEDED"
            await client.end()
            await server.closed.wait()
            with pytest.raises(RpcError):
                await client.request("echo", b"x")
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_rpc_sync_handlers_answer_inline() -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            client, server, _, _ = await _rpc_pair(nursery)

            def upper(v: bytes | None) -> bytes | None:
                return (v or b"").upper()

            def broken(v: bytes | None) -> bytes | None:
                raise KeyError("missing")

            def wrong(v: bytes | None) -> bytes | None:
                return "not bytes"  # type: ignore[return-value]

            server.respond("upper", upper)
            server.respond("broken", broken)
            server.respond("wrong", wrong)
            await client.opened.wait()
            assert await client.request("upper", b"abc") == b"ABC"
            with pytest.raises(RpcError) as info:
                await client.request("broken")
            assert info.value.code == "REQUEST_ERROR" and "missing" in (
                info.value.cause_message or "")
            with pytest.raises(RpcError) as info:
                await client.request("wrong")
            assert info.value.code == "ENCODE_ERROR"
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.parametrize(("cap_a", "cap_b", "ok"), [
    (b"k" * 32, b"k" * 32, True),
    (b"k" * 32, b"j" * 32, False),
])
def test_rpc_capability(cap_a: bytes, cap_b: bytes, ok: bool) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            client, server, _, _ = await _rpc_pair(nursery, cap_a=cap_a, cap_b=cap_b)

            async def echo(v: bytes | None) -> bytes | None:
                return v

            server.respond("echo", echo)
            if ok:
                assert await client.request("echo", b"cap") == b"cap"
            else:
                await client.closed.wait()
                with pytest.raises(RpcError):
                    await client.request("echo", b"cap")
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_rpc_sheds_load_past_max_responding() -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            sa, sb = _memory_pair()
            ma, mb = Mux(sa), Mux(sb)
            client = RpcChannel(ma, id_=b"k")
            server = RpcChannel(mb, id_=b"k", max_responding=1)

            async def slow(v: bytes | None) -> bytes | None:
                await trio.sleep(5)
                return v

            server.respond("slow", slow)
            server.open()
            client.open()
            await nursery.start(ma.run)
            await nursery.start(mb.run)
            errors: list[RpcError] = []

            async def call() -> None:
                try:
                    await client.request("slow", b"x")
                except RpcError as exc:
                    errors.append(exc)

            async with trio.open_nursery() as calls:
                calls.start_soon(call)
                await trio.sleep(1)
                calls.start_soon(call)
            assert [(e.code, e.cause_code) for e in errors] == [("REQUEST_ERROR", "BUSY")]
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_remote_channel_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protomux, "MAX_REMOTE_CHANNELS", 2)
    m = Protomux()
    m.receive(b"\x00\x01\x01\x01p\x00")
    m.receive(b"\x00\x01\x02\x01p\x00")
    with pytest.raises(ProtomuxError):
        m.receive(b"\x00\x01\x03\x01p\x00")


def test_capability_value_is_keyed_by_role() -> None:
    h = bytes(64)
    assert capability(True, b"k" * 32, h) != capability(False, b"k" * 32, h)
    assert len(capability(True, b"k" * 32, h)) == 32


def test_channel_message_stream() -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            sa, sb = _memory_pair()
            ma, mb = Mux(sa), Mux(sb)
            a = ChannelMessageStream(ma, "tether-rpc")
            b = ChannelMessageStream(mb, "tether-rpc")
            a.open()
            b.open()
            await nursery.start(ma.run)
            await nursery.start(mb.run)
            await a.wait_opened()
            await a.send_message(b"one")
            await a.send_message(b"")
            assert await b.receive_message() == b"one"
            assert await b.receive_message() == b""
            await b.send_message(b"back")
            assert await a.receive_message() == b"back"
            await a.aclose()
            with pytest.raises(trio.EndOfChannel):
                await b.receive_message()
            with pytest.raises(trio.ClosedResourceError):
                await a.send_message(b"late")
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@given(st.none() | st.binary(max_size=600), st.integers(0, 2**20), st.text(max_size=300))
def test_fast_paths_match_the_general_codec(value: bytes | None, id_: int, method: str) -> None:
    from p2p_transport.cenc import Reader, Writer

    assert encode_value(value) == Writer().optional_buffer(value or None).getvalue()
    assert decode_value(encode_value(value)) == (value or None)
    raw = encode_value(value)
    req = RpcRequest(id_, method, raw)
    assert encode_request(req) == Writer().uint(id_).string(method).raw(raw).getvalue()
    assert decode_request(encode_request(req)) == req
    res = RpcResponse(id_, raw)
    wire = encode_response(res)
    assert wire == Writer().uint8(0).uint(id_).raw(raw).getvalue()
    assert decode_response(wire) == res
    r = Reader(wire)
    assert (r.bitfield(4), r.uint(), r.raw()) == (0, id_, raw)


@given(st.binary(max_size=80) | st.binary(max_size=80).map(lambda b: b"\xfd" + b))
def test_request_fast_path_decodes_like_the_reader(data: bytes) -> None:
    from p2p_transport.cenc import DecodeError, Reader

    expected: RpcRequest | None
    try:
        r = Reader(data)
        expected = RpcRequest(r.uint(), r.string(), r.raw())
    except DecodeError:
        expected = None
    try:
        got: RpcRequest | None = decode_request(data)
    except RpcProtocolError:
        got = None
    assert got == expected


@given(st.binary(max_size=40).map(lambda b: b"\x00" + b)
       | st.binary(max_size=40).map(lambda b: b"\x00\xfd" + b))
def test_response_fast_path_decodes_like_the_reader(data: bytes) -> None:
    from p2p_transport.cenc import DecodeError, Reader

    expected: RpcResponse | None
    try:
        r = Reader(data)
        assert r.bitfield(4) == 0
        expected = RpcResponse(r.uint(), r.raw())
    except DecodeError:
        expected = None
    try:
        got: RpcResponse | None = decode_response(data)
    except RpcProtocolError:
        got = None
    assert got == expected



class _RecordingStream:
    """Test double of a message stream that sends whole messages or, when cancelled,
    nothing (the contract of secret-stream); it records what went out."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send_message(self, data: bytes) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        self.sent.append(data)
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def receive_message(self) -> bytes:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


def test_a_cancelled_flush_keeps_every_queued_message() -> None:
    """A task cancelled while it flushes must not take other channels' queued messages
    with it: they stay queued, in order, for the writer."""
    async def main() -> None:
        stream = _RecordingStream()
        mux = protomux.Mux(stream)
        mux.core.outbox.extend([b"one", b"two", b"three"])
        with trio.CancelScope() as scope:
            scope.cancel()
            await mux.flush()
        assert scope.cancelled_caught
        assert mux.core.outbox == [b"one", b"two", b"three"]
        await mux.flush()
        assert stream.sent == [b"one", b"two", b"three"]
        assert mux.core.outbox == []
    trio.run(main)


class _BrokenStream:
    """Test double of a message stream that broke: sends fail, the receive side ends once
    ``ended`` is set (as a stream that failed reports to both sides, in some order)."""

    def __init__(self) -> None:
        self.ended = trio.Event()

    async def send_message(self, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        raise trio.BrokenResourceError("the peer's port is closed")

    async def receive_message(self) -> bytes:
        await self.ended.wait()
        raise trio.BrokenResourceError("the peer's port is closed")

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


def test_a_stream_that_breaks_under_the_writer_ends_the_mux_quietly() -> None:
    """A broken stream is the end of one connection: ``run`` returns as for any end, it
    does not raise out of the task serving the connection (and the swarm above it)."""
    async def main() -> None:
        stream = _BrokenStream()
        mux = protomux.Mux(stream)
        async with trio.open_nursery() as nursery:
            await nursery.start(mux.run)
            mux.core.outbox.append(b"frame")
            mux._wake.set()  # the writer task flushes it and finds the stream broken
            await trio.testing.wait_all_tasks_blocked()
            stream.ended.set()
        assert mux.closed.is_set()
    trio.run(main)
