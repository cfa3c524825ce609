"""Sans-IO UDX stream: reliability, ordering, windows and timers, with time passed in.

Theory of operation
-------------------
A :class:`StreamCore` is fed packets (``receive(packet, now)``), application writes
(``write``, ``write_end``, ``send_message``, ``destroy``) and timer ticks (``handle_timer(now)``).
It produces datagrams (``datagrams_to_send(now)``), a deadline (``timer()``) and events
(``next_event()``). It never reads a clock or touches a socket.

Sequence numbers count packets (libudx). DATA, END and DESTROY consume a seq; ACK, SACK,
MESSAGE and HEARTBEAT carry the next seq without consuming it. Every received DATA/END is
acknowledged at once (with SACK blocks while anything is out of order) and HEARTBEATs are
answered, as libudx does.

Sending: writes are cut into packets of at most :data:`MAX_PAYLOAD` bytes. In-flight packets are
limited by a congestion window (slow start / additive increase, halved on loss) and by the peer's
advertised receive window. Loss is detected from SACK blocks (a packet with at least
:data:`REORDER_THRESHOLD` later packets SACKed and older than ``srtt/4`` since its last send) and
by the retransmission timer (RFC 6298 RTO, minimum 1 s, maximum 30 s). After
:data:`MAX_RTO_TIMEOUTS` consecutive timeouts without progress the stream fails with
:class:`StreamTimeout`, mirroring libudx's ``UDX_MAX_RTO_TIMEOUTS``.

Receiving: in-order data is appended to a bounded receive buffer; out-of-order packets wait in a
reorder buffer bounded by :data:`MAX_REORDER`. The advertised window is
:data:`RWND_MAX` minus the bytes not yet read, so a slow reader pushes back on the sender.

Closing: ``write_end`` queues END after the data (half-close). EOF is reported when the peer's
END is delivered in order; reliable packets after it are acknowledged and dropped. When both
ENDs are acknowledged the stream is finished. ``destroy`` sends one DESTROY packet and closes the
stream locally; a DESTROY from the peer whose seq is not behind our ack resets the stream.

Lifecycle (:attr:`StreamCore.state`; :data:`TRANSITIONS` is the full table, checked by tests)::

    UNCONNECTED --connect--> OPEN --write_end--> LOCAL_ENDED --peer END--> ENDING/CLOSED
                              |  --peer END----> REMOTE_ENDED --write_end--> ENDING
    ENDING --our END acked--> CLOSED        any live state --destroy--> DESTROYED
    any live state --peer DESTROY--> RESET  any state with data in flight --silence--> TIMED_OUT
    any connected live state --port unreachable--> RESET (the peer's process is gone)
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass
from enum import Enum

from ..errors import TransportError
from .packet import (
    DATA,
    DESTROY,
    END,
    HEADER_SIZE,
    HEARTBEAT,
    MAGIC,
    MAX_PAYLOAD,
    MAX_SACKS,
    MESSAGE,
    VERSION,
    Packet,
    PacketError,
    seq_diff,
)

_HEADER = struct.Struct("<BBBBIIII")  # as in .packet: the 20-byte header

__all__ = [
    "TRANSITIONS",
    "Closed",
    "EndReceived",
    "MessageReceived",
    "Readable",
    "State",
    "StreamCore",
    "StreamError",
    "StreamReset",
    "StreamTimeout",
    "StreamUnreachable",
    "Writable",
]

#: Receive window advertised when nothing is buffered (libudx ``UDX_DEFAULT_RWND_MAX``).
RWND_MAX = 4 * 1024 * 1024
#: Out-of-order packets kept at most; about RWND_MAX worth of full packets.
MAX_REORDER = 4096
#: Unread bytes kept at most. A peer that respects our window stays under RWND_MAX (plus one
#: packet); data beyond this bound is dropped unacknowledged, so the peer retransmits it later.
MAX_RECV_BUFFER = 2 * RWND_MAX
INITIAL_CWND = 10
#: Upper bound on the congestion window in packets (keeps bursts into the OS buffer sane).
MAX_CWND = 2048
RTO_MIN = 1.0
RTO_MAX = 30.0
RTO_INITIAL = 1.0
MAX_RTO_TIMEOUTS = 6
#: A packet counts as lost once this many later packets have been SACKed.
REORDER_THRESHOLD = 3
#: How long a cleanly closed stream keeps answering retransmitted packets with ACKs, so that a
#: peer whose final ACK was lost does not time out. Two maximum RTOs.
LINGER = 2 * 30.0


class State(Enum):
    UNCONNECTED = "unconnected"  # registered; accepts packets, sends nothing yet
    OPEN = "open"
    LOCAL_ENDED = "local-ended"  # our END queued; the peer may still send
    REMOTE_ENDED = "remote-ended"  # the peer's END delivered; we may still send
    ENDING = "ending"  # both ENDs queued or delivered; waiting for the ACK of ours
    CLOSED = "closed"  # clean close; lingers to repeat final ACKs
    DESTROYED = "destroyed"  # closed by this side's destroy()
    RESET = "reset"  # closed by the peer's DESTROY
    TIMED_OUT = "timed-out"  # the peer stopped acknowledging


#: Expected next state for (state, input). Inputs: ``data``/``end``/``destroy_pkt``/``message``/
#: ``heartbeat``/``ack`` are in-window packets from the peer, ``write``/``write_end``/``destroy``
#: are application calls, ``silence`` runs the timers until they stop with no reply,
#: ``unreachable`` is the network reporting the peer's port closed. A ``write`` after END or
#: close raises ``RuntimeError`` and leaves the state unchanged.
_LIVE_INPUTS = ("data", "message", "heartbeat", "ack", "write")
_CONNECTED = (State.OPEN, State.LOCAL_ENDED, State.REMOTE_ENDED, State.ENDING)
TRANSITIONS: dict[tuple[State, str], State] = {
    **{(State.UNCONNECTED, i): State.UNCONNECTED for i in (*_LIVE_INPUTS, "end", "write_end",
                                                           "silence", "unreachable")},
    **{(live, "unreachable"): State.RESET for live in _CONNECTED},
    (State.UNCONNECTED, "destroy_pkt"): State.RESET,
    (State.UNCONNECTED, "destroy"): State.DESTROYED,
    **{(State.OPEN, i): State.OPEN for i in (*_LIVE_INPUTS, "silence")},
    (State.OPEN, "end"): State.REMOTE_ENDED,
    (State.OPEN, "write_end"): State.LOCAL_ENDED,
    (State.OPEN, "destroy_pkt"): State.RESET,
    (State.OPEN, "destroy"): State.DESTROYED,
    **{(State.LOCAL_ENDED, i): State.LOCAL_ENDED for i in (*_LIVE_INPUTS, "write_end",
                                                           "silence")},
    (State.LOCAL_ENDED, "end"): State.CLOSED,  # our END was already acknowledged
    (State.LOCAL_ENDED, "destroy_pkt"): State.RESET,
    (State.LOCAL_ENDED, "destroy"): State.DESTROYED,
    **{(State.REMOTE_ENDED, i): State.REMOTE_ENDED for i in (*_LIVE_INPUTS, "end", "silence")},
    (State.REMOTE_ENDED, "write_end"): State.ENDING,
    (State.REMOTE_ENDED, "destroy_pkt"): State.RESET,
    (State.REMOTE_ENDED, "destroy"): State.DESTROYED,
    **{(State.ENDING, i): State.ENDING for i in ("data", "end", "message", "heartbeat", "write",
                                                 "write_end")},
    (State.ENDING, "ack"): State.CLOSED,
    (State.ENDING, "silence"): State.TIMED_OUT,
    (State.ENDING, "destroy_pkt"): State.RESET,
    (State.ENDING, "destroy"): State.DESTROYED,
    **{(closed, i): closed
       for closed in (State.CLOSED, State.DESTROYED, State.RESET, State.TIMED_OUT)
       for i in (*_LIVE_INPUTS, "end", "destroy_pkt", "write_end", "destroy", "silence",
                 "unreachable")},
}


class StreamError(TransportError):
    """Base class for a stream that failed; the stream is unusable afterwards."""


class StreamReset(StreamError):
    """The peer destroyed the stream (ECONNRESET)."""


class StreamTimeout(StreamError):
    """The peer stopped acknowledging data (ETIMEDOUT)."""


class StreamUnreachable(StreamReset):
    """The network reported the peer's port closed (ICMP port unreachable, ECONNREFUSED):
    the process behind the stream is gone."""


@dataclass(frozen=True, slots=True)
class Readable:
    """New in-order bytes can be read with :meth:`StreamCore.read`."""


@dataclass(frozen=True, slots=True)
class EndReceived:
    """The peer's END arrived in order: no more bytes will come."""


