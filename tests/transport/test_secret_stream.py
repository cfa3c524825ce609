"""secret-stream: framing, header checks, XX in band, keepalive, datagrams, fuzzed input."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from udx_memnet import LinkProfile, MemoryNetwork

from p2p_transport import crypto
from p2p_transport.noise import HandshakeResult, dht_handshake
from p2p_transport.protomux import Mux
from p2p_transport.rpc import RpcChannel
from p2p_transport.secret_stream import (
    SecretStream,
    SecretStreamCore,
    SecretStreamError,
    open_secret_stream,
)
from p2p_transport.udx import UdxSocket, UdxStream


def handshake_pair() -> tuple[HandshakeResult, HandshakeResult]:
    server = crypto.key_pair(bytes(32))
    client = dht_handshake(crypto.key_pair(bytes([7]) * 32), server.public_key)
    responder = dht_handshake(server)
    responder.recv(client.send(b""))
    client.recv(responder.send(b""))
    assert client.result is not None and responder.result is not None
    return client.result, responder.result


def core_pair(filter_empty: bool = True) -> tuple[SecretStreamCore, SecretStreamCore]:
    hi, hr = handshake_pair()
    a = SecretStreamCore(True, hi, filter_empty=filter_empty)
    b = SecretStreamCore(False, hr, filter_empty=filter_empty)
    b.receive_data(a.data_to_send())
    a.receive_data(b.data_to_send())
    return a, b


def test_header_frame_layout() -> None:
    hi, _ = handshake_pair()
    core = SecretStreamCore(True, hi)
    out = core.data_to_send()
    assert out[:3] == b"\x38\x00\x00" and len(out) == 59
    assert out[3:35] == hi.stream_id


def test_messages_survive_any_split() -> None:
    a, b = core_pair()
    msgs = [b"", b"x", os.urandom(1000), os.urandom(70000)]
    wire = b"".join(a.encrypt(m) for m in msgs)
    for i in range(len(wire)):  # byte by byte
        b.receive_data(wire[i:i + 1])
    got = []
    while (m := b.next_message()) is not None:
        got.append(m)
    assert got == msgs[1:]  # the empty keepalive is filtered


def test_empty_messages_kept_without_keepalive() -> None:
    a, b = core_pair(filter_empty=False)
    b.receive_data(a.encrypt(b""))
    assert b.next_message() == b""


def test_wrong_stream_id_or_size_is_rejected() -> None:
    hi, hr = handshake_pair()
    a = SecretStreamCore(True, hi)
    b = SecretStreamCore(False, hr)
    header = bytearray(a.data_to_send())
    header[5] ^= 1
    with pytest.raises(SecretStreamError, match="Invalid header received"):
        b.receive_data(bytes(header))
    with pytest.raises(SecretStreamError):
        b.receive_data(b"")  # stays failed
    c = SecretStreamCore(False, hr)
    with pytest.raises(SecretStreamError, match="Invalid header message"):
        c.receive_data(b"\x02\x00\x00ab")


def test_tampered_ciphertext_fails() -> None:
    a, b = core_pair()
    frame = bytearray(a.encrypt(b"secret"))
    frame[-1] ^= 1
    with pytest.raises(SecretStreamError):
        b.receive_data(bytes(frame))


def test_datagram_boxes() -> None:
    a, b = core_pair()
    env = a.box_datagram(b"dgram")
    assert b.open_datagram(env) == b"dgram"
    assert a.open_datagram(env) is None  # other direction's key
    assert b.open_datagram(env[:-1] + bytes([env[-1] ^ 1])) is None
    assert b.open_datagram(b"short") is None


FUZZ_HANDSHAKE = handshake_pair()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_receive(data: bytes) -> None:
    _, hr = FUZZ_HANDSHAKE
    for chunked in (False, True):
        b = SecretStreamCore(False, hr)
        with contextlib.suppress(SecretStreamError):
            if chunked:
                for i in range(len(data)):
                    b.receive_data(data[i:i + 1])
            else:
                b.receive_data(data)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_after_header(data: bytes) -> None:
    _, b = core_pair()
    with contextlib.suppress(SecretStreamError):
        b.receive_data(data)


def test_xx_in_band_handshake_over_memory_streams() -> None:
    async def main() -> None:
        left, right = trio.testing.memory_stream_pair()
        ka, kb = crypto.key_pair(), crypto.key_pair()
        a = SecretStream(left, True, static_key_pair=ka, keepalive=None)
        b = SecretStream(right, False, static_key_pair=kb, keepalive=None)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.start)
            nursery.start_soon(b.start)
        assert a.remote_public_key == kb.public_key
        assert b.remote_public_key == ka.public_key
        assert a.handshake_hash == b.handshake_hash
        await a.send_message(b"over xx")
        assert await b.receive_message() == b"over xx"
    trio.run(main)


def test_check_two_way_stream_over_memory_streams() -> None:
    async def main() -> None:
        async def maker() -> tuple[SecretStream, SecretStream]:
            hi, hr = handshake_pair()
            left, right = trio.testing.memory_stream_pair()
            a = SecretStream(left, True, hi, keepalive=None)
            b = SecretStream(right, False, hr, keepalive=None)
            await a.start()
            await b.start()
            return a, b
        await trio.testing.check_two_way_stream(maker, None)
    trio.run(main)


@asynccontextmanager
async def udx_secret_pair(net: MemoryNetwork, keepalive: float | None = 5.0
                          ) -> AsyncIterator[tuple[SecretStream, SecretStream]]:
    hi, hr = handshake_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(net.run)
        async with (UdxSocket.over(net.endpoint()) as sa,
                    UdxSocket.over(net.endpoint()) as sb):
            ua, ub = sa.create_stream(), sb.create_stream()
            ua.connect(ub.id, sb.address)
            ub.connect(ua.id, sa.address)
            async with (open_secret_stream(ua, True, hi, keepalive=keepalive) as a,
                        open_secret_stream(ub, False, hr, keepalive=keepalive) as b):
                yield a, b
        nursery.cancel_scope.cancel()


def test_over_lossy_udx_with_keepalive_and_datagrams() -> None:
    async def main() -> None:
        net = MemoryNetwork(11, LinkProfile(loss=0.03, duplicate=0.02, jitter=0.005))
        async with udx_secret_pair(net) as (a, b):
            with trio.fail_after(120):
                small = [os.urandom(i % 300) or b"." for i in range(500)]
                for m in small:
                    await a.send_message(m)
                big = os.urandom(1024 * 1024)
                await a.send_message(big)
                for m in small:
                    assert await b.receive_message() == m
                assert await b.receive_message() == big
                # idle for a while: keepalives flow but never surface as messages
                idle_from = trio.current_time()
                await trio.sleep(21)
                assert a._last_write >= idle_from + 15  # keepalives went out every 5 s
                await b.send_message(b"after idle")
                assert await a.receive_message() == b"after idle"
                # unordered datagrams (lossy: send until one arrives)
                with trio.move_on_after(5):
                    got = None
                    async with trio.open_nursery() as nursery:
                        async def pump() -> None:
                            while True:
                                a.send(b"dgram")
                                await trio.sleep(0.05)
                        nursery.start_soon(pump)
                        got = await b.receive_datagram()
                        nursery.cancel_scope.cancel()
                assert got == b"dgram"
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_end_reaches_the_reader() -> None:
    async def main() -> None:
        async with udx_secret_pair(MemoryNetwork(12)) as (a, b):
            await a.send_message(b"last")
            await a.send_eof()
            assert [m async for m in b.messages()] == [b"last"]
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_check_two_way_stream_over_udx() -> None:
    async def main() -> None:
        net = MemoryNetwork(13, LinkProfile(loss=0.02, jitter=0.002))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(net.run)
            async with (UdxSocket.over(net.endpoint()) as sa,
                        UdxSocket.over(net.endpoint()) as sb):
                async def maker() -> tuple[SecretStream, SecretStream]:
                    hi, hr = handshake_pair()
                    ua, ub = sa.create_stream(), sb.create_stream()
                    ua.connect(ub.id, sb.address)
                    ub.connect(ua.id, sa.address)
                    a = SecretStream(ua, True, hi, keepalive=None)
                    b = SecretStream(ub, False, hr, keepalive=None)
                    await a.start()
                    await b.start()
                    return a, b
                await trio.testing.check_two_way_stream(maker, None)
            nursery.cancel_scope.cancel()
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def _clog(s: SecretStream) -> None:
    """Send from ``s`` until the UDX stream below is over its high-water mark with a peer
    that does not read (its receive window is full)."""
    message = bytes(60000)
    for _ in range(300):
        if not s.send_message_nowait(message):
            break
    await trio.testing.wait_all_tasks_blocked()
    assert not s.send_message_nowait(b"x"), "the stream did not clog"


@pytest.mark.parametrize("profile", [LinkProfile(), LinkProfile(loss=0.02, jitter=0.002)],
                         ids=["clean", "lossy"])
def test_check_half_closeable_stream_over_udx_with_backpressure(profile: LinkProfile) -> None:
    """trio's conformance checks with a clogged stream maker: secret-stream over UDX blocks a
    sender whose peer stops reading, and wakes it when the peer reads or either side closes."""
    async def main() -> None:
        net = MemoryNetwork(14, profile)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(net.run)
            async with (UdxSocket.over(net.endpoint()) as sa,
                        UdxSocket.over(net.endpoint()) as sb):
                async def maker() -> tuple[SecretStream, SecretStream]:
                    hi, hr = handshake_pair()
                    ua, ub = sa.create_stream(), sb.create_stream()
                    ua.connect(ub.id, sb.address)
                    ub.connect(ua.id, sa.address)
                    a = SecretStream(ua, True, hi, keepalive=None)
                    b = SecretStream(ub, False, hr, keepalive=None)
                    await a.start()
                    await b.start()
                    return a, b

                async def clogged() -> tuple[SecretStream, SecretStream]:
                    a, b = await maker()
                    await _clog(a)
                    await _clog(b)  # both ways: the two-way check flips the pair
                    return a, b
                await trio.testing.check_half_closeable_stream(maker, clogged)
            nursery.cancel_scope.cancel()
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_deliver_hands_messages_over_from_the_receive_path() -> None:
    async def main() -> None:
        net = MemoryNetwork(14, LinkProfile(loss=0.03, duplicate=0.02, jitter=0.002))
        async with udx_secret_pair(net, keepalive=None) as (a, b):
            sent = [os.urandom(i % 200) or b"." for i in range(300)] + [os.urandom(200_000)]
            got: list[bytes] = []
            replies: list[bool] = []

            def on_message(msg: bytes) -> None:
                got.append(msg)
                # a reply written from the callback goes out without yielding
                replies.append(b.send_message_nowait(b"ack:" + msg[:4]))

            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(b.deliver, on_message)
                    for m in sent:
                        await a.send_message(m)
                    await a.send_eof()
                    # deliver returns at the peer's end
                echoed = [await a.receive_message() for _ in range(len(sent))]
            assert got == sent
            assert all(replies)
            assert echoed == [b"ack:" + m[:4] for m in sent]
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_deliver_raises_what_the_callback_raised_and_on_bad_ciphertext() -> None:
    async def main() -> None:
        async with udx_secret_pair(MemoryNetwork(15), keepalive=None) as (a, b):
            def boom(_msg: bytes) -> None:
                raise ValueError("callback failed")

            await a.send_message(b"one")
            with pytest.raises(ValueError, match="callback failed"):
                await b.deliver(boom)
            # the stream still works for the next consumer
            await a.send_message(b"two")
            assert await b.receive_message() == b"two"

        async with udx_secret_pair(MemoryNetwork(16), keepalive=None) as (a, b):
            frame = bytearray(a.core.encrypt(b"tampered"))
            frame[-1] ^= 1
            await a.raw.send_all(bytes(frame))
            with pytest.raises(trio.BrokenResourceError):
                await b.deliver(lambda _m: None)
            assert isinstance(b.raw, UdxStream) and b.raw.core.closed  # destroyed
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_deliver_ends_on_a_local_close() -> None:
    async def main() -> None:
        async with udx_secret_pair(MemoryNetwork(17), keepalive=None) as (_a, b):
            async def close_soon() -> None:
                await trio.sleep(1)
                await b.aclose()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(close_soon)
                with pytest.raises(trio.ClosedResourceError):
                    await b.deliver(lambda _m: None)
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_send_message_nowait_needs_a_push_transport() -> None:
    async def main() -> None:
        left, right = trio.testing.memory_stream_pair()
        hi, _ = handshake_pair()
        s = SecretStream(left, True, hi, keepalive=None)
        assert not s.send_message_nowait(b"x")  # a plain trio stream: the caller awaits
        await right.aclose()
    trio.run(main)


def test_rpc_over_secret_stream_over_udx_answers_on_the_receive_path() -> None:
    """Over the real stack a sync handler's reply leaves from the packet's receive path and
    carries the ACK: one packet each way per call, and the caller's next request carries the
    ACK of the reply."""
    async def main() -> None:
        async with (udx_secret_pair(MemoryNetwork(31), keepalive=None) as (a, b),
                    trio.open_nursery() as nursery):
            mux_a, mux_b = Mux(a), Mux(b)
            client, server = RpcChannel(mux_a), RpcChannel(mux_b)
            server.respond("echo", lambda v: v)
            client.open()
            server.open()
            await nursery.start(mux_a.run)
            await nursery.start(mux_b.run)
            await client.opened.wait()
            assert await client.request("echo", b"warm") == b"warm"
            await trio.sleep(0.1)
            ua, ub = a.raw, b.raw
            assert isinstance(ua, UdxStream) and isinstance(ub, UdxStream)
            sent_a, sent_b = ua.core.stats.packets_sent, ub.core.stats.packets_sent
            for i in range(50):
                assert await client.request("echo", bytes([i]) * 32) == bytes([i]) * 32
            await trio.sleep(0.1)
            assert ub.core.stats.packets_sent - sent_b == 50
            assert ua.core.stats.packets_sent - sent_a <= 51  # one pure ACK at the end
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_cancelled_send_leaves_the_stream_usable_over_udx() -> None:
    """A send cancelled before it goes out, or while it waits for room in the send buffer,
    sends nothing and breaks nothing: the later messages still decrypt."""
    async def main() -> None:
        async with udx_secret_pair(MemoryNetwork(15), keepalive=None) as (a, b):
            with trio.CancelScope() as scope:
                scope.cancel()
                await a.send_message(b"never sent")
            assert scope.cancelled_caught
            big = os.urandom(2 * 1024 * 1024)  # over the high-water mark: the next send waits
            await a.send_message(big)
            with trio.move_on_after(0.0001) as waiting:
                await a.send_message(b"cancelled while waiting for room")
            assert waiting.cancelled_caught
            await a.send_message(b"after")
            with trio.fail_after(30):
                assert await b.receive_message() == big
                assert await b.receive_message() == b"after"
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_cancelled_send_leaves_the_stream_usable_over_a_byte_stream() -> None:
    async def main() -> None:
        hi, hr = handshake_pair()
        left, right = trio.testing.memory_stream_pair()
        a = SecretStream(left, True, hi, keepalive=None)
        b = SecretStream(right, False, hr, keepalive=None)
        await a.start()
        await b.start()
        with trio.CancelScope() as scope:
            scope.cancel()
            await a.send_message(b"never sent")
        await a.send_message(b"after")
        assert await b.receive_message() == b"after"
    trio.run(main)
