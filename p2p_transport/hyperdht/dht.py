"""A HyperDHT peer for trio: announce/lookup/unannounce on topics, FIND_PEER, and Noise-IK
connections to and from public keys, relayed through DHT nodes as hyperdht does.

One UDP socket (:class:`~p2p_transport.udx.UdxSocket`) carries dht-rpc, UDX streams and
holepunch probes. The peer is an ephemeral dht-rpc node: it never stores records; servers are
found through the DHT nodes that hold their signed self-announcement and relay the handshake.
Opened with ``persistent=True`` it is one of those nodes as well
(:class:`~p2p_transport.hyperdht.storage.StorageHandler`).

What a connection does after the handshake is decided by the sans-IO core
(:mod:`p2p_transport.hyperdht.holepunch`, ``choose_path``), as hyperdht does: the client
connects to the server's first packet, the direct address, or a public address when the server
is OPEN or not holepunchable; waits for the server when it is OPEN itself; tries the LAN
shortcut; else holepunches. A server behind a NAT answering a client behind one offers its
relays for holepunching and answers the relayed PEER_HOLEPUNCH rounds.

Holepunching runs on puncher sockets (``_PunchSockets``) that share the main socket's UDX stream
table: the stream moves to the socket that reached the peer. Two random NATs fail with
``HolepunchFailed("HOLEPUNCH_DOUBLE_RANDOMIZED_NATS")`` unless a blind relay is named
(``connect(..., relay_through=key)``, or the client's ``relayThrough`` as a server): both sides
then pair through it (:mod:`p2p_transport.hyperdht.relay`) while the direct path is tried, and
the first path that works carries the stream.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import TypeVar

import trio

from p2p_transport.cenc import RemoteProtocolError, SocketAddress
from p2p_transport.crypto import (
    NS_ANNOUNCE,
    NS_UNANNOUNCE,
    KeyPair,
    hash_batch,
    key_pair,
    sign,
)
from p2p_transport.crypto import hash as blake2b
from p2p_transport.dht_rpc import (
    FIND_NODE,
    PING,
    DatagramTransport,
    DhtError,
    DhtNode,
    IncomingRequest,
    QueryError,
    QueryReply,
    QueryResult,
    UdpSocket,
    is_dht_rpc,
    query,
)
from p2p_transport.noise import HandshakeError, HandshakeResult, NoiseHandshake, dht_handshake
from p2p_transport.secret_stream import SecretStream
from p2p_transport.udx import UdpTransport, UdxSocket, UdxStream

from . import holepunch as hp
from . import relay as blind_relay
from .holepunch import HolepunchFailed, PeerConnectionFailed
from .messages import (
    ANNOUNCE,
    FIND_PEER,
    LOOKUP,
    PEER_HANDSHAKE,
    PEER_HOLEPUNCH,
    UNANNOUNCE,
    Announce,
    Error,
    Firewall,
    Handshake,
    HolepunchInfo,
    HolepunchMessage,
    HolepunchPayload,
    HyperDhtProtocolError,
    Mode,
    NoisePayload,
    PeerRecord,
    RelayInfo,
    RelayThrough,
    UdxInfo,
    decode_handshake,
    decode_holepunch,
    decode_lookup_reply,
    decode_noise_payload,
    decode_peer,
    encode_announce,
    encode_handshake,
    encode_holepunch,
    encode_noise_payload,
    encode_peer,
)
from .storage import WILDCARD_HOST, StorageHandler

__all__ = [
    "HolepunchFailed",
    "HyperDht",
    "PeerConnectionFailed",
    "PeerNotFound",
    "RawConnection",
    "Server",
    "announce_signable",
    "secure",
]

log = logging.getLogger(__name__)

#: How long a server keeps a handshake reply to resend it to parallel relays (hyperdht 10 s).
HANDSHAKE_CLEAR_WAIT = 10.0
#: Handshake replies a server keeps at once; beyond this, new handshakes are dropped.
MAX_PENDING_HANDSHAKES = 1024
#: How long a server waits for a client that did not claim OPEN to send its first packet.
HANDSHAKE_INITIAL_TIMEOUT = 10.0
#: The server re-announces itself this often (hyperdht's announcer cycle is ~5 min).
ANNOUNCE_REFRESH = 300.0
#: The server pings its relays this often (hyperdht's announcer: 3 s).
RELAY_PING_INTERVAL = 3.0
#: Self-announce to this many of the closest nodes.
ANNOUNCE_RELAYS = 3
#: Relays tried at once for one connect (hyperdht: 2).
PARALLEL_HANDSHAKES = 2
#: Handshake request attempts per relay (hyperdht's connect uses 3 retries).
HANDSHAKE_RETRIES = 3
MAX_RELAY_ADDRESSES = 3
#: Seconds a close waits for the peer to acknowledge before giving up.
CLOSE_TIMEOUT = 5.0


class PeerNotFound(PeerConnectionFailed):
    """No DHT node knows the server's key (``PEER_NOT_FOUND``)."""


def announce_signable(target: bytes, token: bytes, node_id: bytes, peer: PeerRecord, *,
                      refresh: bytes | None, namespace: bytes) -> bytes:
    """What an ANNOUNCE/UNANNOUNCE signs: ``ns ‖ H(target ‖ id ‖ token ‖ peer ‖ refresh)``."""
    return namespace + hash_batch([target, node_id, token, encode_peer(peer), refresh or b""])


@dataclass(eq=False)
class RawConnection:
    """A connected UDX stream with the Noise handshake that keys it (before secret-stream)."""

    stream: UdxStream
    handshake: HandshakeResult
    remote_payload: NoisePayload
    remote_address: SocketAddress | None
    is_initiator: bool
    #: the stream goes through a blind relay (``relayThrough``), not straight to the peer
    relayed: bool = False

    @property
    def remote_public_key(self) -> bytes:
        return self.handshake.remote_public_key


async def secure(raw: RawConnection, nursery: trio.Nursery) -> SecretStream:
    """Start secret-stream on a connection (header exchange) and keep it alive in ``nursery``.

    Raises ``trio.BrokenResourceError`` if the peer's header is wrong or never comes.
    """
    stream = SecretStream(raw.stream, raw.is_initiator, raw.handshake)
    try:
        await stream.start()
    except BaseException:
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
            await stream.aclose()
        raise
    nursery.start_soon(stream.run_keepalive)
    return stream


@dataclass(eq=False)
class _PendingHandshake:
    reply: bytes | None
    #: relayed replies go out from the puncher socket when we punch (as hyperdht's
    #: ``replyFromPuncher``): the client then opens its NAT towards that socket
    via: DatagramTransport | None = None
    created: float = 0.0


@dataclass(eq=False)
class _ServerPunchEntry:
    """A server's punch for one handshake: its puncher sockets and the core's state."""

    sockets: _PunchSockets
    connected: trio.Event
    core: hp.ServerPunch | None = None
    ready: trio.Event = field(default_factory=trio.Event)
    deadline: float = 0.0


