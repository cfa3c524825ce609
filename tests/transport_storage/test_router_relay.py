"""Relaying PEER_HANDSHAKE and PEER_HOLEPUNCH as hyperdht's router does, in the sans-IO core
and through a storage node's dht-rpc datagrams (same tid, request forwarded, response to the
client)."""

from __future__ import annotations

import os

import pytest
from storage_helpers import CLIENT, NODE, SERVER, RecordingTransport, seeded_key_pair

from p2p_transport.cenc import SocketAddress
from p2p_transport.crypto import hash as blake2b
from p2p_transport.dht_rpc import Request, Response, decode_message, encode_request
from p2p_transport.hyperdht.messages import (
    PEER_HANDSHAKE,
    PEER_HOLEPUNCH,
    Handshake,
    HolepunchMessage,
    Mode,
    decode_handshake,
    decode_holepunch,
    encode_handshake,
    encode_holepunch,
)
from p2p_transport.hyperdht.router import Relay, Reply, RouteEntry, Router
from p2p_transport.hyperdht.storage import StorageNode

TARGET = blake2b(seeded_key_pair(1).public_key)
SECOND = SocketAddress("127.0.0.1", 40003)
NOISE = os.urandom(116)


def _router_with_route() -> Router:
    router = Router()
    router.set(TARGET, RouteEntry(SERVER, b"record"), 0.0)
    return router


def _hs(mode: int, *, peer: SocketAddress | None = None,
        relay: SocketAddress | None = None, noise: bytes = NOISE) -> bytes:
    return encode_handshake(Handshake(mode, noise, peer, relay))


def test_from_client_is_relayed_to_the_announcer() -> None:
    action = _router_with_route().on_peer_handshake(TARGET, _hs(Mode.FROM_CLIENT), CLIENT, 1.0)
    assert isinstance(action, Relay)
    assert action.to == SERVER
    assert decode_handshake(action.value) == Handshake(Mode.FROM_RELAY, NOISE, CLIENT, None)


def test_from_client_names_a_relay_address_explicitly() -> None:
    action = Router().on_peer_handshake(TARGET, _hs(Mode.FROM_CLIENT, relay=SECOND), CLIENT, 1.0)
    assert isinstance(action, Relay)
    assert action.to == SECOND


def test_from_client_without_a_route_gets_closer_nodes_and_no_value() -> None:
    action = Router().on_peer_handshake(TARGET, _hs(Mode.FROM_CLIENT), CLIENT, 1.0)
    assert action == Reply(None, token=False, closer_nodes=True)


def test_from_relay_goes_to_the_announcer_as_second_relay() -> None:
    action = _router_with_route().on_peer_handshake(
        TARGET, _hs(Mode.FROM_RELAY, peer=CLIENT), SECOND, 1.0)
    assert isinstance(action, Relay)
    assert action.to == SERVER
    assert decode_handshake(action.value) == Handshake(Mode.FROM_SECOND_RELAY, NOISE, CLIENT,
                                                       SECOND)
    assert Router().on_peer_handshake(TARGET, _hs(Mode.FROM_RELAY, peer=CLIENT), SECOND,
                                      1.0) is None


def test_from_server_is_the_reply_to_the_client() -> None:
    action = Router().on_peer_handshake(TARGET, _hs(Mode.FROM_SERVER, peer=CLIENT), SERVER, 1.0)
    assert isinstance(action, Reply)
    assert action.to == CLIENT
    assert (action.token, action.closer_nodes) == (False, False)
    assert action.value is not None
    assert decode_handshake(action.value) == Handshake(Mode.REPLY, NOISE, SERVER, None)
    # no client address or no noise: nothing to do
    assert Router().on_peer_handshake(TARGET, _hs(Mode.FROM_SERVER), SERVER, 1.0) is None
    assert Router().on_peer_handshake(TARGET, _hs(Mode.FROM_SERVER, peer=CLIENT, noise=b""),
                                      SERVER, 1.0) is None


@pytest.mark.parametrize("value", [None, b"", b"\xff", _hs(Mode.REPLY), _hs(9),
                                   _hs(Mode.FROM_CLIENT, noise=b"")])
def test_useless_handshakes_are_dropped(value: bytes | None) -> None:
    assert _router_with_route().on_peer_handshake(TARGET, value, CLIENT, 1.0) is None


