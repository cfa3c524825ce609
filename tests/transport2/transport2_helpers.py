"""Test doubles for the transport tests: an in-memory datagram network.

``MemoryNetwork`` stands in for UDP sockets in unit tests only; the real socket is
``p2p_transport.dht_rpc.UdpSocket``. Delivery goes through trio tasks so that a MockClock can
drive delay, and a seeded RNG chooses loss and duplication deterministically.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import trio

from p2p_transport.cenc import SocketAddress

Handler = Callable[[bytes, SocketAddress], None]


class MemoryEndpoint:
    """A fake socket bound to one address on a :class:`MemoryNetwork` (test double)."""

    def __init__(self, net: MemoryNetwork, addr: SocketAddress) -> None:
        self.net = net
        self.addr = addr
        self.handler: Handler | None = None
        self.received: list[tuple[bytes, SocketAddress]] = []

    @property
    def local_address(self) -> SocketAddress:
        return self.addr

    def send_datagram(self, data: bytes, addr: SocketAddress) -> None:
        self.net.send(self.addr, addr, data)


class MemoryNetwork:
    """Delivers datagrams between endpoints with seeded loss, duplication and delay."""

    def __init__(self, nursery: trio.Nursery, *, seed: int = 0, loss: float = 0.0,
                 duplicate: float = 0.0, delay: float = 0.001) -> None:
        self.nursery = nursery
        self.rng = random.Random(seed)
        self.loss = loss
        self.duplicate = duplicate
        self.delay = delay
        self.endpoints: dict[SocketAddress, MemoryEndpoint] = {}
        self.log: list[tuple[SocketAddress, SocketAddress, bytes]] = []
        self._next_port = 10000

    def endpoint(self, host: str = "10.0.0.1", port: int | None = None) -> MemoryEndpoint:
        if port is None:
            self._next_port += 1
            port = self._next_port
        ep = MemoryEndpoint(self, SocketAddress(host, port))
        self.endpoints[ep.addr] = ep
        return ep

    def send(self, src: SocketAddress, dst: SocketAddress, data: bytes) -> None:
        self.log.append((src, dst, data))
        if self.rng.random() < self.loss:
            return
        copies = 2 if self.rng.random() < self.duplicate else 1
        for _ in range(copies):
            self.nursery.start_soon(self._deliver, src, dst, data)

    async def _deliver(self, src: SocketAddress, dst: SocketAddress, data: bytes) -> None:
        await trio.sleep(self.delay)
        ep = self.endpoints.get(dst)
        if ep is None:
            return
        ep.received.append((data, src))
        if ep.handler is not None:
            ep.handler(data, src)
