"""``SwarmNetwork``: Tether's network over Hyperswarm (``p2p_transport``).

Each process is a Hyperswarm peer keyed by its Ed25519 identity. Topic names
(``tether.topics``) become 32-byte swarm topics; every encrypted connection
carries a protomux channel ``tether-rpc/1`` on which one ``RpcConnection``
runs in both directions (the side that dialled numbers its calls odd).

Topics a process serves are announced again every ``REANNOUNCE_S`` (Hyperswarm's own
refresh is every 10 minutes): an announcement lives on the DHT nodes closest to its topic
when it was made, and under churn those nodes die and their replacements hold nothing, so
a worker's presence could stay unfindable for minutes (the lab's churn benchmark saw it
after five rounds of 30%).
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress

import trio

from p2p_transport.cenc import RemoteProtocolError, SocketAddress
from p2p_transport.crypto import key_pair
from p2p_transport.dht_rpc import DhtError
from p2p_transport.hyperdht import secure
from p2p_transport.hyperswarm import Hyperswarm, SwarmConnection
from p2p_transport.protomux import Channel, ChannelMessageStream, MessageStream, Mux
from p2p_transport.rpc import RpcChannel as HyperswarmRpcChannel
from tether import topics
from tether.errors import Unavailable
from tether.keys import KeyPair
from tether.net.base import Peer, PeerCallback
from tether.rpc import Handler, RpcConnection, RpcError, ServerContext

log = logging.getLogger("tether.net")

PROTOCOL = "tether-rpc/1"
CHANNEL_OPEN_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 20.0
#: How often served topics are announced again (plus up to 10% of jitter).
REANNOUNCE_S = 60.0


async def _run_mux(mux: Mux, *, task_status: trio.TaskStatus[None]) -> None:
    """Run protomux for one connection. A connection that ends while frames are queued is a
    normal end; a peer that breaks the protocol loses its connection, nothing else."""
    try:
        with suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            await mux.run(task_status=task_status)
    except RemoteProtocolError as exc:
        log.warning("closing a connection whose peer broke protomux: %s", exc)


class _CallFailed(Exception):
    """A unary call failed; ``code`` is its status name (``NOT_FOUND``, ...)."""

    def __init__(self, error: RpcError) -> None:
        super().__init__(error.message or error.code.name)
        self.code = error.code.name


def _unary_responder(
    handler: Handler, remote_key: bytes
) -> Callable[[bytes | None], Awaitable[bytes]]:
    async def respond(value: bytes | None) -> bytes:
        try:
            request = handler.parse_request(value or b"")
            context = ServerContext(method=handler.full_name, metadata={}, peer=remote_key.hex())
            return handler.serialize_response(await handler.func(request, context))
        except Exception as exc:
            raise _CallFailed(RpcError.from_exception(exc)) from None

    return respond


async def _first_open(channel: ChannelMessageStream, compat: HyperswarmRpcChannel | None) -> bool:
    """Wait until the peer opens one of our channels (each one's ``opened`` event is set
    once, when it opens or is rejected); False if none opened within the timeout."""
    channels = [channel.channel] + ([compat.channel] if compat is not None else [])
    events = [channel.opened] + ([compat.opened] if compat is not None else [])
    decided = trio.Event()

    async def watch(event: trio.Event) -> None:
        await event.wait()
        if any(_is_open(c) for c in channels) or all(e.is_set() for e in events):
            decided.set()

    with trio.move_on_after(CHANNEL_OPEN_TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            for event in events:
                nursery.start_soon(watch, event)
            await decided.wait()
            nursery.cancel_scope.cancel()
    return any(_is_open(c) for c in channels)


def _is_open(channel: Channel) -> bool:
    return channel.opened and not channel.closed


def parse_address(text: str) -> SocketAddress:
    """``host:port`` as given to ``--bootstrap``."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return SocketAddress(host, int(port))