ServerFirewall = Callable[[bytes, NoisePayload, SocketAddress], bool]


class Server:
    """A listening key pair. Create with :meth:`HyperDht.create_server`, then :meth:`listen`."""

    def __init__(self, dht: HyperDht, kp: KeyPair,
                 on_connection: Callable[[RawConnection], Awaitable[None]],
                 firewall: ServerFirewall | None = None) -> None:
        self.dht = dht
        self.key_pair = kp
        self.target = blake2b(kp.public_key)
        self.on_connection = on_connection
        self.firewall = firewall
        self.relays: list[tuple[SocketAddress, SocketAddress]] = []  # (node, us as it saw us)
        self._handshakes: dict[bytes, _PendingHandshake] = {}
        self._punches: dict[int, _ServerPunchEntry] = {}
        self._cancel = trio.CancelScope()
        self.listening = False
        self.connections = 0
        self.relay_ping_interval = RELAY_PING_INTERVAL
        self._announced = trio.Event()

    @property
    def public_key(self) -> bytes:
        return self.key_pair.public_key

    @property
    def relay_addresses(self) -> tuple[SocketAddress, ...]:
        return tuple(node for node, _ in self.relays[:MAX_RELAY_ADDRESSES])

    async def listen(self, *, announce: bool = True) -> None:
        """Route handshakes for our key here and self-announce to the closest nodes.

        ``announce=False`` only answers handshakes sent straight to our socket (tests, LANs).
        """
        self.dht.route_to(self)
        self.listening = True
        if announce:
            await self.announce()
            self.dht.nursery.start_soon(self._refresh_loop)

    async def _refresh_loop(self) -> None:
        """Ping the relays every few seconds; re-announce when one stops answering, and every
        ``ANNOUNCE_REFRESH`` anyway (hyperdht's announcer does the same)."""
        with self._cancel:
            announced_at = trio.current_time()
            while True:
                await trio.sleep(self.relay_ping_interval)
                alive = await self._ping_relays()
                stale = trio.current_time() - announced_at >= ANNOUNCE_REFRESH
                if alive < min(len(self.relays), ANNOUNCE_RELAYS) or not self.relays or stale:
                    try:
                        await self.announce()
                        announced_at = trio.current_time()
                    except DhtError as exc:
                        log.warning("re-announce failed: %s", exc)

    async def _ping_relays(self) -> int:
        alive = 0

        async def ping(node: SocketAddress) -> None:
            nonlocal alive
            try:
                await self.dht.node.request(node, PING, internal=True, retries=1)
                alive += 1
            except DhtError:
                log.debug("relay %s stopped answering", node)

        async with trio.open_nursery() as nursery:
            for node, _ in self.relays:
                nursery.start_soon(ping, node)
        return alive

    async def announce(self) -> None:
        """FIND_PEER our target, then signed ANNOUNCE to the 3 closest storage nodes."""
        res = await query(self.dht.node, self.target, FIND_PEER)
        best = res.closest_replies[:ANNOUNCE_RELAYS]
        if not best:
            raise QueryError("no storage node answered; cannot announce")
        relays: list[tuple[SocketAddress, SocketAddress]] = []

        async def commit(reply: QueryReply) -> None:
            try:
                await self.dht._send_announce(ANNOUNCE, self.target, self.key_pair, reply, ())
            except DhtError as exc:
                log.debug("announce to %s failed: %s", reply.from_addr, exc)
                return
            relays.append((reply.from_addr, reply.response.to))

        async with trio.open_nursery() as nursery:
            for reply in best:
                nursery.start_soon(commit, reply)
        if not relays:
            raise QueryError("every storage node refused our announcement")
        self.relays = relays
        self._announced.set()
        self._announced = trio.Event()

    async def wait_announced(self) -> None:
        """Wait for the next successful (re-)announcement."""
        await self._announced.wait()

    async def close(self) -> None:
        """Stop routing handshakes here and unannounce from our relays."""
        if not self.listening:
            return
        self.listening = False
        self._cancel.cancel()
        self.dht.unroute(self)
        relays, self.relays = self.relays, []
        if not relays:
            return
        with trio.move_on_after(5):
            try:
                res = await query(self.dht.node, self.target, FIND_PEER,
                                  nodes=[node for node, _ in relays])
            except DhtError:
                return
            async with trio.open_nursery() as nursery:
                for reply in res.closest_replies:
                    if reply.value is not None:
                        nursery.start_soon(self.dht._try_unannounce, self.target,
                                           self.key_pair, reply)

    # -- holepunching ----------------------------------------------------------------------

    async def _prepare_punch(self, punch: _ServerPunchEntry,
                             secure_payload: hp.SecurePayload) -> None:
        """Run the puncher socket the reply went out from and learn its NAT before the
        client's rounds need it."""
        sock = await punch.sockets.open()
        punch.core = hp.ServerPunch(secure_payload, punch.sockets.nat)
        await punch.sockets.sample_nat(sock)
        punch.ready.set()

    async def _forget_punch(self, punch_id: int, punch: _ServerPunchEntry) -> None:
        await trio.sleep(HANDSHAKE_CLEAR_WAIT)  # late rounds still find it meanwhile
        if self._punches.get(punch_id) is punch:
            del self._punches[punch_id]

    def on_peer_holepunch(self, req: IncomingRequest, msg: HolepunchMessage) -> None:
        """A client's round relayed to us (FROM_RELAY); answered from a task."""
        punch = self._punches.get(msg.id)
        if punch is None or msg.peer_address is None or not self.listening:
            return
        self.dht.nursery.start_soon(self._answer_round, req, msg, punch)

    async def _answer_round(self, req: IncomingRequest, msg: HolepunchMessage,
                            punch: _ServerPunchEntry) -> None:
        with trio.move_on_after(5):
            await punch.ready.wait()
        core, peer = punch.core, msg.peer_address
        if core is None or peer is None or not punch.ready.is_set() or core.aborted:
            return
        from_relay = any(node == req.from_addr for node, _ in self.relays)
        got = core.receive(msg.payload, peer, from_relay)
        if got is None:
            return
        now = trio.current_time()
        answer = core.decide(got, peer, from_relay, self.dht.random_punches, now)
        if answer.fast_open is not None:
            punch.sockets.probe(punch.sockets.sockets[0], answer.fast_open)
        if answer.punch is not None:
            punch.deadline = now + hp.PUNCH_TIMEOUT
            self.dht.nursery.start_soon(self._punch, punch, answer.punch, answer.random_punch)
        req.relay(encode_holepunch(HolepunchMessage(Mode.FROM_SERVER, 0, answer.reply, peer)),
                  req.from_addr, via=punch.sockets.transport(punch.sockets.sockets[0]))

    async def _punch(self, punch: _ServerPunchEntry,
                     chosen: tuple[hp.Strategy, SocketAddress | None], random_punch: bool) -> None:
        assert punch.core is not None
        limiter = self.dht.random_punches
        if random_punch:
            limiter.start()
        try:
            plan = hp.punch_plan(chosen[0], punch.core.remote, chosen[1], is_initiator=False)
            with trio.move_on_after(hp.PUNCH_TIMEOUT):
                await punch.sockets.run_plan(plan, punch.connected)
        finally:
            if random_punch:
                limiter.finish(trio.current_time())

    # -- handshake (runs synchronously inside the dht-rpc receive path) ------------------

    def on_peer_handshake(self, req: IncomingRequest, hs: Handshake) -> None:
        now = trio.current_time()
        for k in [k for k, v in self._handshakes.items() if now - v.created > HANDSHAKE_CLEAR_WAIT]:
            del self._handshakes[k]
        pending = self._handshakes.get(hs.noise)
        if pending is None:
            if len(self._handshakes) >= MAX_PENDING_HANDSHAKES:
                return  # flooded: new clients retry once the cache drains
            client_address = hs.peer_address or req.from_addr
            pending = _PendingHandshake(*self._answer(hs, req, client_address), created=now)
            self._handshakes[hs.noise] = pending
        if pending.reply is None:
            return
        if hs.mode == Mode.FROM_CLIENT:
            req.reply(encode_handshake(Handshake(Mode.REPLY, pending.reply)), token=False,
                      closer_nodes=False)
        elif hs.mode == Mode.FROM_RELAY:
            req.relay(encode_handshake(Handshake(Mode.FROM_SERVER, pending.reply,
                                                 hs.peer_address)), req.from_addr,
                      via=pending.via)
        elif hs.mode == Mode.FROM_SECOND_RELAY and hs.relay_address is not None:
            req.relay(encode_handshake(Handshake(Mode.FROM_SERVER, pending.reply,
                                                 hs.peer_address)), hs.relay_address,
                      via=pending.via)

    def _answer(self, hs: Handshake, req: IncomingRequest, client_address: SocketAddress,
                ) -> tuple[bytes | None, DatagramTransport | None]:
        noise = dht_handshake(self.key_pair)
        try:
            remote = decode_noise_payload(noise.recv(hs.noise))
        except (HandshakeError, HyperDhtProtocolError) as exc:
            log.debug("bad handshake from %s: %s", client_address, exc)
            return None, None
        remote_key = _remote_static(noise)
        if self.firewall is not None and self.firewall(remote_key, remote, client_address):
            return None, None
        error = (Error.NONE if remote.udx is not None else Error.ABORTED) if remote.version == 1 \
            else Error.VERSION_MISMATCH
        direct = hs.peer_address is None
        connected = trio.Event()
        stream: UdxStream | None = None
        punch: _ServerPunchEntry | None = None
        punch_id = 0
        relay_sources: set[tuple[str, int]] = set()
        # Not OPEN: say so with our relays (hyperdht always does), so that an OPEN client
        # waits for our first packet rather than aiming at a NAT mapping that is not its own.
        holepunchable = self.dht.firewall_claim() != Firewall.OPEN and bool(self.relays)
        if (error == Error.NONE and not direct and remote.firewall != Firewall.OPEN
                and holepunchable):
            # behind a NAT, and so is the client: punch through our relays
            punch_id = next(i for i in range(len(self._punches) + 1) if i not in self._punches)
            punch = _ServerPunchEntry(_PunchSockets(self.dht, _echo_probe), connected)
            punch.deadline = trio.current_time() + HANDSHAKE_INITIAL_TIMEOUT
            self._punches[punch_id] = punch
        if error == Error.NONE:
            assert remote.udx is not None
            remote_udx = remote.udx.id

            def first_packet(s: UdxStream, addr: tuple[str, int]) -> bool:
                if not 0 < addr[1] < 65536:
                    return True
                if addr in relay_sources:
                    return False  # forwarded by the relay before our pair reply came
                s.connect(remote_udx, addr)
                connected.set()
                return False

            stream = self.dht.socket.create_stream(firewall=first_packet)
        reply_payload = NoisePayload(
            error=error, firewall=self.dht.firewall_claim(),
            addresses4=(self.dht.local_address,),
            udx=UdxInfo(stream.id if stream else 0), secret_stream=True,
            relay_addresses=self.relay_addresses or None,
            holepunch=HolepunchInfo(punch_id, tuple(
                RelayInfo(node, seen) for node, seen in self.relays[:MAX_RELAY_ADDRESSES]))
            if holepunchable else None)
        reply = noise.send(encode_noise_payload(reply_payload))
        result = noise.result
        assert result is not None
        if stream is None:
            return reply, None
        via: DatagramTransport | None = None
        if punch is not None:
            try:
                via = punch.sockets.bind_first()
            except OSError as exc:
                log.debug("no puncher socket: %s", exc)
            else:
                self.dht.nursery.start_soon(self._prepare_punch, punch,
                                            hp.SecurePayload(result.holepunch_secret))
        if remote.firewall == Firewall.OPEN or direct:
            assert remote.udx is not None
            stream.connect(remote.udx.id, (client_address.host, client_address.port))
            connected.set()
        elif remote.relay_through is not None:
            self.dht.nursery.start_soon(self._relay, stream, connected, remote.relay_through,
                                        relay_sources)
        self.dht.nursery.start_soon(self._await_client, stream, connected, result, remote,
                                    punch, punch_id)
        return reply, via

    async def _relay(self, stream: UdxStream, connected: trio.Event, through: RelayThrough,
                     relay_sources: set[tuple[str, int]]) -> None:
        """The client asked for a relay: pair our stream there too (hyperdht's server side of
        ``relayThrough``); the direct path may still win."""
        try:
            path = await blind_relay.pair_through(self.dht, through.public_key,
                                                  is_initiator=False, pair_token=through.token,
                                                  stream=stream, relay_sources=relay_sources)
        except PeerConnectionFailed as exc:
            log.debug("relay for %s failed: %s", stream.id, exc)
            return
        if connected.is_set() or stream.remote_address is not None:
            path.close()
            return
        stream.connect(path.remote_id, (path.address.host, path.address.port),
                       socket=path.socket)
        connected.set()
        await _close_after(path, stream)

    async def _await_client(self, stream: UdxStream, connected: trio.Event,  # noqa: PLR0917
                            result: HandshakeResult, remote: NoisePayload,
                            punch: _ServerPunchEntry | None, punch_id: int) -> None:
        initial = HANDSHAKE_INITIAL_TIMEOUT
        if remote.relay_through is not None:
            initial = max(initial, blind_relay.RELAY_TIMEOUT + 5)
        deadline = trio.current_time() + initial
        while not connected.is_set():
            with trio.move_on_at(deadline):
                await connected.wait()
            if connected.is_set() or punch is None or punch.deadline <= deadline:
                break
            deadline = punch.deadline  # the client is punching: wait for that
        if punch is not None:
            punch.sockets.close(keep_for=stream if connected.is_set() else None)
            self.dht.nursery.start_soon(self._forget_punch, punch_id, punch)
        if not connected.is_set():
            log.debug("client never reached us; dropping its stream")
            await stream.aclose()
            return
        addr = stream.remote_address
        self.connections += 1
        raw = RawConnection(stream, result, remote,
                            SocketAddress(*addr) if addr else None, is_initiator=False)
        await self.on_connection(raw)


