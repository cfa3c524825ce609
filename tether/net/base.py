"""What a Tether service needs from the network, whatever carries it.

A ``Network`` is one process's presence on the peer-to-peer network: an
Ed25519 identity, topics it joins (as a server that announces, a client that
looks up, or both), and one ``Peer`` per connected remote key. Every peer
connection carries one ``RpcConnection``: this process serves its handlers to
the peer and calls the peer's services on the same connection.

Implementations: ``tether.net.swarm.SwarmNetwork`` (Hyperswarm, the real one)
and ``tether.net.local.LocalNetwork`` (an in-memory test double).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import trio

from tether.errors import Unavailable
from tether.rpc import RpcConnection

log = logging.getLogger("tether.net")


@dataclass(eq=False)
class Peer:
    """A connected remote process."""

    remote_key: bytes
    rpc: RpcConnection
    #: Topic names this peer was found under (client side only).
    topics: set[str] = field(default_factory=set)
    closed: trio.Event = field(default_factory=trio.Event)

    @property
    def is_open(self) -> bool:
        """Its connection still carries calls (``closed`` follows a moment later)."""
        return not self.closed.is_set() and not self.rpc.closed

    @property
    def key_hex(self) -> str:
        return self.remote_key.hex()

    def __repr__(self) -> str:
        return f"Peer({self.key_hex[:12]}…, topics={sorted(self.topics)})"


PeerCallback = Callable[[Peer], None]


class Network(Protocol):
    """The network interface services are written against."""

    @property
    def public_key(self) -> bytes:
        """This process's Ed25519 public key (its address on the network)."""

    async def join(self, topic: str, *, server: bool = True, client: bool = True) -> None:
        """Announce on (server) and/or look up (client) a validated topic name."""

    async def leave(self, topic: str) -> None:
        """Stop announcing and looking up a topic; connections stay."""

    async def refresh(self, topic: str) -> None:
        """Look a joined topic up again now (finds servers that announced since)."""

    async def flush(self) -> None:
        """Wait until pending announces and lookups have been processed."""

    async def close(self) -> None:
        """Leave every topic and close every connection (the process is stopping)."""

    async def connect(self, public_key: bytes) -> Peer:
        """A connection to the process with this key (reused if open)."""

    def peers(self) -> list[Peer]:
        """Open connections, a snapshot."""

    def on_peer(self, callback: PeerCallback) -> Callable[[], None]:
        """Call ``callback`` for every new connection (existing ones included);
        returns a function that unsubscribes it."""


async def wait_for_peer(
    network: Network,
    topic: str,
    *,
    timeout: float = math.inf,
    accept: Callable[[Peer], bool] | None = None,
) -> Peer:
    """The first connected peer found under ``topic`` (and ``accept``-ed, if given),
    waiting up to ``timeout`` seconds (then UNAVAILABLE, naming the topic)."""
    with trio.move_on_after(timeout):
        return await _wait_for_peer(network, topic, accept or (lambda _peer: True))
    raise Unavailable(f"nothing reachable on {topic} within {timeout:g} s")


def peers_on(network: Network, topic: str) -> list[Peer]:
    """The open connections to peers found under ``topic``, now."""
    return [p for p in network.peers() if topic in p.topics and not is_closed(p)]


def is_closed(peer: Peer) -> bool:
    return not peer.is_open


async def _wait_for_peer(network: Network, topic: str, accept: Callable[[Peer], bool]) -> Peer:
    found: list[Peer] = []
    arrived = trio.Event()

    def check(peer: Peer) -> None:
        if topic in peer.topics and peer.is_open and accept(peer):
            found.append(peer)
            arrived.set()

    unsubscribe = network.on_peer(check)
    wait = 0.5
    try:
        while not found:
            with trio.move_on_after(wait):
                await arrived.wait()
            # A topic can be learnt after the connection callback ran; look again.
            for peer in network.peers():
                check(peer)
            if not found:
                # Servers that announced after our lookup are only found by a new one.
                await network.refresh(topic)
                wait = min(wait * 2, 5.0)
    finally:
        unsubscribe()
    return found[0]


async def dial(network: Network, key: bytes) -> Peer:
    """Connect to ``key``, retrying while it is not (yet) reachable: a service that is
    still starting has not announced its key on the DHT. Bound it with a cancel scope."""
    wait = 0.25
    while True:
        try:
            return await network.connect(key)
        except Unavailable as exc:
            log.info("%s… not reachable yet (%s); retrying in %.2f s", key.hex()[:12], exc, wait)
        await trio.sleep(wait)
        wait = min(wait * 2, 4.0)
