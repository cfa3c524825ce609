"""A persistent hyperdht node for trio: dht-rpc with an address-derived id, the storage
commands of :mod:`~p2p_transport.hyperdht.persistent` and the relaying of
:mod:`~p2p_transport.hyperdht.router`.

This is what Node's ``new HyperDHT({ephemeral: false, firewalled: false})`` is: a node that
Node and Python peers put in their routing tables (its replies carry ``id = H(ipv4Addr)`` of the
address it sends from), that hands out write tokens, stores announcements and relays the
handshakes of the servers that announced to it. It does not detect firewalls: run it only where
its bound address is the address others reach it at (loopback, a LAN, a public host).

The adapter only maps :class:`~p2p_transport.hyperdht.router.Reply` and
:class:`~p2p_transport.hyperdht.router.Relay` actions onto dht-rpc answers; every decision is in
the sans-IO cores.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import trio

from p2p_transport.cenc import SocketAddress
from p2p_transport.dht_rpc import (
    FIND_NODE,
    DhtNode,
    IncomingRequest,
    UdpSocket,
    query,
)
from p2p_transport.dht_rpc.socket import DatagramTransport

from .cache import DEFAULT_MAX_AGE, DEFAULT_MAX_SIZE
from .messages import PEER_HANDSHAKE, PEER_HOLEPUNCH
from .persistent import STORAGE_COMMANDS, Persistent
from .router import Action, Relay, Router

__all__ = ["StorageHandler", "StorageNode", "open_storage_node"]

log = logging.getLogger(__name__)

WILDCARD_HOST = "0.0.0.0"


class StorageHandler:
    """dht-rpc's application hook for a persistent node: storage commands and relaying.

    ``clock`` gives ``now`` in seconds for expiry (default: trio's clock, so a MockClock
    drives it in tests).
    """

    def __init__(self, node_id: bytes, *, clock: Callable[[], float] | None = None,
                 max_size: int = DEFAULT_MAX_SIZE, max_age: float = DEFAULT_MAX_AGE) -> None:
        self.router = Router(max_size=max_size, max_age=max_age)
        self.persistent = Persistent(node_id, self.router, max_size=max_size, max_age=max_age)
        self._clock = clock if clock is not None else trio.current_time

    def on_request(self, req: IncomingRequest) -> bool:
        """True when the command is ours (answered, relayed or dropped)."""
        command = req.command
        now = self._clock()
        action: Action | None
        if command == PEER_HANDSHAKE:
            action = self.router.on_peer_handshake(req.target, req.value, req.from_addr, now)
        elif command == PEER_HOLEPUNCH:
            action = self.router.on_peer_holepunch(req.target, req.value, req.from_addr, now)
        elif command in STORAGE_COMMANDS:
            action = self.persistent.handle(command, req.target, req.token, req.value,
                                            from_addr=req.from_addr, now=now)
        else:
            return False
        if action is None:
            req.node.stats["dropped"] += 1
        elif isinstance(action, Relay):
            req.relay(action.value, action.to)
        elif action.error:
            req.error(action.error, token=action.token, closer_nodes=action.closer_nodes)
        else:
            req.reply(action.value, token=action.token, closer_nodes=action.closer_nodes,
                      to=action.to)
        return True


class StorageNode:
    """A persistent dht-rpc node answering hyperdht's storage and relay commands on its own
    socket (no UDX streams; a peer that also connects is ``HyperDht(persistent=True)``)."""

    def __init__(self, transport: DatagramTransport, *,
                 bootstrap: Sequence[SocketAddress] = (),
                 clock: Callable[[], float] | None = None,
                 max_size: int = DEFAULT_MAX_SIZE, max_age: float = DEFAULT_MAX_AGE,
                 seed: int | None = None) -> None:
        if transport.local_address.host == WILDCARD_HOST:
            raise ValueError("a storage node's id is derived from its address: bind the "
                             "address others reach it at, not 0.0.0.0")
        self.node = DhtNode(transport, bootstrap=bootstrap, ephemeral=False, seed=seed)
        self.handler = StorageHandler(self.node.id, clock=clock, max_size=max_size,
                                      max_age=max_age)
        self.node.on_request = self.handler.on_request

    @property
    def id(self) -> bytes:
        return self.node.id

    @property
    def address(self) -> SocketAddress:
        return self.node.transport.local_address

    @property
    def router(self) -> Router:
        return self.handler.router

    @property
    def persistent(self) -> Persistent:
        return self.handler.persistent

    def datagram_received(self, data: bytes, addr: SocketAddress) -> None:
        self.node.datagram_received(data, addr)

    async def bootstrap(self) -> None:
        """Walk towards our own id so that the nodes near us learn about us."""
        await query(self.node, self.node.id, FIND_NODE, internal=True)


@asynccontextmanager
async def open_storage_node(host: str = "127.0.0.1", port: int = 0, *,
                            bootstrap: Sequence[SocketAddress] = (),
                            max_size: int = DEFAULT_MAX_SIZE,
                            max_age: float = DEFAULT_MAX_AGE) -> AsyncIterator[StorageNode]:
    """Bind a UDP socket, run a :class:`StorageNode` on it and bootstrap from ``bootstrap``."""
    sock = await UdpSocket.bind(host, port)
    try:
        storage = StorageNode(sock, bootstrap=bootstrap, max_size=max_size, max_age=max_age)
        async with trio.open_nursery() as nursery:
            await nursery.start(storage.node.run)
            await nursery.start(sock.serve, storage.datagram_received)
            if bootstrap:
                await storage.bootstrap()
            log.info("storage node %s:%d ready (id %s)", storage.address.host,
                     storage.address.port, storage.id.hex()[:16])
            try:
                yield storage
            finally:
                nursery.cancel_scope.cancel()
    finally:
        sock.close()