async def _close_after(path: blind_relay.Relayed, stream: UdxStream) -> None:
    """A relay connection lives while the stream it carries does."""
    while not stream.core.released:  # noqa: ASYNC110 (a stream has no "released" event)
        await trio.sleep(1.0)
    path.close()


def _echo_probe(sock: UdxSocket, addr: SocketAddress) -> None:
    """A server's puncher answers each probe with one (it connects on the client's first
    UDX packet, not on a probe)."""
    try:
        sock.send_datagram(b"\x00", (addr.host, addr.port))
    except (OSError, trio.ClosedResourceError) as exc:
        log.debug("probe echo to %s not sent: %s", addr, exc)


def _remote_static(noise: NoiseHandshake) -> bytes:
    if noise.result is not None:
        return noise.result.remote_public_key
    if noise.remote_static is None:
        raise HandshakeError("handshake did not reveal the remote key")
    return noise.remote_static


# A handshake reply: (relay, server's Noise message, server address, our address as the relay
# saw it, whether the relay forwarded the handshake: it named the server's address).
_HandshakeReply = tuple[SocketAddress, bytes, SocketAddress, SocketAddress, bool]


def _relay_pairing(remote: NoisePayload, relay_through: bytes | None,
                   relay_token: bytes | None) -> tuple[bytes, bytes, bool] | None:
    """Decides which blind relay to pair through (key, token, initiator): the server's first."""
    if remote.relay_through is not None:  # the server chose a relay
        return (remote.relay_through.public_key, remote.relay_through.token, False)
    if relay_through is not None and relay_token is not None:
        return (relay_through, relay_token, True)
    return None


