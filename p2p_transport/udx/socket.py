"""trio adapter for UDX: one datagram socket shared by UDX streams and any other protocol.

A :class:`UdxSocket` owns a datagram transport (a real UDP socket, or an in-memory one in
tests), one receive task and one timer task. Each datagram that looks like UDX and names a live
local stream goes to that stream's :class:`~p2p_transport.udx.core.StreamCore`; every other
datagram goes to the socket's other user (``on_datagram`` callback, or
:meth:`UdxSocket.receive_datagram`), which is how the DHT shares the socket.

:class:`UdxStream` exposes a stream as a :class:`trio.abc.HalfCloseableStream`, plus unreliable
messages (:meth:`UdxStream.send_message` / :meth:`UdxStream.receive_message`).

On Linux, :class:`UdpTransport` sends runs of equal-sized datagrams with UDP GSO and reads
coalesced ones with UDP GRO (the wire carries the same datagrams either way), and reads one
datagram per wake-up while traffic is request/response.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import random
import socket as stdsocket
import struct
import sys
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Protocol, runtime_checkable

import trio

from .. import tick
from .core import Closed, MessageReceived, StreamCore, StreamError, StreamReset, StreamTimeout
from .packet import HEADER_SIZE, MAGIC, MAX_DATAGRAM, VERSION, Packet, PacketError, is_udx

__all__ = [
    "Address",
    "DatagramTransport",
    "ReportsUnreachable",
    "UdpTransport",
    "UdxSocket",
    "UdxStream",
]

Address = tuple[str, int]
DatagramHandler = Callable[[bytes, Address], None]
Firewall = Callable[["UdxStream", Address], bool]

#: ``send_all`` returns once no more than this many bytes are written but unacknowledged
#: (libudx's ``UDX_HIGH_WATERMARK`` is 256 KiB plus the send window; this is in that range).
HIGH_WATER_MARK = 1024 * 1024
#: Unreliable messages queued for a reader that is not reading; newer ones are dropped.
MAX_QUEUED_MESSAGES = 1024
#: Datagrams for the other user queued when no callback is installed; newer ones are dropped.
MAX_QUEUED_DATAGRAMS = 4096
#: Datagrams handled per receive batch before yielding to other tasks.
RECEIVE_BATCH = 256
#: Wake-ups in a row that read one datagram without asking for a second (see
#: ``UdpTransport.receive_batch``) before a full batch is tried again.
SINGLE_READS = 16
#: Longest a pure ACK waits for data to carry it while the process stays busy (seconds). It
#: normally goes out as soon as no task is runnable, microseconds after the packet arrived;
#: libudx's tail-loss probe fires after 2 x SRTT + 2 ms at the earliest, its RTO after 1 s.
ACK_DELAY = 0.0005
_U32 = struct.Struct("<I")
#: Linux UDP generic segmentation offload (``UDP_SEGMENT``, Linux 4.18+): one ``sendmsg`` of
#: several equal-sized datagrams to one address, cut into those datagrams by the kernel, so the
#: wire carries exactly what separate ``sendto`` calls would.
_SOL_UDP = 17
_UDP_SEGMENT = 103
#: Segments per GSO send (the kernel's ``UDP_MAX_SEGMENTS`` is 64 or more) and its byte bound
#: (one UDP datagram of at most 65507 bytes before segmentation).
GSO_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65000
#: ``UDP_GRO`` (Linux 5.0+), its receiving half: datagrams of one flow that arrive together
#: are read in one ``recvmsg`` with their segment size, then cut apart here.
_UDP_GRO = 104
_GRO_CMSG_SPACE = stdsocket.CMSG_SPACE(4) if hasattr(stdsocket, "CMSG_SPACE") else 0
_I32 = struct.Struct("=i")
log = logging.getLogger(__name__)


class DatagramTransport(Protocol):
    """What a :class:`UdxSocket` needs from the network below it."""

    @property
    def local_address(self) -> Address: ...

    def send(self, data: bytes, addr: Address) -> None:
        """Hand one datagram to the network; never blocks (it may drop, like UDP)."""

    # Optional: ``send_many(datagrams, addr)`` hands several datagrams for one address over at
    # once (see :meth:`UdpTransport.send_many`); :class:`UdxSocket` falls back to ``send``.

    async def receive_batch(self) -> list[tuple[bytes, Address]]:
        """Wait for at least one datagram (or, for a transport that reports them, an
        unreachable address) and return the datagrams available."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class ReportsUnreachable(Protocol):
    """A transport that learns from the network which addresses have no listener."""

    def take_unreachable(self) -> list[Address]:
        """Addresses reported unreachable (ICMP port unreachable) since the last call."""
        ...


