"""``LocalNetwork``: an in-memory test double of the Hyperswarm network.

It is a fake, for unit tests of service logic only: processes in one trio run
meet through a shared ``LocalHub`` that plays the DHT (topic -> announcing
servers), and connect through in-memory stream pairs. It has no encryption and
no wire protocol; integration tests run the same services over
``SwarmNetwork`` on a real loopback Hyperswarm testnet instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from tether import topics
from tether.keys import KeyPair
from tether.net.base import Peer, PeerCallback
from tether.rpc import Handler, MessageStream, RpcConnection, memory_message_stream_pair


class LocalHub:
    """The shared 'DHT' of a set of ``LocalNetwork`` nodes."""

    def __init__(self) -> None:
        self.nodes: dict[bytes, LocalNetwork] = {}
        self.servers: dict[str, set[bytes]] = {}
        self.clients: dict[str, set[bytes]] = {}

    async def announce(self, topic: str, key: bytes) -> None:
        self.servers.setdefault(topic, set()).add(key)
        for client_key in list(self.clients.get(topic, ())):
            client = self.nodes.get(client_key)
            if client is not None and client_key != key:
                await client.dial(key, topic)

    async def lookup(self, topic: str, key: bytes) -> None:
        self.clients.setdefault(topic, set()).add(key)
        node = self.nodes[key]
        for server_key in list(self.servers.get(topic, ())):
            if server_key != key:
                await node.dial(server_key, topic)

    def remove(self, key: bytes) -> None:
        self.nodes.pop(key, None)
        for table in (self.servers, self.clients):
            for members in table.values():
                members.discard(key)


class LocalNetwork:
    """One process on a ``LocalHub`` (test double; see the module docstring)."""

    def __init__(self, hub: LocalHub, keypair: KeyPair, handlers: dict[str, Handler]) -> None:
        self.hub = hub
        self.keypair = keypair
        self.handlers = handlers
        self._peers: dict[bytes, Peer] = {}
        self._callbacks: list[PeerCallback] = []
        self._nursery: trio.Nursery | None = None

    @property
    def public_key(self) -> bytes:
        return self.keypair.public_key

    @asynccontextmanager
    async def running(self) -> AsyncIterator[LocalNetwork]:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.hub.nodes[self.public_key] = self
            try:
                yield self
            finally:
                self.hub.remove(self.public_key)
                for peer in list(self._peers.values()):
                    await peer.rpc.aclose()
                nursery.cancel_scope.cancel()

    async def join(self, topic: str, *, server: bool = True, client: bool = True) -> None:
        topics.validate(topic)
        if server:
            await self.hub.announce(topic, self.public_key)
        if client:
            await self.hub.lookup(topic, self.public_key)

    async def leave(self, topic: str) -> None:
        self.hub.servers.get(topic, set()).discard(self.public_key)
        self.hub.clients.get(topic, set()).discard(self.public_key)

    async def refresh(self, topic: str) -> None:
        if self.public_key in self.hub.clients.get(topic, ()):
            await self.hub.lookup(topic, self.public_key)

    async def close(self) -> None:
        self.hub.remove(self.public_key)
        for peer in list(self._peers.values()):
            await peer.rpc.aclose()

    async def flush(self) -> None:
        await trio.lowlevel.checkpoint()

    async def connect(self, public_key: bytes) -> Peer:
        return await self.dial(public_key, None)

    def peers(self) -> list[Peer]:
        return list(self._peers.values())

    def on_peer(self, callback: PeerCallback) -> Callable[[], None]:
        self._callbacks.append(callback)
        for peer in list(self._peers.values()):
            callback(peer)
        return lambda: self._callbacks.remove(callback) if callback in self._callbacks else None

    @property
    def is_running(self) -> bool:
        """Whether this node is inside :meth:`running` (it can accept connections)."""
        return self._nursery is not None

    async def dial(self, key: bytes, topic: str | None) -> Peer:
        """Connect to ``key`` (found on ``topic``, None for a direct connect); the hub
        calls it when a topic brings two nodes together."""
        existing = self._peers.get(key)
        if existing is not None:
            if topic:
                existing.topics.add(topic)
            return existing
        remote = self.hub.nodes.get(key)
        if remote is None or not remote.is_running or not self.is_running:
            raise ConnectionError(f"no peer {key.hex()[:12]} on the local hub")
        mine, theirs = memory_message_stream_pair()
        local_peer = await self._attach(key, mine, initiator=True)
        if topic:
            local_peer.topics.add(topic)
        await remote.accept(self.public_key, theirs)
        return local_peer

    async def accept(self, key: bytes, stream: MessageStream) -> Peer:
        """Take the answering end of a connection ``key`` dialled."""
        return await self._attach(key, stream, initiator=False)

    async def _attach(self, key: bytes, stream: MessageStream, *, initiator: bool) -> Peer:
        assert self._nursery is not None
        conn = RpcConnection(
            stream,
            initiator=initiator,
            handlers=self.handlers,
            peer=key.hex(),
        )
        peer = Peer(key, conn)
        self._peers[key] = peer
        await self._nursery.start(self._run_peer, peer)
        for callback in list(self._callbacks):
            callback(peer)
        return peer

    async def _run_peer(self, peer: Peer, *, task_status: trio.TaskStatus[None]) -> None:
        try:
            await peer.rpc.run(task_status=task_status)
        finally:
            # However it ends (a node stopped by cancellation too), the other side sees the
            # connection close, as it would see a process's sockets close.
            await peer.rpc.aclose()
            if self._peers.get(peer.remote_key) is peer:
                del self._peers[peer.remote_key]
            peer.closed.set()