class HyperDht:
    """A HyperDHT peer on one UDX socket. Open with :meth:`open` (an async context manager)."""

    def __init__(self, sock: UdxSocket, nursery: trio.Nursery, *,
                 bootstrap: Sequence[SocketAddress] = (), key_pair_: KeyPair | None = None,
                 firewall: int | None = None, persistent: bool = False) -> None:
        if persistent:
            _check_persistent_host(sock.address[0])
        self.socket = sock
        self.nursery = nursery
        self.default_key_pair = key_pair_ or key_pair()
        self._firewall_override = firewall
        self._servers: dict[bytes, Server] = {}
        self.random_punches = hp.RandomPunchLimiter()
        self.node = DhtNode(_DhtTransport(sock), bootstrap=bootstrap, ephemeral=not persistent,
                            on_request=self._on_request)
        # persistent: also a storage node (id from our socket address; no firewall detection)
        self.storage = StorageHandler(self.node.id) if persistent else None

    @classmethod
    @asynccontextmanager
    async def open(cls, host: str = "127.0.0.1", port: int = 0, *,
                   bootstrap: Sequence[SocketAddress] = (), key_pair_: KeyPair | None = None,
                   firewall: int | None = None,
                   persistent: bool = False) -> AsyncIterator[HyperDht]:
        """Bind, bootstrap (FIND_NODE on our id) and run until the block exits."""
        if persistent:
            _check_persistent_host(host)
        dispatch: list[Callable[[bytes, tuple[str, int]], None]] = []

        def on_datagram(data: bytes, addr: tuple[str, int]) -> None:
            if dispatch:
                dispatch[0](data, addr)

        async with UdxSocket.bind(host, port, on_datagram=on_datagram) as sock, \
                trio.open_nursery() as nursery:
            dht = cls(sock, nursery, bootstrap=bootstrap, key_pair_=key_pair_,
                      firewall=firewall, persistent=persistent)
            dispatch.append(dht._on_datagram)
            await nursery.start(dht.node.run)
            try:
                if bootstrap:
                    await dht.bootstrap()
                yield dht
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    for server in list(dht._servers.values()):
                        await server.close()
                nursery.cancel_scope.cancel()

    # -- servers -------------------------------------------------------------------------

    def route_to(self, server: Server) -> None:
        """Answer handshakes and holepunch rounds for ``server.target`` with ``server``."""
        if server.target in self._servers:
            raise RuntimeError("already listening on this key")
        self._servers[server.target] = server

    def unroute(self, server: Server) -> None:
        if self._servers.get(server.target) is server:
            del self._servers[server.target]

    # -- identity and socket -----------------------------------------------------------

    @property
    def local_address(self) -> SocketAddress:
        host, port = self.socket.address
        return SocketAddress(host, port)

    def firewall_claim(self) -> int:
        """OPEN when the DHT sees us at our own socket address and others reached us unasked
        (the firewall check), CONSISTENT when seen there but firewalled (a public host that
        drops unsolicited datagrams punches like a consistent NAT, as in hyperdht), else
        UNKNOWN."""
        if self._firewall_override is not None:
            return self._firewall_override
        if self.node.remote_address != self.local_address:
            return Firewall.UNKNOWN
        return Firewall.CONSISTENT if self.node.firewalled else Firewall.OPEN

    def _on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        if is_dht_rpc(data):
            self.node.datagram_received(data, SocketAddress(addr[0], addr[1]))
        # one-byte holepunch probes and stray UDX packets are ignored

    async def bootstrap(self) -> None:
        await query(self.node, self.node.id, FIND_NODE, internal=True)
        if self.node.firewalled and self._firewall_override is None:
            await self.check_firewall()

    async def check_firewall(self) -> bool:
        """Run the DHT's firewall check from a fresh probe socket on our host."""
        probe = await UdpSocket.bind(self.socket.address[0], 0)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(probe.serve, self.node.probe_datagram_received)
                firewalled = await self.node.check_firewall(probe.local_address.port)
                nursery.cancel_scope.cancel()
        finally:
            probe.close()
        return firewalled

    # -- requests from the network -------------------------------------------------------

    def _on_request(self, req: IncomingRequest) -> bool:
        if req.command == PEER_HANDSHAKE:
            self._on_peer_handshake(req)
            return True
        if req.command == PEER_HOLEPUNCH and self._on_peer_holepunch(req):
            return True
        if self.storage is not None:
            return self.storage.on_request(req)
        # Storage commands get UNKNOWN_COMMAND with closer nodes: we are ephemeral.
        return req.command == PEER_HOLEPUNCH

    def _on_peer_holepunch(self, req: IncomingRequest) -> bool:
        """A round for one of our servers (True), else left to the storage router."""
        server = self._servers.get(req.target or b"")
        if server is None:
            return False
        try:
            msg = decode_holepunch(req.value or b"")
        except HyperDhtProtocolError:
            return True
        if msg.mode == Mode.FROM_RELAY:
            server.on_peer_holepunch(req, msg)
        return True

    def _on_peer_handshake(self, req: IncomingRequest) -> None:
        if req.value is None:
            return
        try:
            hs = decode_handshake(req.value)
        except HyperDhtProtocolError:
            return
        server = self._servers.get(req.target or b"")
        if server is not None:
            if hs.noise:
                server.on_peer_handshake(req, hs)
            return
        if self.storage is not None:
            self.storage.on_request(req)  # relay for the servers that announced to us
            return
        if hs.mode == Mode.FROM_CLIENT and hs.noise:
            req.reply(None, token=False, closer_nodes=True)  # we relay for nobody: help route

    # -- discovery -----------------------------------------------------------------------

    async def find_peer(self, public_key: bytes) -> list[tuple[PeerRecord, QueryReply]]:
        """Nodes holding ``public_key``'s self-announcement, with its record."""
        out: list[tuple[PeerRecord, QueryReply]] = []
        res = await query(self.node, blake2b(public_key), FIND_PEER)
        for reply in res.replies:
            if reply.value:
                try:
                    out.append((decode_peer(reply.value), reply))
                except RemoteProtocolError:
                    continue
        return out

    async def lookup(self, topic: bytes,
                     on_peer: Callable[[PeerRecord, QueryReply], None] | None = None
                     ) -> list[PeerRecord]:
        """Peers announced on ``topic`` (deduplicated by key)."""
        found: dict[bytes, PeerRecord] = {}

        def on_reply(reply: QueryReply) -> None:
            for peer in _lookup_peers(reply):
                if peer.public_key not in found:
                    found[peer.public_key] = peer
                    if on_peer is not None:
                        on_peer(peer, reply)

        await query(self.node, topic, LOOKUP, on_reply=on_reply)
        return list(found.values())

    async def announce(self, topic: bytes, kp: KeyPair,
                       relay_addresses: Sequence[SocketAddress] = (), *, clear: bool = False,
                       on_peer: Callable[[PeerRecord, QueryReply], None] | None = None
                       ) -> QueryResult:
        """LOOKUP ``topic`` and commit a signed ANNOUNCE to each of the closest nodes.

        ``clear`` first unannounces us from nodes that still list our key (a previous run).
        """
        relays = tuple(relay_addresses)[:MAX_RELAY_ADDRESSES]
        unannounces: list[QueryReply] = []

        def on_reply(reply: QueryReply) -> None:
            peers = _lookup_peers(reply)
            if clear and reply.token and reply.from_id and (
                    len(peers) >= 20 or any(p.public_key == kp.public_key for p in peers)):
                unannounces.append(reply)
            if on_peer is not None:
                for peer in peers:
                    on_peer(peer, reply)

        async def commit(reply: QueryReply) -> None:
            if reply in unannounces:
                await self._try_unannounce(topic, kp, reply)
            await self._send_announce(ANNOUNCE, topic, kp, reply, relays)

        return await query(self.node, topic, LOOKUP, on_reply=on_reply, commit=commit)

    async def unannounce(self, topic: bytes, kp: KeyPair) -> None:
        """Remove our record from the nodes that hold it."""
        holders: list[QueryReply] = []

        def on_reply(reply: QueryReply) -> None:
            if any(p.public_key == kp.public_key for p in _lookup_peers(reply)):
                holders.append(reply)

        await query(self.node, topic, LOOKUP, on_reply=on_reply)
        async with trio.open_nursery() as nursery:
            for reply in holders:
                nursery.start_soon(self._try_unannounce, topic, kp, reply)

    async def _try_unannounce(self, target: bytes, kp: KeyPair, reply: QueryReply) -> None:
        try:
            await self._send_announce(UNANNOUNCE, target, kp, reply, ())
        except DhtError as exc:
            log.debug("unannounce at %s failed: %s", reply.from_addr, exc)

    async def _send_announce(self, command: int, target: bytes, kp: KeyPair, reply: QueryReply,
                             relays: tuple[SocketAddress, ...]) -> None:
        if reply.token is None or reply.from_id is None:
            raise QueryError("storage node gave no token or id")
        peer = PeerRecord(kp.public_key, relays)
        ns = NS_ANNOUNCE if command == ANNOUNCE else NS_UNANNOUNCE
        signature = sign(announce_signable(target, reply.token, reply.from_id, peer,
                                                   refresh=None, namespace=ns),
                         kp.secret_key)
        value = encode_announce(Announce(peer, None, signature))
        res = await self.node.request(reply.from_addr, command, target=target, value=value,
                                      token=reply.token)
        if res.error:
            raise QueryError(f"storage node refused with error {res.error}")

    # -- connections ---------------------------------------------------------------------

    def create_server(self, on_connection: Callable[[RawConnection], Awaitable[None]], *,
                      key_pair_: KeyPair | None = None,
                      firewall: ServerFirewall | None = None) -> Server:
        return Server(self, key_pair_ or self.default_key_pair, on_connection, firewall)

    async def connect(self, remote_public_key: bytes, *, key_pair_: KeyPair | None = None,
                      relay_addresses: Sequence[SocketAddress] = (),
                      timeout: float = 20.0,
                      relay_through: bytes | None = None) -> RawConnection:
        """Open a Noise-keyed UDX stream to the server listening on ``remote_public_key``,
        holepunching when both sides are behind NATs (:class:`HolepunchFailed` when that
        cannot work or did not; a random-NAT punch may take up to ``hp.PUNCH_TIMEOUT``).

        ``relay_through``: the key of a blind relay; both sides pair through it while the
        direct path is tried, and the first path that works carries the stream (a relayed
        stream stays relayed). A server may name its own relay the same way."""
        kp = key_pair_ or self.default_key_pair
        target = blake2b(remote_public_key)
        first_packet: list[tuple[SocketAddress, UdxSocket]] = []
        arrived = trio.Event()
        relay_sources: set[tuple[str, int]] = set()

        def on_early_packet(s: UdxStream, addr: tuple[str, int]) -> bool:
            if not 0 < addr[1] < 65536:
                return True
            if addr in relay_sources:
                return False  # forwarded by our relay: kept for when we connect there
            if not first_packet:
                first_packet.append((SocketAddress(*addr), s.socket))  # the arrival socket
                arrived.set()
            return False  # accept: buffered until we connect

        stream = self.socket.create_stream(firewall=on_early_packet)
        noise = dht_handshake(kp, remote_public_key)
        relay_token = blind_relay.token() if relay_through is not None else None
        payload = NoisePayload(firewall=self.firewall_claim(),
                               addresses4=(self.local_address,),
                               udx=UdxInfo(stream.id), secret_stream=True,
                               relay_through=RelayThrough(relay_through, relay_token)
                               if relay_through is not None and relay_token is not None
                               else None)
        msg1 = noise.send(encode_noise_payload(payload))
        request_value = encode_handshake(Handshake(Mode.FROM_CLIENT, msg1))
        relay, reply_noise, server_address, client_address, relayed = await self._handshake_reply(
            stream, target, remote_public_key, request_value,
            relay_addresses=relay_addresses, timeout=timeout)
        remote, udx = await self._read_reply(stream, noise, reply_noise)
        hs_result = noise.result
        assert hs_result is not None
        decision = hp.choose_path(
            remote, server_address=server_address, client_address=client_address,
            relayed=relayed, our_firewall=self.firewall_claim(),
            first_packet=first_packet[0][0] if first_packet else None)
        at = _Attempt(stream, remote, hs_result, target, relay, server_address, first_packet,
                      arrived, relay_sources)
        pairing = _relay_pairing(remote, relay_through, relay_token)
        sock, target_addr = await self._take_path(decision, at, pairing, timeout)
        if stream.remote_address is None:
            remote_id = at.relayed.remote_id if at.relayed is not None else udx.id
            stream.connect(remote_id, (target_addr.host, target_addr.port), socket=sock)
        return RawConnection(stream, hs_result, remote, target_addr, is_initiator=True,
                             relayed=at.relayed is not None)

    async def _handshake_reply(self, stream: UdxStream, target: bytes, remote_public_key: bytes,
                               request_value: bytes, *, relay_addresses: Sequence[SocketAddress],
                               timeout: float) -> _HandshakeReply:
        """Decides which relay (given ones, then the key's holders) answers our handshake."""
        attempted = False
        result: _HandshakeReply | None = None

        async def via(relay: SocketAddress) -> _HandshakeReply | None:
            nonlocal attempted
            attempted = True
            try:
                p = self.node.start_request(relay, PEER_HANDSHAKE, target=target,
                                            value=request_value, retries=HANDSHAKE_RETRIES)
                res = await self.node.wait_response(p)
                hs = decode_handshake(res.value or b"")
            except (DhtError, HyperDhtProtocolError):
                return None
            if hs.mode != Mode.REPLY or not hs.noise or p.from_addr != relay:
                return None
            server_address = hs.peer_address or relay
            return (relay, hs.noise, server_address, res.to, hs.peer_address is not None)

        try:
            with trio.fail_after(timeout):
                result = await _first_success(via, list(relay_addresses))
                if result is None:
                    holders = [reply.from_addr
                               for _peer, reply in await self.find_peer(remote_public_key)]
                    result = await _first_success(via, holders)
        except trio.TooSlowError:
            await stream.aclose()
            raise PeerConnectionFailed("connect timed out") from None
        except BaseException:
            await stream.aclose()
            raise
        if result is None:
            await stream.aclose()
            raise (PeerConnectionFailed("every relay failed") if attempted
                   else PeerNotFound("no DHT node knows this key"))
        return result

    async def _read_reply(self, stream: UdxStream, noise: NoiseHandshake,
                          reply_noise: bytes) -> tuple[NoisePayload, UdxInfo]:
        """Decides whether the server's handshake reply accepts us (its payload, UDX info)."""
        try:
            remote = decode_noise_payload(noise.recv(reply_noise))
        except (HandshakeError, HyperDhtProtocolError) as exc:
            await stream.aclose()
            raise PeerConnectionFailed(f"bad handshake reply: {exc}") from exc
        if remote.version != 1 or remote.error != Error.NONE or remote.udx is None:
            await stream.aclose()
            raise PeerConnectionFailed(f"server refused: version {remote.version}, "
                                       f"error {remote.error}")
        return remote, remote.udx

    async def _take_path(self, decision: hp.PathDecision, at: _Attempt,
                         pairing: tuple[bytes, bytes, bool] | None,
                         timeout: float) -> tuple[UdxSocket | None, SocketAddress]:
        """Decides the stream's path (direct, or raced with a relay) within the punch deadline."""
        try:
            with trio.fail_after(hp.PUNCH_TIMEOUT + timeout):
                if pairing is None:
                    return await self._follow_path(decision, at)
                return await self._path_or_relay(decision, at, pairing)
        except BaseException as exc:
            await at.stream.aclose()
            if isinstance(exc, trio.TooSlowError):
                raise HolepunchFailed("HOLEPUNCH_ABORTED", "punching timed out") from None
            raise

    async def _path_or_relay(self, decision: hp.PathDecision, at: _Attempt,
                             pairing: tuple[bytes, bytes, bool],
                             ) -> tuple[UdxSocket | None, SocketAddress]:
        """The direct path and the relay race; the first that works carries the stream."""
        won: list[tuple[UdxSocket | None, SocketAddress]] = []
        failed: list[PeerConnectionFailed] = []

        async def direct(scope: trio.CancelScope) -> None:
            try:
                won.append(await self._follow_path(decision, at))
                scope.cancel()
            except PeerConnectionFailed as exc:
                failed.append(exc)  # the relay may still connect us

        async def relayed(scope: trio.CancelScope) -> None:
            key, token, initiator = pairing
            try:
                path = await blind_relay.pair_through(self, key, is_initiator=initiator,
                                                      pair_token=token, stream=at.stream,
                                                      relay_sources=at.relay_sources)
            except PeerConnectionFailed as exc:
                failed.append(exc)
                return
            if won:
                path.close()
                return
            at.relayed = path
            self.nursery.start_soon(_close_after, path, at.stream)
            won.append((path.socket, path.address))
            scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(direct, nursery.cancel_scope)
            nursery.start_soon(relayed, nursery.cancel_scope)
        if won:
            return won[0]
        raise blind_relay.RelayFailed("; ".join(str(f) for f in failed))

    async def _follow_path(self, decision: hp.PathDecision,
                           at: _Attempt) -> tuple[UdxSocket | None, SocketAddress]:
        """Carry out the core's path decision: (socket to send from, None for ours; address)."""
        first_packet = at.first_packet
        if isinstance(decision, hp.Connect):
            if first_packet and first_packet[0][0] == decision.address:
                return first_packet[0][1], decision.address
            return None, decision.address
        if isinstance(decision, hp.Unreachable):
            raise decision.error
        if isinstance(decision, hp.PassiveWait):
            with trio.move_on_after(hp.PASSIVE_TIMEOUT):
                await at.arrived.wait()
            if not first_packet:
                raise HolepunchFailed("HOLEPUNCH_ABORTED", "the server never reached us")
            return first_packet[0][1], first_packet[0][0]
        if isinstance(decision, hp.LanPing):
            for addr in decision.candidates:
                try:
                    await self.node.request(addr, PING, internal=True, retries=1)
                except DhtError:
                    continue
                return None, addr
        return await self._client_punch(at)

    async def _client_punch(self, at: _Attempt) -> tuple[UdxSocket | None, SocketAddress]:
        """``probeRound`` then ``roundPunch`` through the relays, then probes until one of the
        server's probes (or its first packet) reaches one of our puncher sockets."""
        remote, relay, done = at.remote, at.relay, at.arrived
        assert remote.holepunch is not None
        info = remote.holepunch
        won: list[tuple[UdxSocket, SocketAddress]] = []

        def on_probe(sock: UdxSocket, addr: SocketAddress) -> None:
            if not won:
                won.append((sock, addr))
                done.set()

        punch = _PunchSockets(self, on_probe)
        secure_payload = hp.SecurePayload(at.handshake.holepunch_secret)
        server_relay = next((r for r in info.relays if r.relay_address == relay), info.relays[0])
        rounds = _HolepunchRounds(self, punch, at, server_relay, secure_payload)
        state = hp.RemoteState(remote.firewall)
        try:
            first = await punch.open()
            # bounded: two rounds of single-attempt pings
            self.nursery.start_soon(punch.sample_nat, first)
            token, server_address = await self._probe_rounds(rounds, first, state)
            await self._punch_round(rounds, state, server_address, token, done)
            if won:
                return won[0]
            if at.first_packet:
                return at.first_packet[0][1], at.first_packet[0][0]
            raise HolepunchFailed("HOLEPUNCH_ABORTED", "no probe got through the NATs")
        finally:
            punch.close(keep_for=at.stream, keep=won[0][0] if won else None)

    async def _probe_rounds(self, rounds: _HolepunchRounds, first: UdxSocket,
                            state: hp.RemoteState) -> tuple[bytes | None, SocketAddress]:
        """``probeRound``: decides when both NATs are known well enough to punch."""
        punch, relay, server_relay = rounds.punch, rounds.at.relay, rounds.server_relay
        server_address = rounds.at.server_address
        retry = True
        while True:
            punch.probe(first, server_address, low_ttl=True)
            got, peer = await rounds.update(server_relay.peer_address,
                                            server_relay.relay_address,
                                            hp.probe_payload(rounds.count, punch.nat,
                                                             server_address))
            state.update(got, None)
            if server_relay.relay_address == relay and peer != server_address:
                server_address = peer  # the server answered from its puncher socket
                punch.probe(first, server_address, low_ttl=True)
            if state.firewall == Firewall.UNKNOWN:
                await trio.sleep(1.0)
            await punch.analysed.wait()
            try:
                verdict = hp.after_probe(state, punch.nat, got.token, retry=retry)
            except HolepunchFailed:
                await rounds.abort()
                raise
            if verdict == hp.ProbeVerdict.PUNCH:
                return got.token, server_address
            retry = False

    async def _punch_round(self, rounds: _HolepunchRounds, state: hp.RemoteState,
                           server_address: SocketAddress, token: bytes | None,
                           done: trio.Event) -> None:
        """``roundPunch``: decides the punching strategy for both NATs and runs its plan."""
        punch, relay = rounds.punch, rounds.at.relay
        punch.nat.freeze()
        random_punch = hp.is_random_punch(punch.nat.firewall, state.firewall)
        if random_punch and not self.random_punches.allowed(trio.current_time()):
            await rounds.abort()
            raise HolepunchFailed("HOLEPUNCH_ABORTED",
                                  "another random-NAT punch is running or ran less "
                                  "than 20 s ago, and no relay is configured")
        mine = rounds.secure_payload.token(server_address)
        got, _ = await rounds.update(server_address, relay,
                                     hp.punch_payload(rounds.count, punch.nat, token=mine,
                                                      remote_token=token))
        state.update(got, server_address.host if got.remote_token == mine else None)
        if not state.punching:
            raise HolepunchFailed("REMOTE_NOT_HOLEPUNCHING", "the server does not punch")
        chosen = hp.punch_strategy(punch.nat.firewall, state)
        if chosen is None:
            raise HolepunchFailed("REMOTE_NOT_HOLEPUNCHABLE",
                                  "no punching strategy fits these NATs")
        if random_punch:
            self.random_punches.start()
        try:
            plan = hp.punch_plan(chosen[0], state, chosen[1], is_initiator=True)
            await punch.run_plan(plan, done)
        finally:
            if random_punch:
                self.random_punches.finish(trio.current_time())