#: Linux's ``IP_RECVERR`` (not exported by every Python's socket module): queue ICMP errors
#: with the address they concern, also on unconnected sockets.
_IP_RECVERR = getattr(stdsocket, "IP_RECVERR", 11)
_SO_EE_ORIGIN_ICMP = 2
_EXTENDED_ERR = struct.Struct("=IBBBx")  # sock_extended_err: errno, origin, type, code


class UdpTransport:
    """A bound, non-blocking IPv4 UDP socket driven by trio's I/O loop.

    On Linux it also reads the socket's error queue (``IP_RECVERR``): an ICMP "port
    unreachable" for a datagram we sent names an address where no process listens any more
    (a peer that was killed), reported by :meth:`take_unreachable`.
    """

    def __init__(self, sock: stdsocket.socket) -> None:
        self._sock = sock
        self._sock.setblocking(False)
        self.dropped_sends = 0
        self._unreachable: list[Address] = []
        self._recverr = False
        self._errors_pending = False
        self._single_reads = 0
        self._gso = False
        self._gro = False
        self._gso_cmsg: dict[int, list[tuple[int, int, bytes]]] = {}
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError):
                sock.setsockopt(stdsocket.IPPROTO_IP, _IP_RECVERR, 1)
                self._recverr = True
            with contextlib.suppress(OSError):
                sock.getsockopt(_SOL_UDP, _UDP_SEGMENT)  # the kernel knows UDP_SEGMENT
                self._gso = True
            if _GRO_CMSG_SPACE:
                with contextlib.suppress(OSError):
                    sock.setsockopt(_SOL_UDP, _UDP_GRO, 1)
                    self._gro = True

    @classmethod
    def bind(cls, host: str = "127.0.0.1", port: int = 0, *,
             buffer_size: int = 4 * 1024 * 1024) -> UdpTransport:
        sock = stdsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
        for opt in (stdsocket.SO_RCVBUF, stdsocket.SO_SNDBUF):
            with contextlib.suppress(OSError):  # platform limits
                sock.setsockopt(stdsocket.SOL_SOCKET, opt, buffer_size)
        sock.bind((host, port))
        return cls(sock)

    @property
    def local_address(self) -> Address:
        host, port = self._sock.getsockname()[:2]
        return (host, port)

    def send(self, data: bytes, addr: Address) -> None:
        for _ in range(2):
            try:
                self._sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                self.dropped_sends += 1  # a full send buffer drops, as the network would
            except OSError as exc:
                # An ICMP error for an earlier datagram (to any address) surfaces on this
                # send, which then sent nothing; reporting it cleared it, so send again.
                if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                    self._errors_pending = True
                    continue
                raise
            return

    def send_many(self, datagrams: list[bytes], addr: Address) -> None:
        """Send ``datagrams`` to ``addr`` in order; runs of equal-sized ones (a bulk transfer's
        full packets, possibly ending with a shorter one) go out in one system call each
        through UDP GSO where the kernel has it. Drops like :meth:`send`."""
        n = len(datagrams)
        if not self._gso or n < 2:
            for d in datagrams:
                self.send(d, addr)
            return
        i = 0
        while i < n:
            seg = len(datagrams[i])
            limit = min(n, i + min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // seg))
            j = i + 1
            while j < limit and len(datagrams[j]) == seg:
                j += 1
            if j < limit and len(datagrams[j]) < seg:
                j += 1  # only the last segment may be shorter
            if j - i == 1 or not self._gso or not self._send_segmented(datagrams[i:j], seg,
                                                                       addr):
                for d in datagrams[i:j]:
                    self.send(d, addr)
            i = j

    def _send_segmented(self, group: list[bytes], seg: int, addr: Address) -> bool:
        """One GSO send; False when the kernel refuses GSO here (then it is not tried again)."""
        cmsg = self._gso_cmsg.get(seg)
        if cmsg is None:
            cmsg = self._gso_cmsg[seg] = [(_SOL_UDP, _UDP_SEGMENT, struct.pack("=H", seg))]
        data = b"".join(group)
        for _ in range(2):
            try:
                self._sock.sendmsg([data], cmsg, 0, addr)
            except (BlockingIOError, InterruptedError):
                self.dropped_sends += len(group)
            except OSError as exc:
                if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                    self._errors_pending = True
                    continue  # as in send: an earlier datagram's ICMP error, nothing sent
                if exc.errno in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP,
                                 errno.EMSGSIZE):
                    self._gso = False  # no segmentation on this path: separate sends
                    return False
                raise
            return True
        return True

    def _receive_coalesced(self) -> tuple[bytes, tuple[str, int], int]:
        """One ``recvmsg`` with ``UDP_GRO``: the bytes, the sender and the segment size (0 for a
        single datagram)."""
        data, ancdata, _flags, addr = self._sock.recvmsg(65536, _GRO_CMSG_SPACE)
        for level, kind, payload in ancdata:
            if level == _SOL_UDP and kind == _UDP_GRO and len(payload) >= 4:
                return data, addr, _I32.unpack_from(payload)[0]
        return data, addr, 0

    def send_with_ttl(self, data: bytes, addr: Address, ttl: int) -> None:
        """Send one datagram with IP TTL ``ttl`` (holepunch probes that should open our NAT
        but not reach the peer's)."""
        old = self._sock.getsockopt(stdsocket.IPPROTO_IP, stdsocket.IP_TTL)
        self._sock.setsockopt(stdsocket.IPPROTO_IP, stdsocket.IP_TTL, ttl)
        try:
            self.send(data, addr)
        finally:
            self._sock.setsockopt(stdsocket.IPPROTO_IP, stdsocket.IP_TTL, old)

    async def receive_batch(self) -> list[tuple[bytes, Address]]:
        sock = self._sock
        while True:
            await trio.lowlevel.wait_readable(sock)
            out: list[tuple[bytes, Address]] = []
            # Request/response traffic brings one datagram per wake-up; a speculative second
            # read would fail with EAGAIN (a system call and an exception per round trip). So
            # after a wake-up that read once, the next ones read once too, up to
            # SINGLE_READS in a row, then probe with a full batch again. The socket is polled
            # level-triggered: a datagram left unread wakes us again at once.
            reads = 1 if 0 < self._single_reads < SINGLE_READS else RECEIVE_BATCH
            calls = self._read_datagrams(reads, out)
            self._count_single_reads(calls, len(out))
            if self._recverr and (self._errors_pending or not out):
                # Linux reports a queued ICMP error on the next receive or send (ECONNREFUSED,
                # flagged above) and keeps the socket readable while the queue is not empty
                # (a wake-up with no datagram); only then is the queue read, not on every
                # wake-up (one system call saved per batch).
                self._errors_pending = False
                self._drain_errors()
            if out or self._unreachable:
                return out

    def _read_datagrams(self, reads: int, out: list[tuple[bytes, Address]]) -> int:
        """Read up to ``reads`` times (GRO segments cut apart) into ``out``; the system calls
        made. A refused send (ECONNREFUSED) flags the error queue instead of raising."""
        calls = 0
        recvfrom = self._sock.recvfrom
        for _ in range(reads):  # system calls; at most about RECEIVE_BATCH datagrams
            if len(out) >= RECEIVE_BATCH:
                break
            calls += 1
            try:
                if self._gro:
                    data, addr, seg = self._receive_coalesced()
                    if 0 < seg < len(data):
                        a = (addr[0], addr[1])
                        out.extend((data[k:k + seg], a) for k in range(0, len(data), seg))
                        continue
                else:
                    data, addr = recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno == errno.ECONNREFUSED:
                    self._errors_pending = True
                    continue  # the error is read from the error queue afterwards
                raise
            out.append((data, (addr[0], addr[1])))
        return calls

    def _count_single_reads(self, calls: int, received: int) -> None:
        if calls == 1 and received:
            self._single_reads += 1  # (a batch that read once ended in EAGAIN: counts)
        elif received == 1 and calls == 2:
            self._single_reads = 1
        else:
            self._single_reads = 0

    def _drain_errors(self) -> None:
        while True:
            try:
                _data, ancdata, _flags, addr = self._sock.recvmsg(
                    1, 512, stdsocket.MSG_ERRQUEUE
                )
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno == errno.EAGAIN:
                    return
                raise
            for level, kind, payload in ancdata:
                if level != stdsocket.IPPROTO_IP or kind != _IP_RECVERR:
                    continue
                if len(payload) < _EXTENDED_ERR.size:
                    continue
                err, origin, _type, _code = _EXTENDED_ERR.unpack_from(payload)
                if origin == _SO_EE_ORIGIN_ICMP and err == errno.ECONNREFUSED and addr:
                    self._unreachable.append((addr[0], addr[1]))

    def take_unreachable(self) -> list[Address]:
        out, self._unreachable = self._unreachable, []
        return out

    def close(self) -> None:
        trio.lowlevel.notify_closing(self._sock)
        self._sock.close()