@dataclass(frozen=True, slots=True)
class MessageReceived:
    data: bytes


@dataclass(frozen=True, slots=True)
class Writable:
    """Acknowledgements freed send buffer space."""


@dataclass(frozen=True, slots=True)
class Closed:
    """The stream finished; ``error`` is None for a clean close (both ENDs acknowledged)."""

    error: StreamError | None


Event = Readable | EndReceived | MessageReceived | Writable | Closed

# Events without data are immutable: one instance each, queued at most once in a row.
_READABLE = Readable()
_WRITABLE = Writable()
_RELIABLE = DATA | END


@dataclass(slots=True)
class _Sent:
    type: int
    payload: bytes
    sent_at: float = 0.0
    retransmitted: bool = False
    in_pipe: bool = False
    lost: bool = False
    sacked: bool = False


@dataclass(slots=True)
class Stats:
    packets_sent: int = 0
    packets_received: int = 0
    retransmissions: int = 0
    rto_timeouts: int = 0
    fast_retransmissions: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    duplicates: int = 0
    sack_packets_received: int = 0
    heartbeats_received: int = 0


class StreamCore:
    """One UDX stream's protocol state. See the module docstring."""

    def __init__(self, local_id: int) -> None:
        if not 0 <= local_id <= 0xFFFFFFFF:
            raise ValueError("stream id must be a uint32")
        self.local_id = local_id
        self.remote_id: int | None = None
        self.stats = Stats()
        self._events: deque[Event] = deque()
        # send side
        self._seq = 0  # next seq to assign
        self._remote_acked = 0  # oldest unacknowledged seq
        self._inflight: dict[int, _Sent] = {}
        self._lost = 0  # in-flight packets marked lost (waiting for retransmission)
        self._inflight_bytes = 0
        self._pipe = 0
        self._pending = bytearray()  # written, not yet packetized
        self._end_queued = False
        self._end_seq: int | None = None
        self._end_acked = False
        self._remote_rwnd = RWND_MAX
        self._cwnd = float(INITIAL_CWND)
        self._ssthresh = float(MAX_CWND)
        self._recovery_until: int | None = None  # seq marking the end of a loss episode
        self._highest_sacked: int | None = None
        self._srtt: float | None = None
        self._rttvar = 0.0
        self._rto = RTO_INITIAL
        self._rto_deadline: float | None = None
        self._rto_count = 0
        self._outbox: deque[bytes] = deque()  # MESSAGE / DESTROY / HEARTBEAT already built
        self._zwp_deadline: float | None = None
        # receive side
        self._ack = 0  # next seq expected
        self._reorder: dict[int, tuple[int, bytes]] = {}
        self._recv = bytearray()
        self._remote_end_seq: int | None = None
        self._eof = False
        self._ack_needed = False
        self._advertised = RWND_MAX
        # lifecycle
        self.closed = False
        self.error: StreamError | None = None
        self.released = False  # closed and done lingering: the id may be forgotten
        self._destroyed = False
        self._linger_deadline: float | None = None

    # ------------------------------------------------------------------ inspection

    @property
    def connected(self) -> bool:
        return self.remote_id is not None

    @property
    def state(self) -> State:
        if self.closed:
            if isinstance(self.error, StreamReset):
                return State.RESET
            if isinstance(self.error, StreamTimeout):
                return State.TIMED_OUT
            return State.DESTROYED if self._destroyed else State.CLOSED
        if self.remote_id is None:
            return State.UNCONNECTED
        if self._end_queued and self._eof:
            return State.ENDING
        if self._end_queued:
            return State.LOCAL_ENDED
        if self._eof:
            return State.REMOTE_ENDED
        return State.OPEN

    @property
    def eof_sent(self) -> bool:
        return self._end_queued

    @property
    def eof_received(self) -> bool:
        return self._eof

    @property
    def readable_bytes(self) -> int:
        return len(self._recv)

    @property
    def buffered_amount(self) -> int:
        """Bytes written but not yet acknowledged by the peer."""
        return len(self._pending) + self._inflight_bytes

    @property
    def unacked_packets(self) -> int:
        return len(self._inflight)

    @property
    def end_acked(self) -> bool:
        return self._end_acked

    @property
    def rto(self) -> float:
        return self._rto

    @property
    def has_events(self) -> bool:
        return bool(self._events)

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def _event_once(self, event: Event) -> None:
        events = self._events
        if not events or events[-1] is not event:
            events.append(event)

    # ------------------------------------------------------------------ application input

    def connect(self, remote_id: int) -> None:
        """Learn the peer's stream id. Packets that arrived earlier get their deferred ACK."""
        if not 0 <= remote_id <= 0xFFFFFFFF:
            raise ValueError("stream id must be a uint32")
        self.remote_id = remote_id

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._end_queued or self.closed:
            raise RuntimeError("write after end or close")
        self._pending += data

    def write_end(self) -> None:
        if not self._end_queued and not self.closed:
            self._end_queued = True

    def send_message(self, data: bytes) -> None:
        """Queue one unreliable datagram (MESSAGE); dropped silently before connect."""
        if self.closed:
            raise RuntimeError("send on a closed stream")
        if self.remote_id is None:
            return
        pkt = Packet(MESSAGE, self.remote_id, self._advertise(), self._seq, self._ack, data)
        self._outbox.append(pkt.encode())

    def read(self, max_bytes: int) -> bytes:
        out = bytes(self._recv[:max_bytes])
        del self._recv[:max_bytes]
        # reopen a window we had shrunk noticeably
        if self._advertised < RWND_MAX // 2 and RWND_MAX - len(self._recv) >= RWND_MAX // 2:
            self._ack_needed = True
        return out

    def unreachable(self) -> None:
        """The network reported the peer's port closed: fail now with
        :class:`StreamUnreachable` rather than after :data:`MAX_RTO_TIMEOUTS` timeouts (a
        killed process answers nothing; its host answers for it)."""
        if self.closed or self.remote_id is None:
            return
        self._close(StreamUnreachable("the peer's port is closed (ICMP port unreachable)"))

    def destroy(self) -> None:
        """Abort: send one DESTROY (if connected) and close with no error locally."""
        if self.closed:
            return
        if self.remote_id is not None:
            pkt = Packet(DESTROY, self.remote_id, self._advertise(), self._seq, self._ack)
            self._outbox.append(pkt.encode())
            self._seq = (self._seq + 1) & 0xFFFFFFFF
        self._destroyed = True
        self._close(None)

    # ------------------------------------------------------------------ network input

    def receive_datagram(self, data: bytes, now: float) -> None:
        """``receive(Packet.decode(data), now)``, with the two common packets handled inline:
        an ACK and an in-order DATA packet without SACK blocks (the bulk of every transfer
        and of every request/response). Raises :class:`PacketError` like ``Packet.decode``."""
        if len(data) < HEADER_SIZE:
            raise PacketError("not a UDX packet (bad length, magic or version)")
        magic, version, kind, data_offset, _, rwnd, seq, ack = _HEADER.unpack_from(data)
        if (kind & ~_RELIABLE or data_offset or self.closed or magic != MAGIC
                or version != VERSION):
            self.receive(Packet.decode(data), now)  # SACK, MESSAGE, DESTROY, HEARTBEAT, ...
            return
        self.stats.packets_received += 1
        self._remote_rwnd = rwnd
        if ack != self._remote_acked:
            self._acknowledge(ack, (), now)
            if self.closed:
                return
        elif rwnd > 0:
            self._zwp_deadline = None
        if not kind:
            return
        n = len(data) - HEADER_SIZE
        recv = self._recv
        if (kind == DATA and seq == self._ack and not self._reorder and not self._eof
                and len(recv) + n <= MAX_RECV_BUFFER):
            # in order, nothing waiting behind it: straight into the receive buffer
            self._ack_needed = True
            recv += memoryview(data)[HEADER_SIZE:]
            self.stats.bytes_received += n
            self._ack = (seq + 1) & 0xFFFFFFFF
            if n:
                self._event_once(_READABLE)
            return
        self._on_reliable(Packet(kind, self.local_id, rwnd, seq, ack, data[HEADER_SIZE:]))

    def receive(self, pkt: Packet, now: float) -> None:
        if self.closed:
            if self.state is State.CLOSED and pkt.type & (DATA | END):
                self._outbox.append(self._ack_packet())  # lingering: repeat the final ACK
            return
        self.stats.packets_received += 1
        if pkt.type & HEARTBEAT:
            self.stats.heartbeats_received += 1
            self._ack_needed = True
        self._on_ack(pkt, now)
        if self.closed:
            return
        if pkt.type & MESSAGE:
            self._events.append(MessageReceived(pkt.payload))
        if pkt.type & (DATA | END | DESTROY):
            self._on_reliable(pkt)

    def _on_reliable(self, pkt: Packet) -> None:
        d = seq_diff(pkt.seq, self._ack)
        if d < 0:
            # already delivered: the ACK was lost, repeat it
            self.stats.duplicates += 1
            self._ack_needed = True
            return
        if pkt.type & DESTROY:
            self._close(StreamReset("stream destroyed by the peer"))
            return
        self._ack_needed = True
        if self._eof:
            return  # nothing may follow the peer's END
        if d >= MAX_REORDER:
            return  # too far ahead; the sender will retransmit
        if len(self._recv) + len(pkt.payload) > MAX_RECV_BUFFER:
            return  # the peer ignores our window; it will retransmit once we have room
        if pkt.seq in self._reorder:
            self.stats.duplicates += 1
            return
        self._reorder[pkt.seq] = (pkt.type, pkt.payload)
        delivered = False
        while self._ack in self._reorder:
            kind, payload = self._reorder.pop(self._ack)
            if payload:
                self._recv += payload
                self.stats.bytes_received += len(payload)
                delivered = True
            if kind & END:
                self._remote_end_seq = self._ack
            self._ack = (self._ack + 1) & 0xFFFFFFFF
        if delivered:
            self._event_once(_READABLE)
        if self._remote_end_seq is not None and not self._eof:
            self._eof = True
            self._reorder.clear()
            self._events.append(EndReceived())
            self._maybe_finished()

    def _on_ack(self, pkt: Packet, now: float) -> None:
        # the peer's window comes with every packet
        self._remote_rwnd = pkt.rwnd
        self._acknowledge(pkt.ack, pkt.sacks, now)

    def _acknowledge(self, ack: int, sacks: tuple[tuple[int, int], ...], now: float) -> None:
        if seq_diff(ack, self._seq) > 0:
            return  # acks something we never sent; ignore
        progressed = self._take_cumulative_ack(ack, now)
        if sacks:
            self.stats.sack_packets_received += 1
            progressed = self._take_sacks(sacks) or progressed
        if progressed:
            self._rto_count = 0
            self._rto_deadline = now + self._rto if self._inflight else None
            self._event_once(_WRITABLE)
        if sacks:
            self._detect_loss(now)
        if self._end_seq is not None and not self._end_acked and seq_diff(ack, self._end_seq) > 0:
            self._end_acked = True
            self._maybe_finished()
        if self._remote_rwnd > 0:
            self._zwp_deadline = None

    def _take_cumulative_ack(self, ack: int, now: float) -> bool:
        """Retire every packet below ``ack``; whether any was still in flight."""
        progressed = False
        acked = self._remote_acked
        inflight = self._inflight
        for _ in range(max(0, seq_diff(ack, acked))):  # at most the packets in flight
            sent = inflight.pop(acked, None)
            if sent is not None:
                if sent.lost:
                    self._lost -= 1
                self._inflight_bytes -= len(sent.payload)
                self._acked_one(sent, now)
                progressed = True
            acked = (acked + 1) & 0xFFFFFFFF
        self._remote_acked = acked
        return progressed

    def _take_sacks(self, sacks: tuple[tuple[int, int], ...]) -> bool:
        """Mark the selectively acknowledged ranges; whether any packet was newly sacked."""
        progressed = False
        for start, end in sacks:
            if seq_diff(start, self._remote_acked) < 0 or seq_diff(end, self._seq) > 0:
                continue
            if seq_diff(end, start) <= 0 or seq_diff(end, start) > MAX_REORDER:
                continue
            s = start
            while s != end:
                sent = self._inflight.get(s)
                if sent is not None and not sent.sacked:
                    sent.sacked = True
                    if sent.in_pipe:
                        sent.in_pipe = False
                        self._pipe -= 1
                    self._grow_cwnd()
                    progressed = True
                s = (s + 1) & 0xFFFFFFFF
            last = (end - 1) & 0xFFFFFFFF
            if self._highest_sacked is None or seq_diff(last, self._highest_sacked) > 0:
                self._highest_sacked = last
        return progressed

    def _acked_one(self, sent: _Sent, now: float) -> None:
        if sent.in_pipe:
            self._pipe -= 1
        if not sent.retransmitted:
            self._rtt_sample(now - sent.sent_at)
        if not sent.sacked:
            self._grow_cwnd()

    def _grow_cwnd(self) -> None:
        if self._cwnd < self._ssthresh:
            self._cwnd += 1
        else:
            self._cwnd += 1 / self._cwnd
        self._cwnd = min(self._cwnd, MAX_CWND)

    def _rtt_sample(self, r: float) -> None:
        r = max(r, 0.0)
        if self._srtt is None:
            self._srtt = r
            self._rttvar = r / 2
        else:
            self._rttvar = (3 * self._rttvar + abs(self._srtt - r)) / 4
            self._srtt = (7 * self._srtt + r) / 8
        self._rto = min(max(self._srtt + 4 * self._rttvar, RTO_MIN), RTO_MAX)

    def _detect_loss(self, now: float) -> None:
        if self._highest_sacked is None:
            return
        window = (self._srtt or 0.0) / 4
        limit = seq_diff(self._highest_sacked, self._remote_acked) - REORDER_THRESHOLD
        marked = False
        s = self._remote_acked
        for _ in range(max(0, limit + 1)):
            sent = self._inflight.get(s)
            if (sent is not None and not sent.sacked and not sent.lost
                    and now - sent.sent_at >= window):
                self._mark_lost(sent)
                self.stats.fast_retransmissions += 1
                marked = True
            s = (s + 1) & 0xFFFFFFFF
        if marked and (self._recovery_until is None
                       or seq_diff(self._remote_acked, self._recovery_until) >= 0):
            # one multiplicative decrease per loss episode
            self._ssthresh = max(self._cwnd / 2, 2.0)
            self._cwnd = self._ssthresh
            self._recovery_until = self._seq

    def _mark_lost(self, sent: _Sent) -> None:
        sent.lost = True
        self._lost += 1
        if sent.in_pipe:
            sent.in_pipe = False
            self._pipe -= 1

    # ------------------------------------------------------------------ timers

    def timer(self) -> float | None:
        """The next deadline at which :meth:`handle_timer` must run, if any."""
        if self.closed:
            return None if self.released else self._linger_deadline
        rto, zwp = self._rto_deadline, self._zwp_deadline
        if rto is None:
            return zwp
        return rto if zwp is None or rto <= zwp else zwp

    def handle_timer(self, now: float) -> None:
        if self.closed:
            if self._linger_deadline is None or now >= self._linger_deadline:
                self.released = True
            return
        if self._rto_deadline is not None and now >= self._rto_deadline:
            self._on_rto(now)
        zwp = self._zwp_deadline
        if zwp is not None and now >= zwp and self.remote_id is not None:
            pkt = Packet(HEARTBEAT, self.remote_id, self._advertise(), self._seq, self._ack)
            self._outbox.append(pkt.encode())
            self._zwp_deadline = now + 2 * self._rto

    def _on_rto(self, now: float) -> None:
        if not self._inflight:
            self._rto_deadline = None
            return
        self._rto_count += 1
        self.stats.rto_timeouts += 1
        if self._rto_count >= MAX_RTO_TIMEOUTS:
            self._close(StreamTimeout("peer stopped acknowledging data"))
            return
        for sent in self._inflight.values():
            if not sent.sacked and not sent.lost:
                self._mark_lost(sent)
        self._ssthresh = max(self._cwnd / 2, 2.0)
        self._cwnd = float(INITIAL_CWND)
        self._recovery_until = self._seq
        self._rto_deadline = now + 2 * self._rto

    # ------------------------------------------------------------------ output

    def _advertise(self) -> int:
        self._advertised = max(0, RWND_MAX - len(self._recv))
        return self._advertised

    def _header(self, kind: int, seq: int, payload: bytes = b"") -> bytes:
        """A DATA/END packet (never SACK or padding: same bytes as :meth:`Packet.encode`)."""
        assert self.remote_id is not None
        return _HEADER.pack(MAGIC, VERSION, kind, 0, self.remote_id, self._advertise(), seq,
                            self._ack) + payload

    def _window_open(self, size: int) -> bool:
        if self._pipe >= int(self._cwnd):
            return False
        inflight_bytes = self._pipe * MAX_PAYLOAD
        if inflight_bytes + size <= self._remote_rwnd:
            return True
        return self._pipe == 0 and self._remote_rwnd > 0

    @property
    def window_shrunk(self) -> bool:
        """The last advertised receive window was under half of :data:`RWND_MAX`, so reading
        may reopen it (see :meth:`read`)."""
        return self._advertised < RWND_MAX // 2

    @property
    def ack_pending(self) -> bool:
        """An acknowledgement is owed and has not gone out with data yet."""
        return self._ack_needed and not self.closed and self.remote_id is not None

    def datagrams_to_send(self, now: float, *, ack_now: bool = True) -> list[bytes]:
        """Everything that should go on the wire now, in order.

        Every data packet carries the cumulative ACK. With ``ack_now=False`` a pure ACK that no
        data packet could carry stays pending (see :attr:`ack_pending`), so that an adapter can
        give the application a moment to reply and piggyback it.
        """
        if not (self._outbox or self._pending or self._lost or self._end_queued or self.closed
                or (ack_now and self._ack_needed)) and self.remote_id is not None:
            return []  # nothing to send (the common case on the receive path)
        out: list[bytes] = list(self._outbox)
        self._outbox.clear()
        if self.closed:
            if self._linger_deadline is None:
                if self.state is State.CLOSED:
                    self._linger_deadline = now + LINGER
                else:
                    self.released = True
            return out
        if self.remote_id is None:
            return out
        sent_data = self._retransmit(out, now) if self._lost else False
        if self._pending or (self._end_queued and self._end_seq is None):
            sent_data = self._send_new_data(out, now) or sent_data
        if self._ack_needed:
            if sent_data and not self._reorder:
                self._ack_needed = False  # the data packets carried it
            elif ack_now:
                self._ack_needed = False
                out.append(self._ack_packet())
        self.stats.packets_sent += len(out)
        return out

    def _retransmit(self, out: list[bytes], now: float) -> bool:
        """Append the packets marked lost that the window lets go again; whether any went."""
        sent_data = False
        for seq, sent in self._inflight.items():
            if not sent.lost:
                continue
            if not self._window_open(len(sent.payload)):
                break
            sent.lost = False
            self._lost -= 1
            sent.retransmitted = True
            sent.in_pipe = True
            sent.sent_at = now
            self._pipe += 1
            self.stats.retransmissions += 1
            sent_data = True
            out.append(self._header(sent.type, seq, sent.payload))
        return sent_data

    def _send_new_data(self, out: list[bytes], now: float) -> bool:
        """Append new data packets (and END) while the window is open; whether any went."""
        assert self.remote_id is not None
        sent_data = False
        pending = self._pending
        # the header fields other than kind and seq are the same for every packet
        pack, remote_id, rwnd, ack = _HEADER.pack, self.remote_id, self._advertise(), self._ack
        inflight = self._inflight
        while pending or (self._end_queued and self._end_seq is None):
            size = min(len(pending), MAX_PAYLOAD)
            if not self._window_open(size):
                if self._remote_rwnd == 0 and self._pipe == 0 and self._zwp_deadline is None:
                    self._zwp_deadline = now + self._rto
                break
            if size == len(pending):  # the rest: no slice to cut off
                payload = bytes(pending)
                pending.clear()
            else:
                payload = bytes(pending[:size])
                del pending[:size]
            kind = DATA if payload else 0
            if not pending and self._end_queued:
                kind |= END
                self._end_seq = self._seq
            seq = self._seq
            self._seq = (seq + 1) & 0xFFFFFFFF
            inflight[seq] = _Sent(kind, payload, now, in_pipe=True)
            self._inflight_bytes += size
            self._pipe += 1
            self.stats.bytes_sent += size
            sent_data = True
            out.append(pack(MAGIC, VERSION, kind, 0, remote_id, rwnd, seq, ack) + payload)
            if self._rto_deadline is None:
                self._rto_deadline = now + self._rto
        return sent_data

    def _ack_packet(self) -> bytes:
        assert self.remote_id is not None
        sacks: tuple[tuple[int, int], ...] = ()
        if self._reorder:
            sacks = self._sack_blocks()
        return Packet(0, self.remote_id, self._advertise(), self._seq, self._ack,
                      sacks=sacks).encode()

    def _sack_blocks(self) -> tuple[tuple[int, int], ...]:
        offsets = sorted(seq_diff(s, self._ack) for s in self._reorder)
        blocks: list[tuple[int, int]] = []
        start = prev = offsets[0]
        for off in offsets[1:]:
            if off != prev + 1:
                blocks.append((start, prev + 1))
                if len(blocks) == MAX_SACKS:
                    break
                start = off
            prev = off
        else:
            blocks.append((start, prev + 1))
        base = self._ack
        return tuple(((base + s) & 0xFFFFFFFF, (base + e) & 0xFFFFFFFF)
                     for s, e in blocks[:MAX_SACKS])

    # ------------------------------------------------------------------ lifecycle

    def _maybe_finished(self) -> None:
        if self._eof and self._end_acked and not self.closed:
            # the peer needs the final ACK of its END before we go
            if self._ack_needed and self.remote_id is not None:
                self._ack_needed = False
                self._outbox.append(self._ack_packet())
            self._close(None)

    def _close(self, error: StreamError | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.error = error
        self._rto_deadline = None
        self._zwp_deadline = None
        self._pending.clear()
        self._inflight.clear()
        self._lost = 0
        self._inflight_bytes = 0
        self._pipe = 0
        self._events.append(Closed(error))