class _HolepunchRounds:
    """The client's numbered PEER_HOLEPUNCH exchanges of one punch, sent from its first
    puncher socket through a relay, with the payloads sealed by the handshake's secret."""

    def __init__(self, dht: HyperDht, punch: _PunchSockets, at: _Attempt,
                 server_relay: RelayInfo,
                 secure_payload: hp.SecurePayload) -> None:
        assert at.remote.holepunch is not None
        self.dht = dht
        self.punch = punch
        self.at = at
        self.info = at.remote.holepunch
        self.server_relay = server_relay
        self.secure_payload = secure_payload
        self.count = 0

    async def update(self, peer: SocketAddress, to: SocketAddress, payload: HolepunchPayload,
                     ) -> tuple[HolepunchPayload, SocketAddress]:
        """One round through ``to``: decides the server's checked answer and its address."""
        self.count += 1
        value = encode_holepunch(HolepunchMessage(
            Mode.FROM_CLIENT, self.info.id, self.secure_payload.encrypt(payload), peer))
        try:
            res = await self.dht.node.request(to, PEER_HOLEPUNCH, target=self.at.target,
                                              value=value,
                                              via=self.punch.transport(self.punch.sockets[0]))
            msg = decode_holepunch(res.value or b"")
        except (DhtError, HyperDhtProtocolError) as exc:
            raise HolepunchFailed("HOLEPUNCH_ABORTED",
                                  f"holepunch round through {to.host}:{to.port}: {exc}"
                                  ) from exc
        if msg.mode != Mode.REPLY:
            raise HolepunchFailed("HOLEPUNCH_INVALID", "bad holepunch reply")
        self.punch.nat.add(res.to, to)
        got = hp.check_reply(self.secure_payload.decrypt(msg.payload), try_later_ok=False)
        return got, msg.peer_address or to

    async def abort(self) -> None:
        """Tells the server (through its relay, best effort, within 2 s) that we give up."""
        with trio.move_on_after(2):
            with suppress(HolepunchFailed):
                await self.update(self.server_relay.peer_address,
                                  self.server_relay.relay_address,
                                  hp.abort_payload(self.count))