class UdxSocket:
    """A datagram socket carrying UDX streams and other datagrams (see :meth:`bind`)."""

    def __init__(self, transport: DatagramTransport, on_datagram: DatagramHandler | None, *,
                 share_streams_with: UdxSocket | None = None) -> None:
        self.transport = transport
        self._on_datagram = on_datagram
        # Sockets of one peer may share one stream table (libudx keeps ids per UDX instance):
        # a packet for any of its streams is taken on any of them, and a stream moves to the
        # socket that first reached its peer (holepunching).
        self._streams: dict[int, UdxStream] = (
            share_streams_with._streams if share_streams_with is not None else {})
        self._timer_wakeup = trio.Event()
        self._next_deadline = math.inf
        self._datagrams: deque[tuple[bytes, Address]] = deque()
        self._datagram_ready = trio.Event()
        self._closed = False
        self.malformed_packets = 0
        self._ack_pending: dict[int, UdxStream] = {}
        self._ack_since = 0.0
        self._ack_flusher = _AckFlusher(self)
        send_many = getattr(transport, "send_many", None)
        self._send_many: Callable[[list[bytes], Address], None] = (
            send_many if callable(send_many) else self._send_each)

    @classmethod
    @asynccontextmanager
    async def bind(cls, host: str = "127.0.0.1", port: int = 0, *,
                   on_datagram: DatagramHandler | None = None,
                   share_streams_with: UdxSocket | None = None) -> AsyncIterator[UdxSocket]:
        """Bind a UDP socket and run it until the block exits."""
        async with cls.over(UdpTransport.bind(host, port), on_datagram=on_datagram,
                            share_streams_with=share_streams_with) as sock:
            yield sock

    @classmethod
    @asynccontextmanager
    async def over(cls, transport: DatagramTransport, *,
                   on_datagram: DatagramHandler | None = None,
                   share_streams_with: UdxSocket | None = None) -> AsyncIterator[UdxSocket]:
        """Run a socket over ``transport`` until the block exits; its streams are destroyed
        then (with a shared table, those that send through this socket)."""
        self = cls(transport, on_datagram, share_streams_with=share_streams_with)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receive_loop)
                nursery.start_soon(self._timer_loop)
                # After the tick's coalesced writes (p2p_transport.tick), which may carry
                # the ACKs owed.
                tick.add_hook(self._ack_flusher.before_io_wait)
                try:
                    yield self
                finally:
                    nursery.cancel_scope.cancel()
                    tick.remove_hook(self._ack_flusher.before_io_wait)
        finally:
            self._shutdown()

    @property
    def address(self) -> Address:
        return self.transport.local_address

    # ---------------------------------------------------------------- streams

    def create_stream(self, local_id: int | None = None, *,
                      firewall: Firewall | None = None) -> UdxStream:
        """Register a stream; it accepts packets at once and sends after :meth:`UdxStream.connect`.

        ``firewall(stream, addr)`` runs for packets that arrive while the stream is not connected;
        returning True drops the packet. It may call ``stream.connect`` (as hyperdht does).
        """
        if self._closed:
            raise trio.ClosedResourceError("socket is closed")
        if local_id is None:
            local_id = random.getrandbits(32)
            while local_id in self._streams:
                local_id = random.getrandbits(32)
        elif local_id in self._streams and not self._streams[local_id].core.released:
            raise ValueError(f"stream id {local_id} is in use")
        stream = UdxStream(self, StreamCore(local_id), firewall)
        self._streams[local_id] = stream
        return stream

    # ---------------------------------------------------------------- other datagrams

    def send_datagram(self, data: bytes, addr: Address) -> None:
        """Send a datagram that is not UDX (DHT messages, holepunch probes)."""
        if self._closed:
            raise trio.ClosedResourceError("socket is closed")
        if len(data) > MAX_DATAGRAM:
            raise ValueError(f"datagram of {len(data)} bytes exceeds {MAX_DATAGRAM}")
        self.transport.send(data, addr)

    async def receive_datagram(self) -> tuple[bytes, Address]:
        """Next non-UDX datagram (only when no ``on_datagram`` callback was given)."""
        while not self._datagrams:
            if self._closed:
                raise trio.ClosedResourceError("socket is closed")
            await self._datagram_ready.wait()
        await trio.lowlevel.checkpoint()
        return self._datagrams.popleft()

    # ---------------------------------------------------------------- internals

    def _send_each(self, datagrams: list[bytes], addr: Address) -> None:
        send = self.transport.send
        for d in datagrams:
            send(d, addr)

    def _shutdown(self) -> None:
        self._closed = True
        for key, stream in list(self._streams.items()):
            if stream._socket is self:
                stream._abort()
                if self._streams.get(key) is stream:
                    del self._streams[key]
        self.transport.close()
        self._datagram_ready.set()

    def _other(self, data: bytes, addr: Address) -> None:
        if self._on_datagram is not None:
            self._on_datagram(data, addr)
        elif len(self._datagrams) < MAX_QUEUED_DATAGRAMS:
            self._datagrams.append((data, addr))
            self._datagram_ready.set()
            self._datagram_ready = trio.Event()

    async def _receive_loop(self) -> None:
        reports = self.transport if isinstance(self.transport, ReportsUnreachable) else None
        while True:
            batch = await self.transport.receive_batch()
            touched: dict[int, UdxStream] = {}
            now = trio.current_time()
            if reports is not None:
                for addr in reports.take_unreachable():
                    self._unreachable(addr, now)
            streams = self._streams
            for data, addr in batch:
                # inline of _route: the first header fields decide where a datagram goes
                stream = (streams.get(_U32.unpack_from(data, 4)[0])
                          if len(data) >= HEADER_SIZE and data[0] == MAGIC and data[1] == VERSION
                          else None)
                if stream is None or stream.core.released:
                    self._other(data, addr)
                    continue
                fw = stream._firewall
                if stream.remote_address is None and fw is not None:
                    try:  # a malformed packet never reaches the firewall (it may connect)
                        Packet.decode(data)
                    except PacketError:
                        self.malformed_packets += 1
                        continue
                    owner, stream._socket = stream._socket, self  # a connect here sends here
                    if fw(stream, addr):
                        stream._socket = owner
                        continue
                    if stream.remote_address is None:
                        stream._socket = owner
                try:
                    stream.core.receive_datagram(data, now)
                except PacketError:
                    self.malformed_packets += 1
                    continue
                touched[id(stream)] = stream
            for stream in touched.values():
                stream._after_input(now)

    def _unreachable(self, addr: Address, now: float) -> None:
        """Nothing listens at ``addr`` any more: its streams fail now (their peer is gone)
        instead of after the retransmission timeouts."""
        for stream in list(self._streams.values()):
            if stream.remote_address == addr and not stream.core.closed:
                log.info("udx stream %d: %s:%d is unreachable (port closed); failing it",
                         stream.core.local_id, addr[0], addr[1])
                stream.core.unreachable()
                stream._after_input(now)

    def _route(self, data: bytes) -> UdxStream | None:
        if not is_udx(data):
            return None
        stream = self._streams.get(_U32.unpack_from(data, 4)[0])
        if stream is None or stream.core.released:
            return None
        return stream

    def _stream_changed(self, stream: UdxStream) -> None:
        if stream.core.released:
            if self._streams.get(stream.core.local_id) is stream:
                del self._streams[stream.core.local_id]
            return
        deadline = stream.core.timer()
        if deadline is not None and deadline < self._next_deadline:
            self._next_deadline = deadline
            self._timer_wakeup.set()

    def _schedule_ack(self, stream: UdxStream, now: float) -> None:
        if not self._ack_pending:
            self._ack_since = now
        self._ack_pending[id(stream)] = stream

    def _flush_acks(self) -> None:
        # Pure ACKs wait until no task is runnable (or ACK_DELAY passed), so that a task woken
        # by the same packets can send first and carry the ACK in its data packet (halves the
        # packets of a request/response, and costs no task switch when it does).
        pending, self._ack_pending = self._ack_pending, {}
        now: float | None = None  # read the clock only for an ACK still owed
        for stream in pending.values():
            if stream.core.ack_pending:
                if now is None:
                    now = trio.current_time()
                try:
                    stream._flush(now, ack_now=True)
                except OSError as exc:  # this runs in the run loop: a failed send is a loss
                    log.debug("pure ACK not sent: %s", exc)

    async def _timer_loop(self) -> None:
        while True:
            deadlines = [d for s in self._streams.values()
                         if s._socket is self and (d := s.core.timer()) is not None]
            self._next_deadline = min(deadlines, default=math.inf)
            self._timer_wakeup = trio.Event()
            with trio.move_on_at(self._next_deadline):
                await self._timer_wakeup.wait()
            now = trio.current_time()
            for stream in list(self._streams.values()):
                deadline = stream.core.timer()
                if stream._socket is self and deadline is not None and deadline <= now:
                    stream.core.handle_timer(now)
                    stream._after_input(now)


