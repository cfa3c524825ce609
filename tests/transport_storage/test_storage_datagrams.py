"""A storage node at the datagram level: ids on the wire, tokens handed out and checked by the
dht-rpc layer, the announce/lookup round trip, and fuzzing of every new handler: any datagram is
answered, relayed or dropped, never a crash."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from storage_helpers import (
    CLIENT,
    NODE,
    SERVER,
    RecordingTransport,
    announce_value,
    seeded_key_pair,
)

from p2p_transport.cenc import SocketAddress
from p2p_transport.crypto import hash as blake2b
from p2p_transport.dht_rpc import (
    INVALID_TOKEN,
    UNKNOWN_COMMAND,
    Request,
    Response,
    decode_message,
    encode_request,
    node_id,
)
from p2p_transport.hyperdht.messages import (
    ANNOUNCE,
    FIND_PEER,
    LOOKUP,
    PEER_HANDSHAKE,
    PEER_HOLEPUNCH,
    UNANNOUNCE,
    Handshake,
    HolepunchMessage,
    Mode,
    decode_lookup_reply,
    encode_handshake,
    encode_holepunch,
)
from p2p_transport.hyperdht.persistent import Persistent
from p2p_transport.hyperdht.router import Router
from p2p_transport.hyperdht.storage import StorageNode

TOPIC = blake2b(b"tether/models/kjv-gru/1.0/eu-west")


def _node() -> tuple[StorageNode, RecordingTransport]:
    transport = RecordingTransport(NODE)
    return StorageNode(transport, clock=lambda: 1.0, seed=7), transport


def _ask(storage: StorageNode, transport: RecordingTransport, req: Request,
         frm: SocketAddress = CLIENT) -> Response | None:
    transport.sent.clear()
    storage.datagram_received(encode_request(req), frm)
    if not transport.sent:
        return None
    [(data, to)] = transport.sent
    assert to == frm
    res = decode_message(data)
    assert isinstance(res, Response)
    return res


def test_replies_carry_the_address_derived_id_and_a_token() -> None:
    storage, transport = _node()
    assert storage.id == node_id(NODE)
    res = _ask(storage, transport, Request(1, NODE, LOOKUP, target=TOPIC))
    assert res is not None
    assert res.id == node_id(NODE)
    assert res.token is not None and res.error == 0 and res.value is None


def test_announce_with_token_then_lookup() -> None:
    storage, transport = _node()
    kp = seeded_key_pair(1)
    first = _ask(storage, transport, Request(1, NODE, LOOKUP, target=TOPIC))
    assert first is not None and first.token is not None
    value = announce_value(kp, TOPIC, token=first.token, nid=storage.id)
    ack = _ask(storage, transport, Request(2, NODE, ANNOUNCE, token=first.token, target=TOPIC,
                                           value=value))
    assert ack is not None
    assert (ack.error, ack.token, ack.closer_nodes, ack.value) == (0, None, (), None)
    res = _ask(storage, transport, Request(3, NODE, LOOKUP, target=TOPIC))
    assert res is not None and res.value is not None
    assert [p.public_key for p in decode_lookup_reply(res.value).peers] == [kp.public_key]
    unann = announce_value(kp, TOPIC, token=first.token, nid=storage.id, unannounce=True)
    assert _ask(storage, transport, Request(4, NODE, UNANNOUNCE, token=first.token,
                                            target=TOPIC, value=unann)) is not None
    res = _ask(storage, transport, Request(5, NODE, LOOKUP, target=TOPIC))
    assert res is not None and res.value is None


def test_a_token_from_another_host_is_refused_before_the_handler() -> None:
    storage, transport = _node()
    kp = seeded_key_pair(2)
    other = SocketAddress("127.0.0.2", 5000)
    first = _ask(storage, transport, Request(1, NODE, LOOKUP, target=TOPIC), frm=other)
    assert first is not None and first.token is not None
    value = announce_value(kp, TOPIC, token=first.token, nid=storage.id)
    res = _ask(storage, transport, Request(2, NODE, ANNOUNCE, token=first.token, target=TOPIC,
                                           value=value))
    assert res is not None and res.error == INVALID_TOKEN
    assert len(storage.persistent.records) == 0


def test_announce_without_a_token_gets_no_answer() -> None:
    storage, transport = _node()
    kp = seeded_key_pair(3)
    value = announce_value(kp, TOPIC, nid=storage.id)
    assert _ask(storage, transport, Request(1, NODE, ANNOUNCE, target=TOPIC, value=value)) is None
    assert storage.node.stats["dropped"] == 1


def test_self_announce_then_find_peer_over_datagrams() -> None:
    storage, transport = _node()
    kp = seeded_key_pair(4)
    target = blake2b(kp.public_key)
    first = _ask(storage, transport, Request(1, NODE, FIND_PEER, target=target), frm=SERVER)
    assert first is not None and first.token is not None and first.value is None
    value = announce_value(kp, target, token=first.token, nid=storage.id)
    assert _ask(storage, transport, Request(2, NODE, ANNOUNCE, token=first.token,
                                            target=target, value=value), frm=SERVER)
    found = _ask(storage, transport, Request(3, NODE, FIND_PEER, target=target))
    assert found is not None and found.value is not None and found.value[:32] == kp.public_key


def test_unknown_user_commands_still_get_unknown_command() -> None:
    storage, transport = _node()
    res = _ask(storage, transport, Request(1, NODE, 42, target=TOPIC))
    assert res is not None and res.error == UNKNOWN_COMMAND


# -- fuzzing -----------------------------------------------------------------------------

_addr = st.builds(SocketAddress, st.sampled_from(["127.0.0.1", "10.1.2.3", "0.0.0.0"]),
                  st.integers(0, 65535))
_b32 = st.binary(min_size=32, max_size=32)
_commands = st.integers(0, 12)
_handshakes = st.builds(Handshake, st.integers(0, 6), st.binary(max_size=40),
                        st.none() | _addr, st.none() | _addr).map(encode_handshake)
_holepunches = st.builds(HolepunchMessage, st.integers(0, 6), st.integers(0, 2**32),
                         st.binary(max_size=40), st.none() | _addr).map(encode_holepunch)
_values = st.none() | st.binary(max_size=200) | _handshakes | _holepunches


@settings(max_examples=500, deadline=None)
@given(st.tuples(_commands, st.none() | _b32, st.none() | _b32, _values), _addr,
       st.floats(0, 1e7))
def test_fuzz_persistent_core(request: tuple[int, bytes | None, bytes | None, bytes | None],
                              frm: SocketAddress, now: float) -> None:
    core = Persistent(node_id(NODE))
    reply = core.handle(*request, from_addr=frm, now=now)
    assert reply is None or reply.error in (0, 16, 17)


@settings(max_examples=500, deadline=None)
@given(st.none() | _b32, _values, _addr, st.booleans())
def test_fuzz_router(target: bytes | None, value: bytes | None, frm: SocketAddress,
                     holepunch: bool) -> None:
    router = Router()
    if target is not None:
        from p2p_transport.hyperdht.router import RouteEntry

        router.set(target, RouteEntry(SERVER, b"x" * 33), 0.0)
    fn = router.on_peer_holepunch if holepunch else router.on_peer_handshake
    fn(target, value, frm, 1.0)


_requests = st.builds(Request, st.integers(0, 65535), _addr, _commands, st.booleans(),
                      st.none() | _b32, st.none(), st.none() | _b32, _values).map(encode_request)


@settings(max_examples=400, deadline=None)
@given(st.lists(_requests | st.binary(max_size=120), min_size=1, max_size=6), _addr)
def test_fuzz_storage_node_datagrams(datagrams: list[bytes], frm: SocketAddress) -> None:
    storage, transport = _node()
    for data in datagrams:
        storage.datagram_received(data, frm)
        # byte by byte: every prefix is handled too
        for i in range(len(data)):
            storage.datagram_received(data[:i], frm)
    for data, _to in transport.sent:
        decode_message(data)  # whatever we sent is well formed


def test_random_datagrams_do_not_grow_state() -> None:
    storage, _transport = _node()
    rng = random.Random(5)
    for i in range(300):
        storage.datagram_received(bytes([0x03]) + rng.randbytes(i % 90 + 1), CLIENT)
    assert len(storage.persistent.records) == 0
    assert len(storage.router.forwards) == 0


def test_holepunch_without_a_route_is_dropped() -> None:
    storage, transport = _node()
    value = encode_holepunch(HolepunchMessage(Mode.FROM_CLIENT, 1, b"p"))
    res = _ask(storage, transport, Request(1, NODE, PEER_HOLEPUNCH, target=TOPIC, value=value))
    assert res is None


def test_handshake_without_a_route_helps_the_client_route() -> None:
    storage, transport = _node()
    value = encode_handshake(Handshake(Mode.FROM_CLIENT, b"noise"))
    res = _ask(storage, transport, Request(1, NODE, PEER_HANDSHAKE, target=TOPIC, value=value))
    assert res is not None and res.value is None and res.token is None and res.error == 0


def test_a_storage_node_needs_a_concrete_address() -> None:
    with pytest.raises(ValueError, match=r"0\.0\.0\.0"):
        StorageNode(RecordingTransport(SocketAddress("0.0.0.0", 49737)))