@dataclass(eq=False)
class _Attempt:
    """A client's connect after the handshake reply: what the path choice works with."""

    stream: UdxStream
    remote: NoisePayload
    handshake: HandshakeResult
    target: bytes
    relay: SocketAddress
    server_address: SocketAddress
    first_packet: list[tuple[SocketAddress, UdxSocket]]
    arrived: trio.Event
    relay_sources: set[tuple[str, int]]
    relayed: blind_relay.Relayed | None = None


class _PunchSockets:
    """The puncher sockets of one punch (Node's socket pool): each shares the DHT's UDX stream
    table, feeds dht-rpc datagrams to the DHT node and reports 1-byte probes. :meth:`close`
    closes them all but the one a stream moved to, which lives until that stream is done."""

    def __init__(self, dht: HyperDht,
                 on_probe: Callable[[UdxSocket, SocketAddress], None]) -> None:
        self.dht = dht
        self.on_probe = on_probe
        self.sockets: list[UdxSocket] = []
        self.nat = hp.NatSampler()
        self.analysed = trio.Event()
        self._scopes: dict[int, trio.CancelScope] = {}
        self._transports: dict[int, _DhtTransport] = {}
        self._closed = False
        self._bound: UdpTransport | None = None

    def transport(self, sock: UdxSocket) -> _DhtTransport:
        return self._transports[id(sock)]

    def bind_first(self) -> DatagramTransport:
        """Bind the first socket now, to send from it at once; :meth:`open` then runs it."""
        self._bound = UdpTransport.bind(self.dht.socket.address[0], 0)
        return _UdpSender(self._bound)

    async def open(self) -> UdxSocket:
        sock: UdxSocket = await self.dht.nursery.start(self._run)
        return sock

    async def _run(self, task_status: trio.TaskStatus[UdxSocket]) -> None:
        cell: list[UdxSocket] = []

        def on_datagram(data: bytes, addr: tuple[str, int]) -> None:
            if not cell or not 0 < addr[1] < 65536:
                return
            if len(data) <= 1:
                self.on_probe(cell[0], SocketAddress(*addr))
            elif is_dht_rpc(data):
                self.dht.node.datagram_received(data, SocketAddress(*addr),
                                                via=self._transports[id(cell[0])])

        with trio.CancelScope() as scope:
            bound, self._bound = self._bound, None
            udp = bound or UdpTransport.bind(self.dht.socket.address[0], 0)
            async with UdxSocket.over(udp, on_datagram=on_datagram,
                                      share_streams_with=self.dht.socket) as sock:
                cell.append(sock)
                self.sockets.append(sock)
                self._scopes[id(sock)] = scope
                self._transports[id(sock)] = _DhtTransport(sock)
                if self._closed:
                    scope.cancel()
                task_status.started(sock)
                await trio.sleep_forever()

    def probe(self, sock: UdxSocket, addr: SocketAddress, low_ttl: bool = False) -> None:
        """A 1-byte ``0x00`` from ``sock`` (low TTL: opens our NAT, dies before theirs)."""
        if not 0 < addr.port < 65536:
            return
        transport = sock.transport
        try:
            if low_ttl and isinstance(transport, UdpTransport):
                transport.send_with_ttl(b"\x00", (addr.host, addr.port), hp.LOW_TTL)
            else:
                sock.send_datagram(b"\x00", (addr.host, addr.port))
        except (OSError, trio.ClosedResourceError, ValueError) as exc:
            log.debug("probe to %s not sent: %s", addr, exc)

    async def sample_nat(self, sock: UdxSocket) -> None:
        """Ping up to 4 DHT nodes from ``sock``; the addresses they saw classify its NAT
        (``nat.js`` ``autoSample``, with one more try for nodes that did not answer)."""
        tried: set[SocketAddress] = set()
        try:
            for _attempt in range(2):
                nodes = [n.address for n in reversed(list(self.dht.node.table.nodes()))]
                nodes += self.dht.node.bootstrap_nodes
                fresh = [a for a in nodes if a not in tried][:max(0, hp.NAT_SAMPLES
                                                                  - self.nat.sampled)]
                if not fresh:
                    break
                tried.update(fresh)
                async with trio.open_nursery() as nursery:
                    for addr in fresh:
                        nursery.start_soon(self._ping, sock, addr)
                if self.nat.done:
                    break
        finally:
            self.nat.give_up()
            self.analysed.set()

    async def _ping(self, sock: UdxSocket, addr: SocketAddress) -> None:
        try:
            res = await self.dht.node.request(addr, PING, internal=True, retries=0,
                                              via=self.transport(sock))
        except DhtError:
            return
        self.nat.add(res.to, addr)

    async def run_plan(self, plan: Iterator[hp.Action], done: trio.Event) -> None:
        for action in plan:
            if done.is_set():
                return
            if isinstance(action, hp.Wait):
                with trio.move_on_after(action.seconds):
                    await done.wait()
            elif isinstance(action, hp.OpenSocket):
                await self.open()
            elif action.socket < len(self.sockets):
                self.probe(self.sockets[action.socket], action.address, action.low_ttl)

    def close(self, keep_for: UdxStream | None = None, keep: UdxSocket | None = None) -> None:
        """Close every socket but the one ``keep_for`` sends (or is about to send, ``keep``)
        through, which closes after that stream."""
        self._closed = True
        keep = keep or (keep_for.socket if keep_for is not None else None)
        for sock in self.sockets:
            if keep_for is not None and keep is sock:
                self.dht.nursery.start_soon(self._linger, sock, keep_for)
            else:
                self._scopes[id(sock)].cancel()

    async def _linger(self, sock: UdxSocket, stream: UdxStream) -> None:
        while not stream.core.released:  # noqa: ASYNC110 (a stream has no "released" event)
            await trio.sleep(1.0)
        self._scopes[id(sock)].cancel()


