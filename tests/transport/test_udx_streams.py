"""UDX streams over the in-memory lossy network under a fake clock."""

from __future__ import annotations

import errno
import hashlib
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from udx_memnet import LinkProfile, MemoryNetwork

from p2p_transport.udx import (
    StreamReset,
    StreamTimeout,
    StreamUnreachable,
    UdpTransport,
    UdxSocket,
    UdxStream,
)
from p2p_transport.udx.packet import DATA, Packet

Pair = tuple[UdxStream, UdxStream]


def run(fn: Callable[[], Awaitable[None]]) -> None:
    trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


@asynccontextmanager
async def sockets(net: MemoryNetwork) -> AsyncIterator[tuple[UdxSocket, UdxSocket]]:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(net.run)
        async with (UdxSocket.over(net.endpoint()) as sa,
                    UdxSocket.over(net.endpoint()) as sb):
            yield sa, sb
        nursery.cancel_scope.cancel()


def connect(sa: UdxSocket, sb: UdxSocket) -> Pair:
    a, b = sa.create_stream(), sb.create_stream()
    a.connect(b.id, sb.address)
    b.connect(a.id, sa.address)
    return a, b


async def receive_exactly(s: UdxStream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await s.receive_some(65536)
        assert chunk, "unexpected EOF"
        buf += chunk
    return bytes(buf)


def test_check_two_way_stream() -> None:
    async def main() -> None:
        async with sockets(MemoryNetwork(1)) as (sa, sb):
            async def maker() -> Pair:
                return connect(sa, sb)
            await trio.testing.check_two_way_stream(maker, None)
    run(main)


def test_check_two_way_stream_on_a_lossy_network() -> None:
    async def main() -> None:
        net = MemoryNetwork(7, LinkProfile(loss=0.05, duplicate=0.05, jitter=0.01))
        async with sockets(net) as (sa, sb):
            async def maker() -> Pair:
                return connect(sa, sb)
            await trio.testing.check_half_closeable_stream(maker, None)
    run(main)


async def clog(s: UdxStream) -> None:
    """Write from ``s`` until its send buffer is over the high-water mark with a peer that
    does not read: once the peer's receive window is full, ``send_all`` blocks."""
    chunk = bytes(65536)
    for _ in range(200):  # 13 MB at most; the window (4 MiB) and the mark (1 MiB) fill first
        if not s.can_send_nowait():
            break
        s.send_nowait(chunk)
    await trio.testing.wait_all_tasks_blocked()  # the window fills, ACKs settle
    assert not s.can_send_nowait(), "the stream did not clog"


@pytest.mark.parametrize("profile", [LinkProfile(), LinkProfile(loss=0.02, jitter=0.002)],
                         ids=["clean", "lossy"])
def test_check_half_closeable_stream_with_backpressure(profile: LinkProfile) -> None:
    """trio's conformance checks, with a clogged stream maker too: a sender whose peer stops
    reading blocks in ``send_all`` / ``wait_send_all_might_not_block`` until the peer reads
    (its window reopens) or either side closes."""
    async def main() -> None:
        async with sockets(MemoryNetwork(21, profile)) as (sa, sb):
            async def maker() -> Pair:
                return connect(sa, sb)

            async def clogged() -> Pair:  # both ways: the two-way check flips the pair
                a, b = connect(sa, sb)
                await clog(a)
                await clog(b)
                return a, b
            await trio.testing.check_half_closeable_stream(maker, clogged)
    run(main)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_lossy_transfer_arrives_intact_with_bounded_retransmissions(seed: int) -> None:
    payload = random.Random(seed).randbytes(1_000_000)

    async def main() -> None:
        net = MemoryNetwork(seed, LinkProfile(loss=0.05, duplicate=0.03, delay=0.01, jitter=0.01))
        async with sockets(net) as (sa, sb):
            a, b = connect(sa, sb)
            got = bytearray()

            async def reader() -> None:
                while chunk := await b.receive_some():
                    got.extend(chunk)

            with trio.fail_after(120):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(reader)
                    await a.send_all(payload)
                    await a.send_eof()
                    # echo nothing back; close our side once the reader saw EOF
                await b.send_eof()
                await a.aclose()
                await b.aclose()
            assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
            stats = a.core.stats
            data_packets = len(payload) // 1152 + 1
            lost = net.stats.dropped
            # every retransmission answers a real loss, give or take a small factor
            assert stats.retransmissions <= 3 * lost + 20, (stats, net.stats)
            assert stats.retransmissions < data_packets
            assert a.core.closed and a.core.error is None
    run(main)


def test_end_both_ways_closes_cleanly() -> None:
    async def main() -> None:
        net = MemoryNetwork(5, LinkProfile(loss=0.2, jitter=0.02))
        async with sockets(net) as (sa, sb):
            a, b = connect(sa, sb)
            with trio.fail_after(60):
                await a.send_all(b"ping")
                await a.send_eof()
                assert await receive_exactly(b, 4) == b"ping"
                assert await b.receive_some() == b""
                await b.send_all(b"pong")
                await b.send_eof()
                assert await receive_exactly(a, 4) == b"pong"
                assert await a.receive_some() == b""
                await trio.sleep(30)  # the last ACKs cross, retransmitted if lost
                assert a.core.closed and b.core.closed
            assert a.core.error is None and b.core.error is None
    run(main)


def test_destroy_resets_the_peer() -> None:
    async def main() -> None:
        async with sockets(MemoryNetwork(3)) as (sa, sb):
            a, b = connect(sa, sb)
            await a.send_all(b"x")
            assert await receive_exactly(b, 1) == b"x"
            a.destroy()
            with trio.fail_after(5), pytest.raises(trio.BrokenResourceError) as info:
                await b.receive_some()
            assert isinstance(info.value.__cause__, StreamReset)
    run(main)


def test_dead_peer_times_out() -> None:
    async def main() -> None:
        net = MemoryNetwork(4)
        async with sockets(net) as (sa, sb):
            a, _b = connect(sa, sb)
            net.profile.loss = 1.0  # the peer vanishes
            start = trio.current_time()
            with trio.fail_after(60), pytest.raises(trio.BrokenResourceError) as info:
                await a.send_all(b"y" * 5000)
                await a.receive_some()
            assert isinstance(info.value.__cause__, StreamTimeout)
            # 1 s RTO then 5 re-armed timers at 2 x RTO, as libudx
            assert 10 <= trio.current_time() - start <= 12
    run(main)


def test_data_before_connect_is_delivered_and_acked_later() -> None:
    async def main() -> None:
        async with sockets(MemoryNetwork(6)) as (sa, sb):
            b = sb.create_stream()
            a = sa.create_stream()
            a.connect(b.id, sb.address)
            await a.send_all(b"early")
            await trio.sleep(0.5)
            assert b.core.readable_bytes == 5  # accepted while unconnected
            assert a.core.unacked_packets == 1  # ACK deferred
            b.connect(a.id, sa.address)
            assert await receive_exactly(b, 5) == b"early"
            await trio.sleep(0.5)
            assert a.core.unacked_packets == 0
    run(main)


def test_firewall_can_connect_or_drop() -> None:
    async def main() -> None:
        async with sockets(MemoryNetwork(8)) as (sa, sb):
            a = sa.create_stream()
            seen = []

            def firewall(stream: UdxStream, addr: tuple[str, int]) -> bool:
                seen.append(addr)
                stream.connect(a.id, addr)
                return False

            b = sb.create_stream(firewall=firewall)
            a.connect(b.id, sb.address)
            await a.send_all(b"hi")
            assert await receive_exactly(b, 2) == b"hi"
            assert seen == [sa.address]
            dropper = sb.create_stream(firewall=lambda s, addr: True)
            c = sa.create_stream()
            c.connect(dropper.id, sb.address)
            await c.send_all(b"no")
            await trio.sleep(0.5)
            assert dropper.core.readable_bytes == 0
    run(main)


def test_messages_both_ways_and_other_datagrams() -> None:
    async def main() -> None:
        others: list[tuple[bytes, tuple[str, int]]] = []
        net = MemoryNetwork(9)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(net.run)
            async with (UdxSocket.over(net.endpoint()) as sa,
                        UdxSocket.over(net.endpoint(),
                                       on_datagram=lambda d, a: others.append((d, a))) as sb):
                a, b = connect(sa, sb)
                a.send_message(b"to-b")
                b.send_message(b"to-a")
                with trio.fail_after(5):
                    assert await b.receive_message() == b"to-b"
                    assert await a.receive_message() == b"to-a"
                # non-UDX datagrams and UDX packets for unknown ids reach the other user
                sa.send_datagram(b"\x03dht", sb.address)
                stray = Packet(DATA, 12345, 0, 0, 0, b"zz").encode()
                sa.send_datagram(stray, sb.address)
                await trio.sleep(0.1)
                assert [d for d, _ in others] == [b"\x03dht", stray]
                # and without a callback they queue for receive_datagram
                sb2 = sa
                sb.send_datagram(b"\x13reply", sb2.address)
                assert await sa.receive_datagram() == (b"\x13reply", sb.address)
            nursery.cancel_scope.cancel()
    run(main)


def test_slow_reader_shrinks_the_window() -> None:
    async def main() -> None:
        async with sockets(MemoryNetwork(10)) as (sa, sb):
            a, b = connect(sa, sb)
            blob = bytes(6 * 1024 * 1024)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(a.send_all, blob)
                await trio.sleep(5)
                # the receiver buffers at most its window; the rest waits at the sender
                assert b.core.readable_bytes <= 4 * 1024 * 1024 + 1152
                assert a.core.buffered_amount > 0
                got = await receive_exactly(b, len(blob))
            assert got == blob
    run(main)


def test_garbage_datagrams_never_break_the_socket() -> None:
    """Random datagrams, many of them UDX-shaped and aimed at the live stream's id, are parsed
    or dropped; the stream keeps working."""
    rng = random.Random(99)

    async def main() -> None:
        others: list[bytes] = []
        net = MemoryNetwork(14)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(net.run)
            async with (UdxSocket.over(net.endpoint()) as sa,
                        UdxSocket.over(net.endpoint(), on_datagram=lambda d, a: others.append(d))
                        as sb):
                a, b = connect(sa, sb)
                attacker = net.endpoint()
                for _ in range(3000):
                    kind = rng.randrange(4)
                    if kind == 0:
                        d = rng.randbytes(rng.randrange(0, 64))
                    else:
                        # a UDX header for b's id with random type, offsets, seq, ack and body
                        d = Packet(rng.randrange(256) & 0x3F, b.id, rng.getrandbits(32),
                                   rng.getrandbits(32) if kind == 1 else rng.randrange(8),
                                   rng.getrandbits(32) if kind == 2 else rng.randrange(8),
                                   rng.randbytes(rng.randrange(0, 40))).encode()
                        d = d[:3] + bytes([rng.randrange(256)]) + d[4:]
                    attacker.send(d, sb.address)
                await trio.sleep(1)
                if not b.core.closed:  # a forged DESTROY may legitimately reset it
                    await a.send_all(b"still fine")
                    assert await receive_exactly(b, 10) == b"still fine"
                # and a fresh stream on the same sockets works regardless
                c, d2 = connect(sa, sb)
                await c.send_all(b"fresh")
                assert await receive_exactly(d2, 5) == b"fresh"
            nursery.cancel_scope.cancel()
    run(main)


def test_reader_callback_gets_bytes_eof_and_blocks_receive_some() -> None:
    async def main() -> None:
        async with sockets(MemoryNetwork(21)) as (sa, sb):
            a, b = connect(sa, sb)
            got: list[bytes | None] = []

            def reader() -> None:
                while (data := b.receive_nowait()) is not None:
                    got.append(data)
                    if not data:
                        return

            assert b.receive_nowait() is None  # nothing yet
            b.set_reader(reader)
            with pytest.raises(trio.BusyResourceError):
                await b.receive_some()
            await a.send_all(b"hello")
            await a.send_all(b" world")
            await trio.sleep(0.1)
            assert b"".join(d for d in got if d) == b"hello world"
            await a.send_eof()
            await trio.sleep(0.1)
            assert got[-1] == b""
            b.set_reader(None)
            assert await b.receive_some() == b""  # a plain reader works again
    run(main)


def test_reader_callback_sees_a_reset_and_a_local_close() -> None:
    async def main() -> None:
        async with sockets(MemoryNetwork(22)) as (sa, sb):
            a, b = connect(sa, sb)
            errors: list[type[BaseException]] = []

            def reader(stream: UdxStream) -> None:
                try:
                    stream.receive_nowait()
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    errors.append(type(exc))

            b.set_reader(lambda: reader(b))
            a.destroy()
            await trio.sleep(0.1)
            assert errors == [trio.BrokenResourceError]

            c, _d = connect(sa, sb)
            c.set_reader(lambda: reader(c))
            await c.aclose()
            assert errors[-1] is trio.ClosedResourceError
    run(main)


def test_send_nowait_writes_at_once_and_respects_the_high_water_mark() -> None:
    async def main() -> None:
        async with sockets(MemoryNetwork(23)) as (sa, sb):
            a, b = connect(sa, sb)
            assert a.can_send_nowait()
            a.send_nowait(b"ping")
            assert await receive_exactly(b, 4) == b"ping"
            # a peer that never acknowledges: the buffer fills past the mark
            lonely = sa.create_stream()
            lonely.connect(12345, ("10.9.9.9", 9))
            chunk = bytes(64 * 1024)
            while lonely.can_send_nowait():
                lonely.send_nowait(chunk)
            assert lonely.core.buffered_amount > 1024 * 1024
            with pytest.raises(trio.WouldBlock):
                lonely.send_nowait(b"x")
            lonely.destroy()
            with pytest.raises(trio.ClosedResourceError):
                lonely.send_nowait(b"x")
    run(main)


def test_a_pure_ack_waits_for_a_reply_to_carry_it() -> None:
    async def main() -> None:
        async with sockets(MemoryNetwork(24)) as (sa, sb):
            a, b = connect(sa, sb)
            await a.send_all(b"warm-up")
            assert await receive_exactly(b, 7) == b"warm-up"
            await trio.sleep(0.1)
            sent_a, sent_b = a.core.stats.packets_sent, b.core.stats.packets_sent
            for _ in range(20):
                await a.send_all(b"ping")
                assert await receive_exactly(b, 4) == b"ping"
                await b.send_all(b"pong")  # written in the same round: carries the ACK
                assert await receive_exactly(a, 4) == b"pong"
            await trio.sleep(0.1)
            # one data packet each way per exchange; at most one pure ACK at the very end
            assert b.core.stats.packets_sent - sent_b == 20
            assert a.core.stats.packets_sent - sent_a <= 21
            assert a.core.unacked_packets == 0 and b.core.unacked_packets == 0
    run(main)


def test_a_pure_ack_goes_out_once_nothing_else_runs() -> None:
    async def main() -> None:
        async with sockets(MemoryNetwork(25)) as (sa, sb):
            a, b = connect(sa, sb)
            await a.send_all(b"data")
            assert await receive_exactly(b, 4) == b"data"
            await trio.sleep(0.01)  # nobody replies
            assert a.core.unacked_packets == 0
            assert b.core.stats.packets_sent == 1  # the pure ACK
    run(main)


def test_a_killed_peer_fails_the_stream_at_once_on_loopback() -> None:
    """A peer process that was killed leaves a closed UDP port; the host answers the next
    packet with ICMP port unreachable, and the stream fails on it at once rather than
    after the retransmission timeouts (11 s). Real UDP on 127.0.0.1, real time."""
    async def main() -> None:
        gone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        gone.bind(("127.0.0.1", 0))
        host, port = gone.getsockname()
        gone.close()  # as SIGKILL would: no DESTROY, the port just closes
        async with UdxSocket.bind() as sa:
            a = sa.create_stream()
            a.connect(1234, (host, port))
            start = trio.current_time()
            with trio.fail_after(5), pytest.raises(trio.BrokenResourceError) as info:
                await a.send_all(b"anyone?")
                await a.receive_some()
            assert isinstance(info.value.__cause__, StreamUnreachable)
            assert trio.current_time() - start < 0.5  # the first RTO alone is 1 s
            # Other traffic on the socket goes on.
            b = sa.create_stream()
            assert not b.core.closed
    trio.run(main)


def test_an_icmp_error_never_costs_a_later_datagram() -> None:
    """An ICMP error is reported on the socket's next send, whatever its address; that send
    must still go out."""
    async def main() -> None:
        gone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        gone.bind(("127.0.0.1", 0))
        dead = gone.getsockname()
        gone.close()
        async with UdxSocket.bind() as sa, UdxSocket.bind() as sb:
            for _ in range(5):
                sa.send_datagram(b"to nobody", dead)  # on loopback the answer is immediate
                sa.send_datagram(b"to b", sb.address)
                with trio.fail_after(1):
                    assert await sb.receive_datagram() == (b"to b", sa.address)
    trio.run(main)


async def _receive_all(transport: UdpTransport, count: int) -> list[bytes]:
    got: list[bytes] = []
    with trio.fail_after(5):
        while len(got) < count:
            got.extend(d for d, _ in await transport.receive_batch())
    return got


_MIXED = ([bytes([i]) * 1172 for i in range(70)] + [b"s" * 500]
          + [bytes([i]) * 1172 for i in range(3)] + [b"tail", b"x" * 1172])


@pytest.mark.parametrize("gro", [True, False])
def test_send_many_puts_exactly_the_datagrams_on_the_wire(gro: bool) -> None:
    """Runs of equal-sized datagrams go out segmented (UDP GSO where the kernel has it) but
    arrive as the same datagrams, in order, whether the receiver reads them coalesced
    (UDP GRO) or one by one. Real UDP on 127.0.0.1."""
    async def main() -> None:
        receiver = UdpTransport.bind()
        if not gro and receiver._gro:  # the plain read path too (UDP_GRO off again)
            receiver._sock.setsockopt(socket.IPPROTO_UDP, 104, 0)
            receiver._gro = False
        sender = UdpTransport.bind()
        try:
            sender.send_many(_MIXED, receiver.local_address)
            assert await _receive_all(receiver, len(_MIXED)) == _MIXED
            assert sender.dropped_sends == 0
        finally:
            sender.close()
            receiver.close()
    trio.run(main)


class _NoGsoSocket:
    """A socket whose kernel refuses segmentation offload (a test double around a real one)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.refused = 0

    def sendmsg(self, *_args: object) -> int:
        self.refused += 1
        raise OSError(errno.EIO, "GSO not supported on this path")

    def __getattr__(self, name: str) -> object:
        return getattr(self._sock, name)


def test_send_many_falls_back_to_one_send_per_datagram_without_gso() -> None:
    async def main() -> None:
        receiver = UdpTransport.bind()
        sender = UdpTransport.bind()
        real = sender._sock
        double = _NoGsoSocket(real)
        sender._sock = double  # type: ignore[assignment]
        sender._gso = True
        try:
            sender.send_many(_MIXED, receiver.local_address)
            sender.send_many(_MIXED, receiver.local_address)
            assert await _receive_all(receiver, 2 * len(_MIXED)) == 2 * _MIXED
            assert double.refused == 1  # refused once, never tried again
        finally:
            sender._sock = real
            sender.close()
            receiver.close()
    trio.run(main)


def test_a_burst_after_request_response_traffic_is_read_whole() -> None:
    """After many wake-ups with one datagram each (when the receiver stops asking for a
    second), a burst that arrives at once is still read, all of it, in order."""
    async def main() -> None:
        receiver = UdpTransport.bind()
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for i in range(40):
                sender.sendto(b"ping %d" % i, receiver.local_address)
                assert await _receive_all(receiver, 1) == [b"ping %d" % i]
            burst = [b"burst %d" % i for i in range(300)]
            for d in burst:
                sender.sendto(d, receiver.local_address)
            assert await _receive_all(receiver, len(burst)) == burst
        finally:
            sender.close()
            receiver.close()
    trio.run(main)


def test_sockets_sharing_a_stream_table() -> None:
    """Holepunching's socket groups: a stream created on one socket takes its first packet on
    another of the group and then sends from that one; closing that socket ends only the
    streams that send through it."""
    async def main() -> None:
        net = MemoryNetwork(3)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(net.run)
            async with UdxSocket.over(net.endpoint()) as main_sock, \
                    UdxSocket.over(net.endpoint()) as peer:
                arrivals: list[UdxSocket] = []

                def first_packet(s: UdxStream, addr: tuple[str, int]) -> bool:
                    arrivals.append(s.socket)
                    s.connect(remote.id, addr)
                    return False

                ours = main_sock.create_stream(firewall=first_packet)
                stay = main_sock.create_stream()
                async with UdxSocket.over(net.endpoint(),
                                          share_streams_with=main_sock) as puncher:
                    remote = peer.create_stream()
                    remote.connect(ours.id, puncher.address)  # the peer reached the puncher
                    await remote.send_all(b"ping")
                    assert await receive_exactly(ours, 4) == b"ping"
                    assert arrivals == [puncher] and ours.socket is puncher
                    await ours.send_all(b"pong")  # goes out from the puncher socket
                    assert await receive_exactly(remote, 4) == b"pong"
                    with pytest.raises(ValueError, match="share"):
                        main_sock.create_stream().connect(1, peer.address, socket=peer)
                # the puncher closed: the stream that moved there ended, the other did not
                with pytest.raises((trio.BrokenResourceError, trio.ClosedResourceError)):
                    await ours.send_all(b"more")
                stay.connect(remote.id, peer.address)
                assert stay.socket is main_sock
            nursery.cancel_scope.cancel()
    run(main)
