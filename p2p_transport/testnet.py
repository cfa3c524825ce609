"""A local HyperDHT network in one process, as hyperdht's ``createTestnet`` builds one.

:func:`open_testnet` starts a bootstrap node (an ephemeral dht-rpc node that only answers the
internal commands, as the first node of ``createTestnet`` ends up) and ``size - 1`` persistent
storage nodes that bootstrap from it one after the other, all on ``host``. Peers, Python or
Node, use :attr:`Testnet.bootstrap` as their bootstrap list. ``size`` must be at least 2 so
that something stores announcements; 3 (the default) gives a server the two relays it needs
to survive one loss.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import trio

from p2p_transport.cenc import SocketAddress
from p2p_transport.dht_rpc import DhtNode, UdpSocket
from p2p_transport.hyperdht.storage import WILDCARD_HOST, StorageNode, open_storage_node

__all__ = ["DEFAULT_SIZE", "MAX_SIZE", "Testnet", "open_testnet"]

log = logging.getLogger(__name__)

DEFAULT_SIZE = 3
#: Nodes beyond this are a mistake on one machine (each is a socket and a few tasks).
MAX_SIZE = 256


@dataclass(eq=False)
class Testnet:
    """The running nodes: ``bootstrap[0]`` is the bootstrap node, the rest storage nodes."""

    bootstrap_node: DhtNode
    storage_nodes: list[StorageNode] = field(default_factory=list)

    @property
    def bootstrap(self) -> list[SocketAddress]:
        return [self.bootstrap_node.transport.local_address,
                *(n.address for n in self.storage_nodes)]


@asynccontextmanager
async def open_testnet(size: int = DEFAULT_SIZE, *, host: str = "127.0.0.1",
                       port: int = 0) -> AsyncIterator[Testnet]:
    """Start the nodes and yield once every storage node has bootstrapped."""
    if not 2 <= size <= MAX_SIZE:
        raise ValueError(f"a testnet has 2..{MAX_SIZE} nodes, not {size}")
    if host == WILDCARD_HOST:
        raise ValueError("testnet nodes need a concrete host (their ids derive from it)")
    sock = await UdpSocket.bind(host, port)
    try:
        boot = DhtNode(sock)
        async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
            await nursery.start(boot.run)
            await nursery.start(sock.serve, boot.datagram_received)
            testnet = Testnet(boot)
            log.info("bootstrap node on %s:%d", sock.local_address.host,
                     sock.local_address.port)
            for _ in range(size - 1):
                storage = await stack.enter_async_context(
                    open_storage_node(host, bootstrap=[sock.local_address]))
                testnet.storage_nodes.append(storage)
            try:
                yield testnet
            finally:
                nursery.cancel_scope.cancel()
    finally:
        sock.close()