def test_expired_route_is_not_used() -> None:
    router = Router(max_age=60.0)
    router.set(TARGET, RouteEntry(SERVER, b"record"), 0.0)
    action = router.on_peer_handshake(TARGET, _hs(Mode.FROM_CLIENT), CLIENT, 60.0)
    assert action == Reply(None, token=False, closer_nodes=True)


def _hp(mode: int, peer: SocketAddress | None = None, id_: int = 7) -> bytes:
    return encode_holepunch(HolepunchMessage(mode, id_, b"sealed", peer))


def test_holepunch_relay_modes() -> None:
    router = _router_with_route()
    fwd = router.on_peer_holepunch(TARGET, _hp(Mode.FROM_CLIENT), CLIENT, 1.0)
    assert isinstance(fwd, Relay)
    assert fwd.to == SERVER
    assert decode_holepunch(fwd.value) == HolepunchMessage(Mode.FROM_RELAY, 7, b"sealed", CLIENT)
    # the client names the server address it learned from this relay
    named = Router().on_peer_holepunch(TARGET, _hp(Mode.FROM_CLIENT, SECOND), CLIENT, 1.0)
    assert isinstance(named, Relay)
    assert named.to == SECOND
    back = router.on_peer_holepunch(TARGET, _hp(Mode.FROM_SERVER, CLIENT, 0), SERVER, 1.0)
    assert isinstance(back, Reply)
    assert back.to == CLIENT and back.value is not None
    assert decode_holepunch(back.value) == HolepunchMessage(Mode.REPLY, 0, b"sealed", SERVER)
    assert Router().on_peer_holepunch(TARGET, _hp(Mode.FROM_CLIENT), CLIENT, 1.0) is None
    assert router.on_peer_holepunch(TARGET, _hp(Mode.FROM_RELAY, CLIENT), SECOND, 1.0) is None
    assert router.on_peer_holepunch(TARGET, b"\xff", CLIENT, 1.0) is None


def test_storage_node_relays_with_the_original_tid() -> None:
    transport = RecordingTransport(NODE)
    storage = StorageNode(transport, clock=lambda: 5.0, seed=1)
    storage.router.set(TARGET, RouteEntry(SERVER, b"r" * 33), 0.0)
    req = Request(4242, NODE, PEER_HANDSHAKE, target=TARGET, value=_hs(Mode.FROM_CLIENT))
    storage.datagram_received(encode_request(req), CLIENT)
    [(data, to)] = transport.sent
    fwd = decode_message(data)
    assert to == SERVER
    assert isinstance(fwd, Request)
    assert (fwd.tid, fwd.command, fwd.target, fwd.token) == (4242, PEER_HANDSHAKE, TARGET, None)
    assert fwd.id == storage.id  # persistent: our id goes on the wire
    assert fwd.value is not None
    assert decode_handshake(fwd.value).peer_address == CLIENT
    # the server answers FROM_SERVER with the same tid; we answer the client
    transport.sent.clear()
    back = Request(4242, NODE, PEER_HANDSHAKE, target=TARGET,
                   value=_hs(Mode.FROM_SERVER, peer=CLIENT))
    storage.datagram_received(encode_request(back), SERVER)
    [(data, to)] = transport.sent
    res = decode_message(data)
    assert to == CLIENT
    assert isinstance(res, Response)
    assert (res.tid, res.to, res.token, res.closer_nodes) == (4242, CLIENT, None, ())
    assert res.value is not None
    assert decode_handshake(res.value) == Handshake(Mode.REPLY, NOISE, SERVER, None)


def test_storage_node_relays_holepunch_datagrams() -> None:
    transport = RecordingTransport(NODE)
    storage = StorageNode(transport, clock=lambda: 5.0, seed=1)
    storage.router.set(TARGET, RouteEntry(SERVER, b"r" * 33), 0.0)
    req = Request(7, NODE, PEER_HOLEPUNCH, target=TARGET, value=_hp(Mode.FROM_CLIENT))
    storage.datagram_received(encode_request(req), CLIENT)
    [(data, to)] = transport.sent
    assert to == SERVER
    fwd = decode_message(data)
    assert isinstance(fwd, Request) and fwd.tid == 7