def _check_persistent_host(host: str) -> None:
    if host == WILDCARD_HOST:
        raise ValueError("a persistent node's id derives from its address: bind the "
                         "address others reach it at, not 0.0.0.0")


T = TypeVar("T")


async def _first_success(attempt: Callable[[SocketAddress], Awaitable[T | None]],
                         candidates: list[SocketAddress]) -> T | None:
    """Try candidates at most ``PARALLEL_HANDSHAKES`` at a time; the first non-None wins and
    cancels the rest (the server answers the same Noise message identically on every path)."""
    winner: list[T] = []
    limit = trio.Semaphore(PARALLEL_HANDSHAKES)

    async def one(addr: SocketAddress, scope: trio.CancelScope) -> None:
        async with limit:
            if winner:
                return
            result = await attempt(addr)
        if result is not None and not winner:
            winner.append(result)
            scope.cancel()

    async with trio.open_nursery() as nursery:
        for addr in candidates:
            nursery.start_soon(one, addr, nursery.cancel_scope)
    return winner[0] if winner else None


def _lookup_peers(reply: QueryReply) -> tuple[PeerRecord, ...]:
    if not reply.value:
        return ()
    try:
        return decode_lookup_reply(reply.value).peers
    except RemoteProtocolError:
        return ()


class _UdpSender:
    """Sends dht-rpc datagrams through a bound UDP socket that is not running yet."""

    def __init__(self, udp: UdpTransport) -> None:
        self._udp = udp

    @property
    def local_address(self) -> SocketAddress:
        return SocketAddress(*self._udp.local_address)

    def send_datagram(self, data: bytes, addr: SocketAddress) -> None:
        try:
            self._udp.send(data, (addr.host, addr.port))
        except OSError as exc:
            log.debug("datagram to %s not sent: %s", addr, exc)


class _DhtTransport:
    """Sends dht-rpc datagrams through the UDX socket."""

    def __init__(self, sock: UdxSocket) -> None:
        self._sock = sock

    @property
    def local_address(self) -> SocketAddress:
        host, port = self._sock.address
        return SocketAddress(host, port)

    def send_datagram(self, data: bytes, addr: SocketAddress) -> None:
        try:
            self._sock.send_datagram(data, (addr.host, addr.port))
        except (trio.ClosedResourceError, ValueError) as exc:
            log.debug("datagram to %s not sent: %s", addr, exc)

