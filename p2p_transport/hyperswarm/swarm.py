"""Hyperswarm for trio: topics, discovery refresh, a prioritised peer queue with retry backoff,
connection de-duplication and ``flush``, wire-compatible with the npm ``hyperswarm``.

* ``join(topic, server=, client=)``: a server announces the topic (signed, through the DHT's
  closest nodes, clearing stale records on the first announce) after self-announcing its key;
  a client looks the topic up and queues every peer found. Refreshes every 10-12 min.
* Connections: at most ``max_parallel`` client connects at once, ``max_peers`` connections.
  A closed or failed connection is retried after ~1 s / 5 s / 15 s (the npm buckets) while its
  topic stays joined, at most 3 times (attempts reset when a connection lived 15 s). A peer
  that ran out of attempts is tried once more whenever a lookup finds it again: a process
  restarted with the same key is found again within one lookup.
* De-duplication (one connection per remote key, the same one on both ends): when an incoming
  connection meets an existing one for the same key, the new one is kept if the existing one
  already moved bytes both ways, or if the remote key is the larger one (its outgoing
  connection wins); otherwise the new one is dropped.
* ``leave(topic)`` unannounces; ``flush()`` waits for the pending refreshes and connects.

Each connection is handed to ``on_connection(conn)``, which runs in the swarm's nursery; the
connection is closed when that call returns. ``trio.BrokenResourceError`` and
``trio.ClosedResourceError`` escaping the handler mean the connection died and are absorbed;
anything else propagates.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field

import trio

from p2p_transport.cenc import SocketAddress
from p2p_transport.crypto import KeyPair
from p2p_transport.dht_rpc import DhtError
from p2p_transport.hyperdht import HyperDht, PeerRecord, RawConnection, Server, secure
from p2p_transport.secret_stream import SecretStream

__all__ = ["Discovery", "Hyperswarm", "PeerInfo", "SwarmConnection"]

log = logging.getLogger(__name__)

MAX_PEERS = 64
MAX_PARALLEL = 3
REFRESH_INTERVAL = 600.0
REFRESH_JITTER = 120.0
MIN_CONNECTION_TIME = 15.0
MAX_ATTEMPTS = 3
#: A peer below this priority is not prioritised (npm's NORMAL_PRIORITY).
NORMAL_PRIORITY = 2
BACKOFF_S, BACKOFF_M, BACKOFF_L, BACKOFF_X = 1.0, 5.0, 15.0, 600.0
BACKOFF_X_JITTER = 120.0
BACKOFF_JITTER = 0.5
DUPLICATE_CLOSE_WAIT = 5.0


@dataclass(eq=False)
class PeerInfo:
    """What the swarm knows about a remote key."""

    public_key: bytes
    relay_addresses: tuple[SocketAddress, ...] = ()
    topics: set[bytes] = field(default_factory=set)
    attempts: int = 0
    proven: bool = False
    banned: bool = False
    queued: bool = False
    client: bool = False
    explicit: bool = False
    connected_at: float | None = None

    def backoff(self, rng: random.Random) -> float | None:
        """Seconds until the next attempt, or None to give up (hyperswarm's retry buckets;
        explicit peers keep being retried every ~10 min)."""
        if self.banned:
            return None
        if self.attempts > MAX_ATTEMPTS:
            return BACKOFF_X + rng.random() * BACKOFF_X_JITTER if self.explicit else None
        if self.attempts == 0:
            base = BACKOFF_S
        elif self.proven:
            base = (BACKOFF_S, BACKOFF_M, BACKOFF_L)[self.attempts - 1]
        else:
            base = (BACKOFF_M, BACKOFF_L, BACKOFF_L)[self.attempts - 1]
        return base + rng.random() * BACKOFF_JITTER

    def priority(self) -> int:
        if self.attempts > MAX_ATTEMPTS:
            return 0
        return {0: 2, 1: 4, 2: 3, 3: 1}[self.attempts]

    def found_again(self) -> None:
        """A lookup found this peer again: one no longer prioritised (its retries ran out)
        starts over, as npm's ``_handlePeer`` resets it. A process restarted under the
        same key, at a new address, is reached again this way."""
        if self.priority() < NORMAL_PRIORITY:
            self.attempts = 0
            self.proven = False


class SwarmConnection:
    """An open, encrypted connection to a peer (a message stream)."""

    def __init__(self, stream: SecretStream, raw: RawConnection, peer: PeerInfo) -> None:
        self.stream = stream
        self.raw = raw
        self.peer = peer
        self.closed = trio.Event()

    @property
    def remote_public_key(self) -> bytes:
        return self.raw.remote_public_key

    @property
    def is_initiator(self) -> bool:
        return self.raw.is_initiator

    @property
    def moved_bytes_both_ways(self) -> bool:
        stats = self.raw.stream.core.stats
        return stats.bytes_received > 0 and stats.bytes_sent > 0

    async def send_message(self, data: bytes) -> None:
        await self.stream.send_message(data)

    async def receive_message(self) -> bytes:
        """The next message; ``trio.EndOfChannel`` once the peer ended or we closed."""
        try:
            return await self.stream.receive_message()
        except (trio.ClosedResourceError, trio.BrokenResourceError) as exc:
            raise trio.EndOfChannel from exc

    async def deliver(self, on_message: Callable[[bytes], None]) -> None:
        """Call ``on_message`` for each message, from the network's receive path (see
        :meth:`SecretStream.deliver`), until the peer ended or we closed."""
        with suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            await self.stream.deliver(on_message)

    def send_message_nowait(self, message: bytes) -> bool:
        """Send without yielding when the stream can take it now (False: nothing sent)."""
        return self.stream.send_message_nowait(message)

    def can_send_nowait(self) -> bool:
        return self.stream.can_send_nowait()

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(DUPLICATE_CLOSE_WAIT):
            await self.stream.aclose()


class _Connecting:
    """Placeholder for an outgoing connect in progress (can be aborted by de-duplication)."""

    def __init__(self) -> None:
        self.cancel = trio.CancelScope()
        self.closed = trio.Event()
        self.moved_bytes_both_ways = False

    async def aclose(self) -> None:
        self.cancel.cancel()
        await trio.lowlevel.checkpoint()


class Discovery:
    """One joined topic. ``flushed()`` waits for the current announce/lookup."""

    def __init__(self, swarm: Hyperswarm, topic: bytes, server: bool, client: bool) -> None:
        self.swarm = swarm
        self.topic = topic
        self.server = server
        self.client = client
        self._first_announce = True
        self._announced = False
        self._refreshed = trio.Event()
        self._refreshing: trio.Event | None = None
        self._cancel = trio.CancelScope()
        self.destroyed = False

    async def flushed(self) -> bool:
        await self._refreshed.wait()
        if self._refreshing is not None:
            await self._refreshing.wait()
        return not self.destroyed

    async def refresh(self) -> None:
        done = self._refreshing = trio.Event()
        try:
            await self._refresh_once()
        except DhtError as exc:
            log.warning("refresh of topic %s failed: %s", self.topic.hex()[:16], exc)
        finally:
            done.set()
            self._refreshed.set()

    async def _refresh_once(self) -> None:
        swarm = self.swarm

        def on_peer(peer: PeerRecord, _reply: object) -> None:
            if self.client and not self.destroyed:
                swarm._handle_peer(peer, self.topic)

        if self.server:
            server = await swarm.listen()
            clear, self._first_announce = self._first_announce, False
            await swarm.dht.announce(self.topic, swarm.key_pair, server.relay_addresses,
                                     clear=clear, on_peer=on_peer)
            self._announced = True
        else:
            await swarm.dht.lookup(self.topic, on_peer=on_peer)

    async def run(self) -> None:
        with self._cancel:
            while True:
                await self.refresh()
                await trio.sleep(REFRESH_INTERVAL + self.swarm._rng.random() * REFRESH_JITTER)

    async def destroy(self) -> None:
        self.destroyed = True
        self._cancel.cancel()
        self._refreshed.set()
        if self._announced:
            with trio.move_on_after(10):
                try:
                    await self.swarm.dht.unannounce(self.topic, self.swarm.key_pair)
                except DhtError as exc:
                    log.debug("unannounce failed: %s", exc)


ConnectionHandler = Callable[[SwarmConnection], Awaitable[None]]
Firewall = Callable[[bytes], bool]


class Hyperswarm:
    """A swarm over a :class:`HyperDht`. Use :meth:`open` for a self-contained one."""

    def __init__(self, dht: HyperDht, nursery: trio.Nursery, on_connection: ConnectionHandler,
                 *, key_pair_: KeyPair | None = None, max_peers: int = MAX_PEERS,
                 max_parallel: int = MAX_PARALLEL, firewall: Firewall | None = None,
                 seed: int | None = None) -> None:
        self.dht = dht
        self.nursery = nursery
        self.on_connection = on_connection
        self.key_pair = key_pair_ or dht.default_key_pair
        self.max_peers = max_peers
        self.max_parallel = max_parallel
        self.firewall = firewall
        self.peers: dict[bytes, PeerInfo] = {}
        self.connections: dict[bytes, SwarmConnection] = {}
        self._all: dict[bytes, SwarmConnection | _Connecting] = {}
        self._discovery: dict[bytes, Discovery] = {}
        self._queue: list[PeerInfo] = []
        self._connecting = 0
        self._changed = trio.Event()
        self._rng = random.Random(seed)
        self._server: Server | None = None
        self._listen_lock = trio.Lock()
        self.destroyed = False

    @classmethod
    @asynccontextmanager
    async def open(cls, on_connection: ConnectionHandler, *,
                   bootstrap: Sequence[SocketAddress] = (), host: str = "127.0.0.1",
                   port: int = 0, key_pair_: KeyPair | None = None,
                   firewall: Firewall | None = None,
                   max_peers: int = MAX_PEERS) -> AsyncIterator[Hyperswarm]:
        async with HyperDht.open(host, port, bootstrap=bootstrap, key_pair_=key_pair_) as dht, \
                trio.open_nursery() as nursery:
            swarm = cls(dht, nursery, on_connection, key_pair_=key_pair_, firewall=firewall,
                        max_peers=max_peers)
            nursery.start_soon(swarm._drain_queue)
            try:
                yield swarm
            finally:
                with trio.CancelScope(shield=True):
                    await swarm.destroy()
                nursery.cancel_scope.cancel()

    # -- public API ------------------------------------------------------------------------

    def join(self, topic: bytes, *, server: bool = True, client: bool = True) -> Discovery:
        if len(topic) != 32:
            raise ValueError("a topic is 32 bytes")
        existing = self._discovery.get(topic)
        if existing is not None:
            existing.server |= server
            existing.client |= client
            self.nursery.start_soon(existing.refresh)
            return existing
        discovery = Discovery(self, topic, server, client)
        self._discovery[topic] = discovery
        self.nursery.start_soon(discovery.run)
        return discovery

    def join_peer(self, public_key: bytes) -> None:
        """Keep a connection to ``public_key`` (found through its self-announcement)."""
        peer = self._upsert(public_key)
        if peer is None:
            return
        peer.explicit = True
        peer.attempts = 0
        if public_key not in self._all and not peer.queued and not peer.banned:
            peer.queued = True
            self._queue.insert(0, peer)
            self._notify()

    def leave_peer(self, public_key: bytes) -> None:
        """Stop keeping ``public_key`` connected (an open connection stays open)."""
        peer = self.peers.get(public_key)
        if peer is not None:
            peer.explicit = False

    async def leave(self, topic: bytes) -> None:
        discovery = self._discovery.pop(topic, None)
        if discovery is not None:
            await discovery.destroy()

    async def listen(self) -> Server:
        """Listen on the swarm's key (once); returns the DHT server."""
        async with self._listen_lock:
            if self._server is None:
                server = self.dht.create_server(self._on_server_connection,
                                                key_pair_=self.key_pair,
                                                firewall=self._server_firewall)
                await server.listen()
                self._server = server
            return self._server

    async def flush(self) -> None:
        """Wait until every joined topic refreshed and every queued peer was attempted."""
        for discovery in list(self._discovery.values()):
            await discovery.flushed()
        while self._queue or self._connecting:
            await self._wait_changed()

    async def destroy(self) -> None:
        if self.destroyed:
            return
        self.destroyed = True
        for topic in list(self._discovery):
            await self.leave(topic)
        if self._server is not None:
            await self._server.close()
        for conn in list(self._all.values()):
            await conn.aclose()

    # -- bookkeeping -----------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _wait_changed(self) -> None:
        await self._changed.wait()

    def _upsert(self, public_key: bytes,
                relay_addresses: tuple[SocketAddress, ...] | None = None) -> PeerInfo | None:
        if public_key == self.key_pair.public_key:
            return None
        peer = self.peers.get(public_key)
        if peer is None:
            peer = self.peers[public_key] = PeerInfo(public_key)
        if relay_addresses is not None:
            peer.relay_addresses = relay_addresses
        return peer

    def _firewalled(self, public_key: bytes) -> bool:
        if public_key == self.key_pair.public_key:
            return True
        peer = self.peers.get(public_key)
        if peer is not None and peer.banned:
            return True
        if self.firewall is not None and self.firewall(public_key):
            banned = self._upsert(public_key)
            if banned is not None:
                banned.banned = True
            return True
        return False

    def _server_firewall(self, public_key: bytes, _payload: object, _addr: object) -> bool:
        return self._firewalled(public_key)

    def _handle_peer(self, record: PeerRecord, topic: bytes) -> None:
        peer = self._upsert(record.public_key, record.relay_addresses)
        if peer is None:
            return
        peer.topics.add(topic)
        if record.public_key in self._all:
            return
        peer.found_again()
        if peer.queued or peer.banned:
            return
        peer.queued = True
        self._queue.append(peer)
        self._queue.sort(key=lambda p: -p.priority())
        self._notify()

    def _should_connect(self) -> bool:
        return self._connecting < self.max_parallel and len(self._all) < self.max_peers

    async def _drain_queue(self) -> None:
        while True:
            while self._queue and self._should_connect():
                peer = self._queue.pop(0)
                peer.queued = False
                self._connect(peer)
            self._notify()
            await self._wait_changed()

    def _connect(self, peer: PeerInfo) -> None:
        if peer.banned or peer.public_key in self._all or self._firewalled(peer.public_key):
            return
        placeholder = _Connecting()
        self._all[peer.public_key] = placeholder
        self._connecting += 1
        self.nursery.start_soon(self._run_client, peer, placeholder)

    async def _run_client(self, peer: PeerInfo, placeholder: _Connecting) -> None:
        conn: SwarmConnection | None = None
        try:
            with placeholder.cancel:
                raw = await self.dht.connect(peer.public_key, key_pair_=self.key_pair,
                                             relay_addresses=peer.relay_addresses)
                try:
                    stream = await secure(raw, self.nursery)
                except BaseException:
                    with trio.CancelScope(shield=True), trio.move_on_after(DUPLICATE_CLOSE_WAIT):
                        await raw.stream.aclose()
                    raise
                conn = SwarmConnection(stream, raw, peer)
        except (DhtError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.debug("connect to %s failed: %s", peer.public_key.hex()[:16], exc)
        finally:
            self._connecting -= 1
            placeholder.closed.set()
            if self._all.get(peer.public_key) is placeholder:
                del self._all[peer.public_key]
            self._notify()  # flush() and the queue wait on this
        if conn is None or self.destroyed or peer.public_key in self._all:
            if conn is not None:
                await conn.aclose()  # de-duplication already chose the incoming one
            self._retry_later(peer)
            return
        peer.client = True
        await self._run_connection(conn)

    async def _on_server_connection(self, raw: RawConnection) -> None:
        try:
            stream = await secure(raw, self.nursery)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.debug("incoming connection failed to open: %s", exc)
            return
        peer = self._upsert(raw.remote_public_key)
        if peer is None:
            await stream.aclose()
            return
        conn = SwarmConnection(stream, raw, peer)
        await self._handle_server_connection(conn)

    async def _handle_server_connection(self, conn: SwarmConnection) -> None:
        key = conn.remote_public_key
        while True:
            if self.destroyed:
                await conn.aclose()
                return
            existing = self._all.get(key)
            if existing is None:
                break
            keep_new = existing.moved_bytes_both_ways or self.key_pair.public_key < key
            if not keep_new:
                if isinstance(existing, SwarmConnection):
                    with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        await existing.stream.send_keepalive()
                await conn.aclose()
                return
            await existing.aclose()
            with trio.move_on_after(DUPLICATE_CLOSE_WAIT):
                await existing.closed.wait()
            if self._all.get(key) is existing:
                del self._all[key]
        conn.peer.client = False
        await self._run_connection(conn)

    async def _run_connection(self, conn: SwarmConnection) -> None:
        key = conn.remote_public_key
        peer = conn.peer
        self._all[key] = conn
        self.connections[key] = conn
        peer.proven = True
        peer.connected_at = trio.current_time()
        self._notify()
        try:
            await self.on_connection(conn)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            # the connection died under the handler (peer reset, duplicate dropped)
            log.debug("connection to %s ended: %s", key.hex()[:16], exc)
        finally:
            await conn.aclose()
            conn.closed.set()
            if self._all.get(key) is conn:
                del self._all[key]
            if self.connections.get(key) is conn:
                del self.connections[key]
            lived = trio.current_time() - (peer.connected_at or 0)
            peer.connected_at = None
            if lived >= MIN_CONNECTION_TIME:
                peer.attempts = 0
            if conn.is_initiator:
                self._retry_later(peer)
            else:
                self._maybe_forget(peer)
            self._notify()

    def _maybe_forget(self, peer: PeerInfo) -> None:
        """Drop what we know about a peer nobody wants any more (banned peers are kept)."""
        if (not peer.banned and not peer.queued and not self._wanted(peer)
                and peer.public_key not in self._all):
            self.peers.pop(peer.public_key, None)

    def _wanted(self, peer: PeerInfo) -> bool:
        return peer.explicit or any(t in self._discovery for t in peer.topics)

    def _retry_later(self, peer: PeerInfo) -> None:
        peer.attempts += 1
        if self.destroyed or not self._wanted(peer):
            self._maybe_forget(peer)
            return
        delay = peer.backoff(self._rng)
        if delay is None:
            self._maybe_forget(peer)
            return

        async def requeue() -> None:
            await trio.sleep(delay)
            if (not self.destroyed and peer.public_key not in self._all and not peer.queued
                    and self._wanted(peer)):
                peer.queued = True
                self._queue.append(peer)
                self._notify()

        self.nursery.start_soon(requeue)
