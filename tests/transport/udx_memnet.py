"""Test double: an in-memory datagram network with seeded loss, duplication, reordering, delay.

It implements :class:`p2p_transport.udx.DatagramTransport`, so real :class:`UdxSocket` and
:class:`UdxStream` objects run over it unchanged. Time is trio's clock, so tests drive it with
``MockClock(autojump_threshold=0)`` and never sleep for real.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import deque
from dataclasses import dataclass, field

import trio

Address = tuple[str, int]


@dataclass
class LinkProfile:
    loss: float = 0.0
    duplicate: float = 0.0
    delay: float = 0.005
    jitter: float = 0.0  # uniform extra delay; reorders packets when > 0
    drop_filter: object = None  # optional callable(data) -> bool forcing a drop


@dataclass
class NetStats:
    sent: int = 0
    delivered: int = 0
    dropped: int = 0
    duplicated: int = 0
    dropped_by_filter: list[bytes] = field(default_factory=list)


class MemoryNetwork:
    def __init__(self, seed: int, profile: LinkProfile | None = None) -> None:
        self.rng = random.Random(seed)
        self.profile = profile or LinkProfile()
        self.endpoints: dict[Address, MemoryEndpoint] = {}
        self._heap: list[tuple[float, int, Address, bytes, Address]] = []
        self._counter = itertools.count()
        self._wakeup = trio.Event()
        self.stats = NetStats()
        self._ports = itertools.count(10000)

    def endpoint(self, host: str = "10.0.0.1") -> MemoryEndpoint:
        addr = (host, next(self._ports))
        ep = MemoryEndpoint(self, addr)
        self.endpoints[addr] = ep
        return ep

    def _send(self, data: bytes, src: Address, dst: Address) -> None:
        p = self.profile
        self.stats.sent += 1
        if callable(p.drop_filter) and p.drop_filter(data):
            self.stats.dropped_by_filter.append(data)
            return
        if self.rng.random() < p.loss:
            self.stats.dropped += 1
            return
        copies = 2 if self.rng.random() < p.duplicate else 1
        if copies == 2:
            self.stats.duplicated += 1
        now = trio.current_time()
        for _ in range(copies):
            at = now + p.delay + self.rng.random() * p.jitter
            heapq.heappush(self._heap, (at, next(self._counter), dst, data, src))
        self._wakeup.set()

    async def run(self) -> None:
        while True:
            if not self._heap:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
                continue
            at = self._heap[0][0]
            if trio.current_time() < at:
                self._wakeup = trio.Event()
                with trio.move_on_at(at):
                    await self._wakeup.wait()
                continue
            _, _, dst, data, src = heapq.heappop(self._heap)
            ep = self.endpoints.get(dst)
            if ep is not None and not ep.closed:
                self.stats.delivered += 1
                ep._deliver(data, src)


class MemoryEndpoint:
    def __init__(self, net: MemoryNetwork, addr: Address) -> None:
        self.net = net
        self.addr = addr
        self.closed = False
        self._queue: deque[tuple[bytes, Address]] = deque()
        self._ready = trio.Event()

    @property
    def local_address(self) -> Address:
        return self.addr

    def send(self, data: bytes, addr: Address) -> None:
        if not self.closed:
            self.net._send(bytes(data), self.addr, addr)

    def _deliver(self, data: bytes, src: Address) -> None:
        self._queue.append((data, src))
        self._ready.set()

    async def receive_batch(self) -> list[tuple[bytes, Address]]:
        while not self._queue:
            self._ready = trio.Event()
            await self._ready.wait()
        await trio.lowlevel.checkpoint()
        out = list(self._queue)
        self._queue.clear()
        return out

    def close(self) -> None:
        self.closed = True
