"""A dht-rpc node for trio: answers the internal commands, sends requests, keeps the routing
table and learns its own public address from replies.

The node is ephemeral by default (it never sends an id and is never stored by others), which is
what clients and the project's bootstrap node are. It does not own a socket: feed it datagrams
with :meth:`DhtNode.datagram_received` and give it a :class:`DatagramTransport` to send through,
so the same UDP socket can carry UDX streams. Run :meth:`DhtNode.run` in a nursery.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import trio

from p2p_transport.cenc import DecodeError, Reader, SocketAddress, Writer
from p2p_transport.errors import TransportError

from .io import DEFAULT_RETRIES, DEFAULT_TIMEOUT, PendingRequest, RequestIO
from .messages import (
    DELAYED_PING,
    DOWN_HINT,
    FIND_NODE,
    INVALID_TOKEN,
    PING,
    PING_NAT,
    UNKNOWN_COMMAND,
    DhtRpcProtocolError,
    Request,
    Response,
    decode_message,
    encode_request,
    encode_response,
    node_id,
)
from .routing import K, Node, RoutingTable
from .socket import DatagramTransport

__all__ = ["DhtError", "DhtNode", "IncomingRequest", "RemoteError", "RequestTimeout"]

log = logging.getLogger(__name__)

TICK_INTERVAL = 5.0
PING_EVERY_TICKS = 8
MAX_PING_DELAY = 10.0
MAX_NAT_SAMPLES = 16
MAX_CHECKS = 10  # concurrent DOWN_HINT liveness checks
MAX_CONCURRENT_SWAPS = 3  # full-row ping-and-swap checks in flight (dht-rpc's limit)
FIREWALL_PROBES = 5  # nodes asked for a PING_NAT by the firewall check (dht-rpc's count)


class DhtError(TransportError):
    """Base of the dht-rpc errors a caller sees."""


class RequestTimeout(DhtError):
    """No response after every attempt."""


class RemoteError(DhtError):
    """The remote answered with a non-zero error code."""

    def __init__(self, code: int, response: Response) -> None:
        super().__init__(f"remote error {code}")
        self.code = code
        self.response = response


@dataclass(eq=False)
class IncomingRequest:
    """A request handed to the application, with the ways to answer it."""

    node: DhtNode
    request: Request
    from_addr: SocketAddress
    from_id: bytes | None
    #: the socket it came in on, when not the node's own (a holepunch socket); answers go there
    via: DatagramTransport | None = None

    @property
    def command(self) -> int:
        return self.request.command

    @property
    def target(self) -> bytes | None:
        return self.request.target

    @property
    def value(self) -> bytes | None:
        return self.request.value

    @property
    def token(self) -> bytes | None:
        return self.request.token

    def reply(self, value: bytes | None = None, *, token: bool = True, closer_nodes: bool = True,
              to: SocketAddress | None = None) -> None:
        self.node.send_reply(self.request, to or self.from_addr, 0, value, token=token,
                             closer_nodes=closer_nodes, via=self.via)

    def error(self, code: int, *, token: bool = False, closer_nodes: bool = True) -> None:
        self.node.send_reply(self.request, self.from_addr, code, None, token=token,
                             closer_nodes=closer_nodes)

    def relay(self, value: bytes | None, to: SocketAddress, *,
              via: DatagramTransport | None = None) -> None:
        """Forward the request (same tid, command and target, no token) with a new value,
        through ``via`` when given (else the socket it came in on)."""
        r = self.request
        fwd = Request(r.tid, to, r.command, r.internal, self.node.own_id_on_wire(), None,
                      r.target, value)
        (via or self.via or self.node.transport).send_datagram(encode_request(fwd), to)


RequestHandler = Callable[[IncomingRequest], bool]


class DhtNode:
    """One dht-rpc node over a :class:`DatagramTransport`."""

    def __init__(self, transport: DatagramTransport, *,
                 bootstrap: Sequence[SocketAddress] = (), ephemeral: bool = True,
                 on_request: RequestHandler | None = None, seed: int | None = None,
                 k: int = K) -> None:
        self.transport = transport
        self.bootstrap_nodes = list(bootstrap)
        self.ephemeral = ephemeral
        self.on_request = on_request
        self._rng = random.Random(seed)
        self.io = RequestIO(tid_seed=self._rng.getrandbits(16),
                            token_seed=self._rng.randbytes(64) if seed is not None else None)
        own = node_id(transport.local_address) if not ephemeral else self._rng.randbytes(32)
        self.table = RoutingTable(own, k)
        self._swaps = 0
        self._wake = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._nat_samples: list[SocketAddress] = []
        self._tick = 0
        self._checks = 0
        #: Can others not reach us unasked? True until a firewall check proves otherwise
        #: (dht-rpc's ``firewalled``); a persistent node is reachable by contract.
        self.firewalled = ephemeral
        self._probe_hosts: set[str] | None = None
        self.stats: Counter[str] = Counter()

    # -- identity ------------------------------------------------------------------------

    @property
    def id(self) -> bytes:
        return self.table.id

    def own_id_on_wire(self) -> bytes | None:
        return None if self.ephemeral else self.table.id

    @property
    def remote_address(self) -> SocketAddress | None:
        """Our address as a majority of replies saw it (None until a few agree)."""
        if not self._nat_samples:
            return None
        addr, hits = Counter(self._nat_samples).most_common(1)[0]
        n = len(self._nat_samples)
        need = n if n < 4 else n - 1 if n < 8 else n - 2 if n < 12 else n - 3
        return addr if hits >= need else None

    # -- I/O shell ----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Drive timers (retries, token rotation, table pings) until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            next_tick = trio.current_time() + TICK_INTERVAL
            task_status.started()
            try:
                while True:
                    self._flush()
                    now = trio.current_time()
                    if now >= next_tick:
                        next_tick = now + TICK_INTERVAL
                        self._on_tick()
                    deadline = self.io.next_deadline()
                    wake_at = min(next_tick, deadline if deadline is not None else math.inf)
                    with trio.move_on_at(wake_at):
                        await self._wake.wait()
                    self._wake = trio.Event()
            finally:
                self._nursery = None

    def _flush(self) -> None:
        out, failed = self.io.poll_requests(trio.current_time())
        for pending in out:
            sender = cast("DatagramTransport", pending.meta.get("via") or self.transport)
            sender.send_datagram(pending.datagram, pending.to)
        for pending in failed:
            self.stats["timeouts"] += 1
            node = self.table.get(node_id(pending.to))
            if node is not None and node.address == pending.to:
                self.table.remove(node.id)
            ev = pending.meta.get("event")
            if isinstance(ev, trio.Event):
                ev.set()

    def _on_tick(self) -> None:
        self._tick += 1
        if self._tick % PING_EVERY_TICKS == 0 and self._nursery is not None:
            oldest = sorted(self.table.nodes(), key=lambda n: n.pinged_tick)[:3]
            for node in oldest:
                node.pinged_tick = self._tick
                self._nursery.start_soon(self._check, node)

    async def _check(self, node: Node) -> None:
        try:
            await self.request(node.address, PING, internal=True)
        except DhtError:
            self.table.remove(node.id)

    # -- receiving ----------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: SocketAddress, *,
                          via: DatagramTransport | None = None) -> None:
        """A datagram for us; ``via`` names the socket it came in on when that is not our own
        transport (a holepunch socket: its replies do not sample our own address)."""
        if not 0 < addr.port < 65536:
            return
        try:
            msg = decode_message(data)
        except DhtRpcProtocolError:
            self.stats["malformed"] += 1
            return
        if isinstance(msg, Request):
            self._on_request(msg, addr, via)
        else:
            self._on_response(msg, addr, sample=via is None)

    def _validated_id(self, claimed: bytes | None, addr: SocketAddress) -> bytes | None:
        if claimed is None:
            return None
        expected = node_id(addr)
        return expected if claimed == expected else None

    def _add_node(self, nid: bytes, addr: SocketAddress) -> None:
        existing = self.table.get(nid)
        if existing is not None:
            existing.seen_tick = self._tick
            return
        node = Node(nid, addr, self._tick, self._tick, self._tick)
        if not self.table.add(node) and self._nursery is not None \
                and self._swaps < MAX_CONCURRENT_SWAPS:
            # full row: ping its least recently pinged node and replace it if it is gone
            row = self.table.row_of(nid)
            oldest = min(row, key=lambda n: n.pinged_tick)
            oldest.pinged_tick = self._tick
            self._swaps += 1
            self._nursery.start_soon(self._reping_and_swap, oldest, node)

    async def _reping_and_swap(self, old: Node, new: Node) -> None:
        try:
            await self.request(old.address, PING, internal=True)
        except DhtError:
            if self.table.get(old.id) in (old, None):  # a timeout may have removed it already
                self.table.remove(old.id)
                self.table.add(new)
        finally:
            self._swaps -= 1

    def _on_response(self, res: Response, addr: SocketAddress, *, sample: bool = True) -> None:
        pending = self.io.handle_response(res, addr)
        if pending is None:
            return
        nid = self._validated_id(res.id, addr)
        if nid is not None:
            self._add_node(nid, addr)
        if sample and (nid is not None or addr in self.bootstrap_nodes):
            self._nat_samples.append(res.to)
            del self._nat_samples[:-MAX_NAT_SAMPLES]
        pending.meta["from_id"] = nid
        ev = pending.meta.get("event")
        if isinstance(ev, trio.Event):
            ev.set()

    def _on_request(self, req: Request, addr: SocketAddress,
                    via: DatagramTransport | None = None) -> None:
        self.stats["requests"] += 1
        if req.token is not None and not self.io.tokens.verify(addr.host, req.token):
            self.send_reply(req, addr, INVALID_TOKEN, None, token=True, closer_nodes=True,
                            via=via)
            return
        nid = self._validated_id(req.id, addr)
        if nid is not None:
            self._add_node(nid, addr)
        if req.internal:
            if via is None:  # a holepunch socket answers no internal commands
                self._on_internal(req, addr)
            return
        handled = False
        if self.on_request is not None:
            handled = self.on_request(IncomingRequest(self, req, addr, nid, via))
        if not handled:
            self.send_reply(req, addr, UNKNOWN_COMMAND, None, token=False, closer_nodes=True,
                            via=via)

    def _on_internal(self, req: Request, addr: SocketAddress) -> None:
        cmd = req.command
        if cmd == PING:
            self.send_reply(req, addr, 0, None, token=False, closer_nodes=False)
        elif cmd == PING_NAT:
            if req.value is None or len(req.value) < 2:
                return
            port = int.from_bytes(req.value[:2], "little")
            if port == 0:
                return
            self.send_reply(req, SocketAddress(addr.host, port), 0, None, token=False,
                            closer_nodes=False)
        elif cmd == FIND_NODE:
            if req.target is None:
                return
            self.send_reply(req, addr, 0, None, token=False, closer_nodes=True)
        elif cmd == DOWN_HINT:
            if req.value is None or len(req.value) < 6:
                return
            self._on_down_hint(req.value[:6])
            self.send_reply(req, addr, 0, None, token=False, closer_nodes=False)
        elif cmd == DELAYED_PING:
            if req.value is None or len(req.value) < 4 or self._nursery is None:
                return
            delay = int.from_bytes(req.value[:4], "little") / 1000
            if delay <= MAX_PING_DELAY:
                self._nursery.start_soon(self._delayed_reply, req, addr, delay)
        else:
            self.send_reply(req, addr, UNKNOWN_COMMAND, None, token=False,
                            closer_nodes=req.target is not None)

    def _on_down_hint(self, raw_addr: bytes) -> None:
        try:
            hinted = Reader(raw_addr).ipv4_address()
        except DecodeError:
            return
        node = self.table.get(node_id(hinted))
        if node is None or self._nursery is None or self._checks >= MAX_CHECKS:
            return
        if node.pinged_tick < self._tick or node.down_hints == 0:
            node.down_hints += 1
            node.pinged_tick = self._tick
            self._checks += 1
            self._nursery.start_soon(self._hinted_check, node)

    async def _hinted_check(self, node: Node) -> None:
        try:
            await self._check(node)
        finally:
            self._checks -= 1

    async def _delayed_reply(self, req: Request, addr: SocketAddress, delay: float) -> None:
        await trio.sleep(delay)
        self.send_reply(req, addr, 0, None, token=False, closer_nodes=False)

    def send_reply(self, req: Request, to: SocketAddress, error: int, value: bytes | None, *,
                   token: bool, closer_nodes: bool,
                   via: DatagramTransport | None = None) -> None:
        closer: tuple[SocketAddress, ...] = ()
        if closer_nodes and req.target is not None:
            closer = tuple(n.address for n in self.table.closest(req.target))
        res = Response(req.tid, to, self.own_id_on_wire(),
                       self.io.tokens.token(to.host) if token else None, closer, error, value)
        (via or self.transport).send_datagram(encode_response(res), to)

    # -- the firewall check (dht-rpc's ``_checkIfFirewalled``) ---------------------------

    def probe_datagram_received(self, data: bytes, addr: SocketAddress) -> None:
        """A datagram on the firewall check's probe socket (one that never sent anything):
        only PING_NAT replies are expected there, and each proves its sender reached us
        unasked."""
        if not 0 < addr.port < 65536:
            return
        try:
            msg = decode_message(data)
        except DhtRpcProtocolError:
            return
        if isinstance(msg, Response) and self._probe_hosts is not None:
            self._probe_hosts.add(addr.host)
            self._on_response(msg, addr, sample=False)

    async def check_firewall(self, probe_port: int, *,
                             attempt_timeout: float = DEFAULT_TIMEOUT) -> bool:
        """Ask a few nodes to answer a PING_NAT on ``probe_port``, a socket of ours on the
        same host that has sent nothing (its datagrams go to :meth:`probe_datagram_received`),
        and clear :attr:`firewalled` when enough of them got through. Returns ``firewalled``.

        dht-rpc asks from its client socket for replies on its server socket; with one socket
        here, the fresh probe socket plays the server socket's part. As in dht-rpc, replies
        must reach the probe port unchanged at the host the other nodes see us at.
        """
        if not self.firewalled:
            return False
        latest = sorted(self.table.nodes(), key=lambda n: n.seen_tick, reverse=True)
        targets = [n.address for n in latest[:FIREWALL_PROBES]]
        for addr in self.bootstrap_nodes:
            if len(targets) >= FIREWALL_PROBES:
                break
            if addr not in targets:
                targets.append(addr)
        if not targets:
            return True
        value = probe_port.to_bytes(2, "little")
        replies: list[tuple[SocketAddress, Response]] = []
        probe_hosts: set[str] = set()
        self._probe_hosts = probe_hosts

        async def ask(to: SocketAddress) -> None:
            try:
                res = await self.request(to, PING_NAT, internal=True, value=value, retries=1,
                                         attempt_timeout=attempt_timeout)
            except DhtError:
                return
            replies.append((to, res))

        try:
            async with trio.open_nursery() as nursery:
                for to in targets:
                    nursery.start_soon(ask, to)
        finally:
            self._probe_hosts = None
        own = self.remote_address
        reached = [res for to, res in replies
                   if to.host in probe_hosts and own is not None
                   and res.to == SocketAddress(own.host, probe_port)]
        self.stats["firewall_checks"] += 1
        if len(reached) >= (3 if len(targets) >= FIREWALL_PROBES else 1):
            self.firewalled = False
        return self.firewalled

    # -- requesting ---------------------------------------------------------------------

    async def request(self, to: SocketAddress, command: int, *, internal: bool = False,
                      target: bytes | None = None, value: bytes | None = None,
                      token: bytes | None = None, retries: int = DEFAULT_RETRIES,
                      attempt_timeout: float = DEFAULT_TIMEOUT,
                      via: DatagramTransport | None = None) -> Response:
        """Send one request and wait for its response (which may carry an error code).

        ``via`` sends it from another socket (whose datagrams are fed back with ``via``).
        Raises :class:`RequestTimeout` after ``retries + 1`` unanswered attempts.
        """
        pending = self.start_request(to, command, internal=internal, target=target, value=value,
                                     token=token, retries=retries,
                                     attempt_timeout=attempt_timeout, via=via)
        return await self.wait_response(pending)

    def start_request(self, to: SocketAddress, command: int, *, internal: bool = False,
                      target: bytes | None = None, value: bytes | None = None,
                      token: bytes | None = None, retries: int = DEFAULT_RETRIES,
                      attempt_timeout: float = DEFAULT_TIMEOUT,
                      via: DatagramTransport | None = None) -> PendingRequest:
        pending = self.io.create(to, command, internal=internal, target=target, value=value,
                                 token=token, node_id=self.own_id_on_wire(), retries=retries,
                                 timeout=attempt_timeout)
        pending.meta["event"] = trio.Event()
        if via is not None:
            pending.meta["via"] = via
        self._flush()
        self._wake.set()
        return pending

    async def wait_response(self, pending: PendingRequest) -> Response:
        ev = pending.meta["event"]
        assert isinstance(ev, trio.Event)
        try:
            await ev.wait()
        finally:
            if not pending.done:
                self.io.cancel(pending)
        if pending.response is None:
            raise RequestTimeout(f"no response from {pending.to.host}:{pending.to.port}")
        return pending.response

    async def ping(self, to: SocketAddress) -> Response:
        return await self.request(to, PING, internal=True)

    def encode_addr(self, addr: SocketAddress) -> bytes:
        return Writer().ipv4_address(addr).getvalue()
