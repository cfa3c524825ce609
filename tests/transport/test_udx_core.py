"""UDX packet codec and the sans-IO stream core, with no sockets and no clock."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2p_transport.udx.core import (
    TRANSITIONS,
    Closed,
    EndReceived,
    State,
    StreamCore,
    StreamReset,
)
from p2p_transport.udx.packet import (
    DATA,
    DESTROY,
    END,
    HEARTBEAT,
    MESSAGE,
    SACK,
    Packet,
    PacketError,
    seq_diff,
)


def test_header_layout_matches_libudx() -> None:
    p = Packet(DATA, 0x01020304, 4194304, 7, 9, b"hi")
    raw = p.encode()
    assert raw[:4] == bytes([0xFF, 0x01, DATA, 0])
    assert struct.unpack_from("<IIII", raw, 4) == (0x01020304, 4194304, 7, 9)
    assert raw[20:] == b"hi"
    assert Packet.decode(raw) == p


def test_sack_blocks_and_data_offset() -> None:
    p = Packet(0, 1, 2, 3, 4, sacks=((5, 6), (8, 10)))
    raw = p.encode()
    assert raw[2] == SACK and len(raw) == 36
    d = Packet.decode(raw)
    assert d.sacks == ((5, 6), (8, 10)) and d.payload == b""
    # a probe pads the payload with data_offset zero bytes, which the receiver skips
    probe = bytes([0xFF, 1, DATA, 3]) + struct.pack("<IIII", 1, 0, 0, 0) + b"\0\0\0abc"
    assert Packet.decode(probe).payload == b"abc"


def test_seq_diff_wraps() -> None:
    assert seq_diff(0, 0xFFFFFFFF) == 1
    assert seq_diff(0xFFFFFFFF, 0) == -1
    assert seq_diff(5, 3) == 2


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=120))
def test_fuzz_packet_decode(data: bytes) -> None:
    for end in range(len(data) + 1):
        with contextlib.suppress(PacketError):
            Packet.decode(data[:end])


def _pair() -> tuple[StreamCore, StreamCore]:
    a, b = StreamCore(1), StreamCore(2)
    a.connect(2)
    b.connect(1)
    return a, b


def _deliver(src: StreamCore, dst: StreamCore, now: float) -> int:
    n = 0
    for d in src.datagrams_to_send(now):
        dst.receive(Packet.decode(d), now)
        n += 1
    return n


def _events(core: StreamCore) -> list[object]:
    out: list[object] = []
    while (ev := core.next_event()) is not None:
        out.append(ev)
    return out


def test_in_order_delivery_and_acks() -> None:
    a, b = _pair()
    a.write(b"x" * 3000)
    sent = a.datagrams_to_send(0.0)
    assert [len(d) - 20 for d in sent] == [1152, 1152, 696]
    for d in sent:
        b.receive(Packet.decode(d), 0.01)
    assert b.read(10_000) == b"x" * 3000
    acks = b.datagrams_to_send(0.01)
    assert len(acks) == 1  # acknowledgements coalesce within one batch
    a.receive(Packet.decode(acks[0]), 0.02)
    assert a.unacked_packets == 0


def test_out_of_order_produces_sack_blocks_like_node() -> None:
    a, b = _pair()
    a.write(b"y" * 1152 * 5)
    pkts = [Packet.decode(d) for d in a.datagrams_to_send(0.0)]
    blocks = []
    for i in (1, 3, 4):
        b.receive(pkts[i], 0.0)
        blocks.append(Packet.decode(b.datagrams_to_send(0.0)[0]).sacks)
    assert blocks == [((1, 2),), ((1, 2), (3, 4)), ((1, 2), (3, 5))]
    b.receive(pkts[0], 0.0)
    b.receive(pkts[2], 0.0)
    assert b.read(100_000) == b"y" * 1152 * 5


def test_heartbeat_is_answered_with_an_ack() -> None:
    _a, b = _pair()
    b.receive(Packet(HEARTBEAT, 2, 100, 0, 0), 0.0)
    out = [Packet.decode(d) for d in b.datagrams_to_send(0.0)]
    assert len(out) == 1 and out[0].type == 0


def test_end_then_clean_close_on_both_sides() -> None:
    a, b = _pair()
    a.write(b"bye")
    a.write_end()
    b.write_end()
    for t in range(5):
        _deliver(a, b, t)
        _deliver(b, a, t)
    assert b.read(10) == b"bye"
    assert any(isinstance(e, EndReceived) for e in _events(b))
    assert a.closed and b.closed and a.error is None and b.error is None


def test_destroy_with_current_seq_resets_the_peer() -> None:
    a, b = _pair()
    a.destroy()
    raw = a.datagrams_to_send(0.0)
    assert Packet.decode(raw[0]).type == DESTROY
    b.receive(Packet.decode(raw[0]), 0.0)
    assert isinstance(b.error, StreamReset)
    assert any(isinstance(e, Closed) for e in _events(b))


def test_stale_destroy_is_ignored() -> None:
    a, b = _pair()
    a.write(b"z")
    _deliver(a, b, 0.0)
    b.receive(Packet(DESTROY, 2, 0, 0, 0), 0.0)  # seq 0 < ack 1
    assert not b.closed


def test_message_does_not_consume_a_seq() -> None:
    a, _b = _pair()
    a.send_message(b"m")
    a.write(b"d")
    pkts = [Packet.decode(d) for d in a.datagrams_to_send(0.0)]
    assert [(p.type, p.seq) for p in pkts] == [(MESSAGE, 0), (DATA, 0)]


def test_sequence_numbers_wrap_around() -> None:
    a, b = _pair()
    start = 0xFFFFFFFF - 2
    a._seq = a._remote_acked = start
    b._ack = start
    a.write(b"w" * 1152 * 6)
    for t in range(4):
        _deliver(a, b, t)
        _deliver(b, a, t)
    assert b.read(100_000) == b"w" * 1152 * 6
    assert a.unacked_packets == 0


def test_rto_retransmits_then_gives_up() -> None:
    a, _ = _pair()
    a.write(b"q")
    assert len(a.datagrams_to_send(0.0)) == 1
    deadline = a.timer()
    assert deadline == 1.0
    timeouts = 0
    now = 0.0
    while not a.closed:
        deadline = a.timer()
        assert deadline is not None
        now = deadline
        a.handle_timer(now)
        a.datagrams_to_send(now)
        timeouts += 1
    assert timeouts == 6 and now == pytest.approx(11.0)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0, DATA, END, DATA | END, MESSAGE, DESTROY,
                                           HEARTBEAT, SACK]),
                          st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
                          st.binary(max_size=40),
                          st.lists(st.tuples(st.integers(0, 2**32 - 1),
                                             st.integers(0, 2**32 - 1)), max_size=3)),
                max_size=30))
def test_fuzz_core_never_raises(packets: list[tuple[int, int, int, bytes, list[tuple[int, int]]]]
                                ) -> None:
    a, _ = _pair()
    a.write(b"data" * 1000)
    a.datagrams_to_send(0.0)
    for i, (kind, seq, ack, payload, sacks) in enumerate(packets):
        raw = Packet(kind, 1, 1000, seq % 64 if i % 2 else seq, ack % 8 if i % 3 else ack,
                     payload, tuple(sacks)).encode()
        a.receive(Packet.decode(raw), float(i))
        a.datagrams_to_send(float(i))
        a.handle_timer(float(i))
        a.read(1000)


def _core_snapshot(core: StreamCore, now: float) -> tuple[object, ...]:
    events = []
    while (ev := core.next_event()) is not None:  # errors compare by type and text
        events.append((type(ev), type(ev.error), str(ev.error)) if isinstance(ev, Closed)
                      else ev)
    return (core.state, core.readable_bytes, core.buffered_amount, core.ack_pending,
            core.timer(), repr(core.stats), events, core.datagrams_to_send(now, ack_now=False),
            core.read(700))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0, DATA, END, DATA | END, MESSAGE, DESTROY,
                                           HEARTBEAT, DATA | SACK, SACK]),
                          st.integers(0, 12), st.integers(0, 12), st.binary(max_size=40),
                          st.integers(0, 3), st.sampled_from([0, 1000, 1 << 22])),
                max_size=40))
def test_the_inline_receive_path_matches_the_general_one(
    packets: list[tuple[int, int, int, bytes, int, int]]
) -> None:
    """``receive_datagram`` (header read inline, in-order data straight into the buffer) does
    exactly what ``receive(Packet.decode(...))`` does: same datagrams out, same state, same
    bytes, packet by packet."""
    general, _ = _pair()
    inline, _ = _pair()
    for core in (general, inline):
        core.write(b"data" * 3000)
        core.datagrams_to_send(0.0)
    for i, (kind, seq, ack, payload, offset, rwnd) in enumerate(packets):
        now = float(i) / 10
        raw = Packet(kind, 1, rwnd, seq, ack, payload, ((ack, ack + 2),) if kind & SACK else (),
                     0).encode()
        if offset and not kind & SACK:  # a padded packet (data_offset), as an MTU probe is
            raw = raw[:3] + bytes([offset]) + raw[4:20] + bytes(offset) + raw[20:]
        general.receive(Packet.decode(raw), now)
        inline.receive_datagram(raw, now)
        assert _core_snapshot(general, now) == _core_snapshot(inline, now)
        general.handle_timer(now)
        inline.handle_timer(now)


def test_the_inline_receive_path_refuses_a_short_datagram() -> None:
    core, _ = _pair()
    with pytest.raises(PacketError):
        core.receive_datagram(b"\xff\x01\x01", 0.0)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["write", "end_a", "end_b", "deliver", "drop",
                                           "dup", "swap", "timer", "read", "message"]),
                          st.integers(0, 5000)),
                max_size=80),
       st.booleans())
def test_random_interleavings_keep_the_stream_consistent(
    ops: list[tuple[str, int]], destroy_at_end: bool
) -> None:
    """Any mix of writes, ENDs, loss, duplication, reordering and timers keeps the invariants:
    the reader sees a prefix of what was written, in order; nothing raises; a finished
    exchange is lossless."""
    a, b = _pair()
    written = bytearray()
    read = bytearray()
    wire: list[tuple[StreamCore, bytes]] = []  # (destination, datagram)
    now = 0.0

    def pump() -> None:
        for src, dst in ((a, b), (b, a)):
            wire.extend((dst, d) for d in src.datagrams_to_send(now))

    for op, n in ops:
        now += 0.01
        if op == "write" and not a.eof_sent and not a.closed:
            chunk = bytes([len(written) % 251]) * (n % 3000 + 1)
            a.write(chunk)
            written += chunk
        elif op == "end_a":
            a.write_end()
        elif op == "end_b":
            b.write_end()
        elif op == "deliver" and wire:
            dst, d = wire.pop(0)
            dst.receive(Packet.decode(d), now)
        elif op == "drop" and wire:
            wire.pop(n % len(wire))
        elif op == "dup" and wire:
            wire.append(wire[n % len(wire)])
        elif op == "swap" and len(wire) > 1:
            i = n % (len(wire) - 1)
            wire[i], wire[i + 1] = wire[i + 1], wire[i]
        elif op == "timer":
            now += n / 1000
            a.handle_timer(now)
            b.handle_timer(now)
        elif op == "read":
            read += b.read(n + 1)
        elif op == "message" and not a.closed:
            a.send_message(b"m")
        pump()
        assert bytes(read) == bytes(written[:len(read)])
    # then a perfect network until quiet: everything written arrives unless a side gave up
    for _ in range(2000):
        pump()
        if not wire:
            deadline = min((t for t in (a.timer(), b.timer()) if t is not None), default=None)
            if deadline is None or (a.closed and b.closed):
                break
            now = max(now, deadline)
            a.handle_timer(now)
            b.handle_timer(now)
            continue
        dst, d = wire.pop(0)
        dst.receive(Packet.decode(d), now)
        read += b.read(1 << 30)
    read += b.read(1 << 30)
    if a.error is None and b.error is None:
        assert bytes(read) == bytes(written)
    if destroy_at_end:
        # a stream that already gave up (timed out) has nothing to destroy and sends nothing
        was_closed = a.closed
        a.destroy()
        for d in a.datagrams_to_send(now):
            b.receive(Packet.decode(d), now)
        assert b.closed or was_closed


INPUTS = ("data", "end", "destroy_pkt", "message", "heartbeat", "ack", "write", "write_end",
          "destroy", "silence", "unreachable")


def _pump(x: StreamCore, y: StreamCore, now: float) -> None:
    for _ in range(20):
        if not (_deliver(x, y, now) + _deliver(y, x, now)):
            return


def _in_state(state: State) -> StreamCore:
    """A core (local id 1) brought to ``state`` by real exchanges with a peer (id 2)."""
    a, b = _pair()
    if state is State.UNCONNECTED:
        return StreamCore(1)
    a.write(b"hello")
    b.write(b"world")
    _pump(a, b, 0.0)
    a.read(100)
    if state is State.LOCAL_ENDED:
        a.write_end()
        _pump(a, b, 0.1)
    elif state is State.REMOTE_ENDED:
        b.write_end()
        _pump(a, b, 0.1)
    elif state is State.ENDING:
        b.write_end()
        _pump(a, b, 0.1)
        a.write_end()
        a.datagrams_to_send(0.2)  # our END is in flight, not yet acknowledged
    elif state is State.CLOSED:
        a.write_end()
        b.write_end()
        _pump(a, b, 0.1)
    elif state is State.DESTROYED:
        a.destroy()
    elif state is State.RESET:
        b.destroy()
        _deliver(b, a, 0.1)
    elif state is State.TIMED_OUT:
        a.write(b"lost")
        a.datagrams_to_send(0.1)
        _silence(a)
    assert a.state is state
    return a


def _silence(a: StreamCore) -> None:
    for _ in range(50):
        deadline = a.timer()
        if deadline is None:
            return
        a.handle_timer(deadline)
        a.datagrams_to_send(deadline)


def _apply(a: StreamCore, op: str) -> None:
    seq, ack = a._ack, a._remote_acked
    packets = {
        "data": Packet(DATA, 1, 4 << 20, seq, ack, b"z"),
        "end": Packet(END, 1, 4 << 20, seq, ack),
        "destroy_pkt": Packet(DESTROY, 1, 4 << 20, seq, ack),
        "message": Packet(MESSAGE, 1, 4 << 20, seq, ack, b"m"),
        "heartbeat": Packet(HEARTBEAT, 1, 4 << 20, seq, ack),
        "ack": Packet(0, 1, 4 << 20, seq, a._seq),
    }
    if op in packets:
        a.receive(Packet.decode(packets[op].encode()), 1.0)
    elif op == "write":
        with contextlib.suppress(RuntimeError):
            a.write(b"more")
    elif op == "write_end":
        a.write_end()
    elif op == "destroy":
        a.destroy()
    elif op == "silence":
        a.datagrams_to_send(1.0)
        _silence(a)
    elif op == "unreachable":
        a.unreachable()
    a.datagrams_to_send(1.0)


def test_transition_table_is_complete() -> None:
    assert set(TRANSITIONS) == {(s, i) for s in State for i in INPUTS}


CASES = [(s, i) for s in State for i in INPUTS]


@pytest.mark.parametrize(("state", "op"), CASES,
                         ids=[f"{s.value}-{i}" for s, i in CASES])
def test_every_state_and_input(state: State, op: str) -> None:
    a = _in_state(state)
    _apply(a, op)
    assert a.state is TRANSITIONS[(state, op)]