class SwarmNetwork:
    def __init__(
        self,
        keypair: KeyPair,
        handlers: dict[str, Handler],
        *,
        bootstrap: Sequence[SocketAddress] = (),
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.keypair = keypair
        self.handlers = handlers
        self.bootstrap = list(bootstrap)
        self.host = host
        self.port = port
        self._swarm_key = key_pair(bytes(keypair.signing_key))
        self._swarm: Hyperswarm | None = None
        self._nursery: trio.Nursery | None = None
        self._names: dict[bytes, str] = {}
        self._roles: dict[bytes, tuple[bool, bool]] = {}
        self._peers: dict[bytes, Peer] = {}
        self._callbacks: list[PeerCallback] = []

    @property
    def public_key(self) -> bytes:
        return self.keypair.public_key

    @asynccontextmanager
    async def running(self) -> AsyncIterator[SwarmNetwork]:
        async with (
            Hyperswarm.open(
                self._on_connection,
                bootstrap=self.bootstrap,
                host=self.host,
                port=self.port,
                key_pair_=self._swarm_key,
            ) as swarm,
            trio.open_nursery() as nursery,
        ):
            self._swarm = swarm
            self._nursery = nursery
            nursery.start_soon(self._reannounce)
            try:
                yield self
            finally:
                nursery.cancel_scope.cancel()
                self._swarm = None

    async def _reannounce(self, every_s: float = REANNOUNCE_S) -> None:
        """Announce the served topics again every ``every_s`` (see the module docstring)."""
        rng = random.Random(self.public_key)
        while True:
            await trio.sleep(every_s * (1 + 0.1 * rng.random()))
            for key, (server, _client) in list(self._roles.items()):
                if server and key in self._roles:  # (not left meanwhile)
                    # (a failed announce is logged by the discovery and tried next round)
                    await self.swarm.join(key, server=True, client=False).flushed()

    async def close(self) -> None:
        """Unannounce every topic and close every connection, while the DHT still runs
        (leaving ``running()`` by cancellation cannot reach the DHT any more)."""
        if self._swarm is not None:
            await self._swarm.destroy()

    @property
    def swarm(self) -> Hyperswarm:
        if self._swarm is None:
            raise RuntimeError("use 'async with network.running()' first")
        return self._swarm

    async def listen(self) -> None:
        """Accept connections on our key even without announcing a topic."""
        await self.swarm.listen()

    async def join(self, topic: str, *, server: bool = True, client: bool = True) -> None:
        key = topics.topic_key(topic)
        self._names[key] = topic
        old_server, old_client = self._roles.get(key, (False, False))
        self._roles[key] = (server or old_server, client or old_client)
        discovery = self.swarm.join(key, server=server, client=client)
        await discovery.flushed()

    async def leave(self, topic: str) -> None:
        key = topics.topic_key(topic)
        self._roles.pop(key, None)
        await self.swarm.leave(key)

    async def refresh(self, topic: str) -> None:
        key = topics.topic_key(topic)
        if key in self._roles:
            # Joining a joined topic again refreshes it (announce and/or lookup).
            server, client = self._roles[key]
            await self.swarm.join(key, server=server, client=client).flushed()

    async def flush(self) -> None:
        await self.swarm.flush()

    async def connect(self, public_key: bytes) -> Peer:
        """Dial a process by key (e.g. a gateway); reuses an open connection."""
        existing = self._peers.get(public_key)
        if existing is not None:
            return existing
        assert self._nursery is not None
        try:
            with trio.fail_after(CONNECT_TIMEOUT_S):
                raw = await self.swarm.dht.connect(public_key, key_pair_=self._swarm_key)
                stream = await secure(raw, self._nursery)
        except (
            DhtError,
            trio.TooSlowError,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            OSError,
        ) as exc:
            raise Unavailable(f"cannot connect to {public_key.hex()[:16]}…: {exc}") from None
        ready: trio.MemorySendChannel[Peer]
        ready, arrived = trio.open_memory_channel[Peer](1)
        self._nursery.start_soon(self._serve, stream, public_key, True, set(), ready)
        async with arrived:
            try:
                return await arrived.receive()
            except trio.EndOfChannel:
                raise Unavailable(f"{public_key.hex()[:16]}… closed the connection") from None

    def peers(self) -> list[Peer]:
        for peer in self._peers.values():
            self._learn_topics(peer)
        return list(self._peers.values())

    def _learn_topics(self, peer: Peer) -> None:
        """Topics a peer was found under can grow after it connected."""
        if self._swarm is None:
            return
        info = self._swarm.peers.get(peer.remote_key)
        if info is not None:
            peer.topics.update(self._names[t] for t in info.topics if t in self._names)

    def on_peer(self, callback: PeerCallback) -> Callable[[], None]:
        self._callbacks.append(callback)
        for peer in list(self._peers.values()):
            callback(peer)
        return lambda: self._callbacks.remove(callback) if callback in self._callbacks else None

    def _hyperswarm_rpc_channel(self, mux: Mux, remote_key: bytes) -> HyperswarmRpcChannel | None:
        """A protomux-rpc channel named by our key (as ``@hyperswarm/rpc`` servers name it)
        answering every unary method: the request value is the protobuf request, the reply
        the protobuf response, a failure REQUEST_ERROR whose cause code is the status name."""
        unary = [h for h in self.handlers.values() if h.spec.kind == "unary"]
        if not unary:
            return None
        compat = HyperswarmRpcChannel(mux, id_=self.public_key)
        for handler in unary:
            compat.respond(handler.full_name, _unary_responder(handler, remote_key))
        compat.open()
        return compat

    async def _on_connection(self, conn: SwarmConnection) -> None:
        names = {self._names[t] for t in conn.peer.topics if t in self._names}
        await self._serve(conn, conn.remote_public_key, conn.is_initiator, names, None)

    async def _serve(
        self,
        stream: MessageStream,
        remote_key: bytes,
        initiator: bool,
        names: set[str],
        ready: trio.MemorySendChannel[Peer] | None,
    ) -> None:
        # Messages of many calls written in the same tick leave as one frame.
        mux = Mux(stream, coalesce=True)
        # Our opens are queued before the first frame is read: an open from the peer that
        # arrived before ours was sent would find no channel and be rejected.
        channel = ChannelMessageStream(mux, PROTOCOL)
        channel.open()
        # Accepted connections also answer stock @hyperswarm/rpc clients (unary methods).
        compat = None if initiator else self._hyperswarm_rpc_channel(mux, remote_key)
        peer: Peer | None = None
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(_run_mux, mux)
                if not await _first_open(channel, compat):
                    log.info("peer %s opened no RPC channel", remote_key.hex()[:12])
                    nursery.cancel_scope.cancel()
                    return
                if not _is_open(channel.channel):
                    # A plain @hyperswarm/rpc client: serve it until it leaves.
                    await mux.closed.wait()
                    nursery.cancel_scope.cancel()
                    return
                rpc = RpcConnection(
                    channel, initiator=initiator, handlers=self.handlers, peer=remote_key.hex()
                )
                peer = Peer(remote_key, rpc, topics=names)
                await nursery.start(rpc.run)
                self._peers[remote_key] = peer
                self._learn_topics(peer)
                if ready is not None:
                    await ready.send(peer)
                for callback in list(self._callbacks):
                    callback(peer)
                await rpc.wait_closed()
                # Gone for callers now, not once the transport closed gracefully (which
                # waits up to seconds for a peer that may be dead).
                self._forget(peer)
                nursery.cancel_scope.cancel()
        finally:
            if ready is not None:
                await ready.aclose()
            if peer is not None:
                self._forget(peer)
            with trio.CancelScope(shield=True):
                await stream.aclose()

    def _forget(self, peer: Peer) -> None:
        if self._peers.get(peer.remote_key) is peer:
            del self._peers[peer.remote_key]
        peer.closed.set()
