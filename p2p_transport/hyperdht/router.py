"""The relay half of hyperdht's router (``lib/router.js``): forward PEER_HANDSHAKE and
PEER_HOLEPUNCH between a client and the server that self-announced to this node.

A server announces ``H(publicKey)`` to a few storage nodes; each keeps a router entry
``target -> (relay = the announcer's UDP address, record)``. A client then sends its Noise
message to such a node, which relays it to the server (``FROM_CLIENT -> FROM_RELAY``); the
server relays its answer back (``FROM_SERVER``) and the node replies to the client (``REPLY``),
so the client sees one ordinary request/response pair with the original tid.

This module is sans-IO: :meth:`Router.on_peer_handshake` and :meth:`Router.on_peer_holepunch`
take the request fields and return an :class:`Action` (or None: drop silently, as hyperdht
does, so the client's request times out). Answering handshakes for keys *this* process
listens on is the server's job (:class:`~p2p_transport.hyperdht.dht.Server`), not the
router's.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2p_transport.cenc import SocketAddress

from .cache import DEFAULT_MAX_AGE, DEFAULT_MAX_SIZE, ExpiringCache
from .messages import (
    Handshake,
    HolepunchMessage,
    HyperDhtProtocolError,
    Mode,
    decode_handshake,
    decode_holepunch,
    encode_handshake,
    encode_holepunch,
)

__all__ = ["Action", "Relay", "Reply", "RouteEntry", "Router"]


@dataclass(frozen=True, slots=True)
class Reply:
    """Answer the request with a response (to ``to``, else to the requester); a non-zero
    ``error`` is a dht-rpc error code."""

    value: bytes | None
    to: SocketAddress | None = None
    token: bool = True
    closer_nodes: bool = True
    error: int = 0


@dataclass(frozen=True, slots=True)
class Relay:
    """Re-send the request (same tid, command and target, no token) with ``value`` to ``to``."""

    value: bytes
    to: SocketAddress


Action = Reply | Relay


@dataclass(frozen=True, slots=True)
class RouteEntry:
    """Where the server of a target can be reached, and its encoded ``peer`` record."""

    relay: SocketAddress
    record: bytes


class Router:
    """Router entries (bounded and expiring like hyperdht's ``forwards`` cache) and relaying."""

    def __init__(self, *, max_size: int = DEFAULT_MAX_SIZE,
                 max_age: float = DEFAULT_MAX_AGE) -> None:
        self.forwards: ExpiringCache[bytes, RouteEntry] = ExpiringCache(max_size, max_age)

    def set(self, target: bytes, entry: RouteEntry, now: float) -> None:
        self.forwards.set(target, entry, now)

    def get(self, target: bytes | None, now: float) -> RouteEntry | None:
        if target is None:
            return None
        return self.forwards.get(target, now)

    def delete(self, target: bytes) -> None:
        self.forwards.delete(target)

    def on_peer_handshake(self, target: bytes | None, value: bytes | None,
                          from_addr: SocketAddress, now: float) -> Action | None:
        """A PEER_HANDSHAKE for a key this process does not listen on."""
        if not value:
            return None
        try:
            hs = decode_handshake(value)
        except HyperDhtProtocolError:
            return None
        entry = self.get(target, now)
        relay = entry.relay if entry is not None else None
        if hs.mode == Mode.FROM_CLIENT:
            if not hs.noise:
                return None
            to = hs.relay_address or relay
            if to is None:
                # nobody announced here: help the client route closer instead
                return Reply(None, token=False, closer_nodes=True)
            return Relay(encode_handshake(Handshake(Mode.FROM_RELAY, hs.noise, from_addr)), to)
        if hs.mode == Mode.FROM_RELAY:
            if relay is None or not hs.noise:
                return None
            return Relay(encode_handshake(Handshake(Mode.FROM_SECOND_RELAY, hs.noise,
                                                    hs.peer_address, from_addr)), relay)
        if hs.mode == Mode.FROM_SERVER:
            if hs.peer_address is None or not hs.noise:
                return None
            return Reply(encode_handshake(Handshake(Mode.REPLY, hs.noise, from_addr)),
                         to=hs.peer_address, token=False, closer_nodes=False)
        return None

    def on_peer_holepunch(self, target: bytes | None, value: bytes | None,
                          from_addr: SocketAddress, now: float) -> Action | None:
        """A PEER_HOLEPUNCH for a key this process does not listen on."""
        if not value:
            return None
        try:
            hp = decode_holepunch(value)
        except HyperDhtProtocolError:
            return None
        entry = self.get(target, now)
        relay = entry.relay if entry is not None else None
        if hp.mode == Mode.FROM_CLIENT:
            to = hp.peer_address or relay
            if to is None:
                return None
            return Relay(encode_holepunch(HolepunchMessage(Mode.FROM_RELAY, hp.id, hp.payload,
                                                           from_addr)), to)
        if hp.mode == Mode.FROM_SERVER:
            return Reply(encode_holepunch(HolepunchMessage(Mode.REPLY, hp.id, hp.payload,
                                                           from_addr)),
                         to=hp.peer_address, token=False, closer_nodes=False)
        # FROM_RELAY is for the server itself; we are not it
        return None