class _AckFlusher:
    """Sends a socket's owed pure ACKs when the run loop is about to wait for I/O with nothing
    runnable, or once they waited :data:`ACK_DELAY` (a :mod:`p2p_transport.tick` hook)."""

    def __init__(self, socket: UdxSocket) -> None:
        self._socket = socket
        # Under a virtual clock that jumps while the run loop is idle (trio.testing.MockClock,
        # recognised by its public ``autojump_threshold`` rather than by importing the testing
        # module here) the loop always polls with timeout 0.
        self._virtual_clock = getattr(trio.lowlevel.current_clock(), "autojump_threshold",
                                      None) is not None

    def before_io_wait(self, timeout: float) -> None:
        sock = self._socket
        if sock._ack_pending and (
                timeout > 0  # nothing is runnable
                or trio.current_time() - sock._ack_since >= ACK_DELAY
                or (self._virtual_clock
                    and not trio.lowlevel.current_statistics().tasks_runnable)):
            sock._flush_acks()


class UdxStream(trio.abc.HalfCloseableStream):
    """A reliable, ordered byte stream over UDX, with half-close and unreliable messages.

    Error vocabulary: :class:`trio.ClosedResourceError` after this side closed it,
    :class:`trio.BrokenResourceError` after the peer reset it or stopped answering (the cause is
    chained: :class:`~p2p_transport.udx.core.StreamReset` / ``StreamTimeout``),
    :class:`trio.BusyResourceError` for concurrent sends or receives.
    """

    def __init__(self, socket: UdxSocket, core: StreamCore, firewall: Firewall | None) -> None:
        self._socket = socket
        self.core = core
        self._firewall = firewall
        self.remote_address: Address | None = None
        self._changed = trio.lowlevel.ParkingLot()  # tasks waiting for any change
        self._local_closed = False
        self._sending = False
        self._receiving = False
        self._messages: deque[bytes] = deque()
        self.dropped_messages = 0
        self._reader: Callable[[], None] | None = None
        self._in_reader = False

    # ---------------------------------------------------------------- identity

    @property
    def id(self) -> int:
        return self.core.local_id

    @property
    def remote_id(self) -> int | None:
        return self.core.remote_id

    @property
    def socket(self) -> UdxSocket:
        return self._socket

    def connect(self, remote_id: int, addr: Address, *, socket: UdxSocket | None = None) -> None:
        """Attach to the peer's stream ``remote_id`` at ``addr`` and start sending (through
        ``socket``, one sharing this stream's table, when given)."""
        if self.core.connected:
            raise RuntimeError("stream already connected")
        if socket is not None:
            if socket._streams is not self._socket._streams:
                raise ValueError("that socket does not share this stream's table")
            self._socket = socket
        self.remote_address = addr
        self.core.connect(remote_id)
        self._after_input(trio.current_time())

    # ---------------------------------------------------------------- plumbing

    def _wake(self) -> None:
        if self._changed:
            self._changed.unpark_all()

    def _send(self, datagrams: list[bytes]) -> None:
        addr = self.remote_address
        if datagrams and addr is not None:
            if len(datagrams) == 1:
                self._socket.transport.send(datagrams[0], addr)
            else:
                self._socket._send_many(datagrams, addr)  # one system call per run (GSO)

    def _flush(self, now: float, *, ack_now: bool = False) -> None:
        self._send(self.core.datagrams_to_send(now, ack_now=ack_now))
        if self.core.ack_pending:
            self._socket._schedule_ack(self, now)

    def _after_input(self, now: float) -> None:
        core = self.core
        self._send(core.datagrams_to_send(now, ack_now=False))
        while (ev := core.next_event()) is not None:
            if isinstance(ev, MessageReceived):
                if len(self._messages) < MAX_QUEUED_MESSAGES:
                    self._messages.append(ev.data)
                else:
                    self.dropped_messages += 1
            elif isinstance(ev, Closed):
                self._flush(now, ack_now=True)  # the final ACK or DESTROY
        if self._changed:
            self._changed.unpark_all()
        self._socket._stream_changed(self)
        if self._reader is not None and (core.readable_bytes or core.eof_received
                                         or core.closed):
            self._call_reader()  # a reply written now carries the ACK
        if core.ack_pending:
            self._socket._schedule_ack(self, now)

    def _after_write(self, now: float) -> None:
        """:meth:`_after_input` for a local write: it produces datagrams and a timer but no
        event, nothing to read and nothing a parked task waits for."""
        core = self.core
        self._send(core.datagrams_to_send(now, ack_now=False))
        if core.has_events:
            self._after_input(now)
            return
        self._socket._stream_changed(self)
        if core.ack_pending:
            self._socket._schedule_ack(self, now)

    def _call_reader(self) -> None:
        reader = self._reader
        if reader is None or self._in_reader:
            return
        self._in_reader = True
        try:
            reader()
        finally:
            self._in_reader = False

    def _abort(self) -> None:
        if not self.core.closed:
            self.core.destroy()
            self._flush(trio.current_time(), ack_now=True)
        self._local_closed = True
        self._wake()
        self._call_reader()

    def _broken(self) -> trio.BrokenResourceError:
        err = self.core.error
        exc = trio.BrokenResourceError(str(err) if err else "stream closed by the peer")
        exc.__cause__ = err
        return exc

    def _check_send(self) -> None:
        if self._local_closed:
            raise trio.ClosedResourceError("stream is closed")
        if self.core.closed:
            raise self._broken()

    # ---------------------------------------------------------------- trio.abc.SendStream

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._sending = True
        try:
            # Put the data on the wire before yielding: the peer starts on it while we wait.
            await trio.lowlevel.checkpoint_if_cancelled()
            self._check_send()
            if self.core.eof_sent:
                raise trio.ClosedResourceError("send_all after send_eof")
            if data:
                self.core.write(data)
                self._after_write(trio.current_time())
            await trio.lowlevel.cancel_shielded_checkpoint()
            await self._wait_writable()
        finally:
            self._sending = False

    async def _wait_writable(self) -> None:
        while True:
            self._check_send()
            if self.core.buffered_amount <= HIGH_WATER_MARK:
                return
            await self._changed.park()

    async def wait_send_all_might_not_block(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint()
            await self._wait_writable()
        finally:
            self._sending = False

    async def send_eof(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        await trio.lowlevel.checkpoint()
        if self._local_closed:
            raise trio.ClosedResourceError("stream is closed")
        if self.core.closed:
            return
        self.core.write_end()
        self._after_input(trio.current_time())

    def can_send_nowait(self) -> bool:
        """:meth:`send_nowait` would take a write now: no task is sending and the send buffer
        is at or below :data:`HIGH_WATER_MARK`."""
        return not self._sending and self.core.buffered_amount <= HIGH_WATER_MARK

    def send_nowait(self, data: bytes) -> None:
        """Write ``data`` and put it on the wire without yielding. Raises
        :class:`trio.WouldBlock` unless :meth:`can_send_nowait`, otherwise like
        :meth:`send_all`."""
        self._check_send()
        if self.core.eof_sent:
            raise trio.ClosedResourceError("send after send_eof")
        if not self.can_send_nowait():
            raise trio.WouldBlock
        if data:
            self.core.write(data)
            self._after_write(trio.current_time())

    # ---------------------------------------------------------------- trio.abc.ReceiveStream

    def set_reader(self, reader: Callable[[], None] | None) -> None:
        """Install a synchronous callback that runs on the socket's receive path whenever
        bytes, EOF or an error are ready, so that the consumer reads them with
        :meth:`receive_nowait` without a task switch. While one is installed, ``receive_some``
        raises ``BusyResourceError``. The callback must not raise."""
        if reader is not None and self._receiving:
            raise trio.BusyResourceError("another task is receiving on this stream")
        self._reader = reader
        self._receiving = reader is not None

    def receive_nowait(self, max_bytes: int = 65536) -> bytes | None:
        """Buffered bytes, ``b""`` at EOF, or None when nothing is ready; never yields.
        Raises like :meth:`receive_some`."""
        if self._local_closed:
            raise trio.ClosedResourceError("stream is closed")
        core = self.core
        if core.readable_bytes:
            shrunk = core.window_shrunk
            data = core.read(max_bytes)
            if shrunk and core.ack_pending:  # a reopened window is announced at once
                self._flush(trio.current_time())
            return data
        if core.eof_received or (core.closed and core.error is None):
            return b""
        if core.closed:
            raise self._broken()
        return None

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None:
            if not isinstance(max_bytes, int) or isinstance(max_bytes, bool):
                raise TypeError("max_bytes must be an integer or None")
            if max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this stream")
        self._receiving = True
        try:
            # One checkpoint either way: the wait below, or an explicit one when data is ready.
            await trio.lowlevel.checkpoint_if_cancelled()
            waited = False
            while True:
                if self._local_closed:
                    raise trio.ClosedResourceError("stream is closed")
                if self.core.readable_bytes:
                    data = self.core.read(max_bytes or 65536)
                    self._after_input(trio.current_time())  # may reopen the window
                    break
                if self.core.eof_received or (self.core.closed and self.core.error is None):
                    data = b""
                    break
                if self.core.closed:
                    raise self._broken()
                await self._changed.park()
                waited = True
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return data
        finally:
            self._receiving = False

    # ---------------------------------------------------------------- messages

    def send_message(self, data: bytes) -> None:
        """Send one unreliable datagram on this stream (UDX MESSAGE)."""
        self._check_send()
        if len(data) > MAX_DATAGRAM - 20:
            raise ValueError("message too large for one datagram")
        self.core.send_message(bytes(data))
        self._after_input(trio.current_time())

    async def receive_message(self) -> bytes:
        while not self._messages:
            if self._local_closed:
                raise trio.ClosedResourceError("stream is closed")
            if self.core.closed:
                raise self._broken() if self.core.error else trio.EndOfChannel()
            await self._changed.park()
        await trio.lowlevel.checkpoint()
        return self._messages.popleft()

    # ---------------------------------------------------------------- closing

    def destroy(self) -> None:
        """Abort now: send DESTROY, drop anything unsent, close locally."""
        self._abort()

    async def aclose(self) -> None:
        """Graceful close: flush data and END, wait for their ACK, then leave.

        If the peer has not ended its side by then, the stream is destroyed (DESTROY), which is
        how the peer learns that nobody reads any more. Cancellation destroys at once.
        """
        if self._local_closed:
            await trio.lowlevel.checkpoint()
            return
        try:
            if not self.core.closed and self.core.connected:
                self.core.write_end()
                self._after_input(trio.current_time())
                while not (self.core.closed or self.core.end_acked):
                    await self._changed.park()
            await trio.lowlevel.checkpoint()
        finally:
            self._abort()
            self._wake()


def stream_error_types() -> tuple[type[StreamError], ...]:
    """The causes a :class:`trio.BrokenResourceError` from a stream may chain."""
    return (StreamReset, StreamTimeout)
