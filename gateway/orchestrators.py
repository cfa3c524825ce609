"""The orchestrators a gateway sends work to, and which one takes the next request.

Every peer found on ``tether/control/<region>`` is an orchestrator. A request
goes to the one with the fewest requests in flight from this gateway (ties in
turn), so work spreads over all of them. One that refused work because it is
draining, or whose connection was lost or stopped answering, is avoided for
``AVOID_S``; a closed connection is skipped at once.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import trio

from tether.net import Network, Peer, peers_on, wait_for_peer

#: How long an orchestrator that was lost or is draining gets no new requests.
AVOID_S = 30.0


class Orchestrators:
    """Picks orchestrators for requests (see the module docstring)."""

    def __init__(
        self, network: Network, topic: str, *, clock: Callable[[], float] = trio.current_time
    ) -> None:
        self.network = network
        self.topic = topic
        self._clock = clock
        self._in_flight: dict[bytes, int] = {}
        self._avoid_until: dict[bytes, float] = {}
        self._turn = 0

    def avoid(self, peer: Peer) -> None:
        """Send ``peer`` no new requests for a while (it is draining or was lost)."""
        self._avoid_until[peer.remote_key] = self._clock() + AVOID_S

    def _usable(self, peer: Peer, exclude: set[bytes]) -> bool:
        key = peer.remote_key
        return key not in exclude and self._avoid_until.get(key, -math.inf) <= self._clock()

    async def pick(self, *, exclude: set[bytes], timeout: float) -> Peer:
        """The orchestrator for the next request: the least loaded usable one, else the
        first to appear within ``timeout`` (then UNAVAILABLE)."""
        usable = sorted(
            (p for p in peers_on(self.network, self.topic) if self._usable(p, exclude)),
            key=lambda p: p.remote_key,
        )
        if not usable:
            return await wait_for_peer(
                self.network, self.topic, timeout=timeout,
                accept=lambda p: self._usable(p, exclude),
            )
        self._turn += 1
        shift = self._turn % len(usable)
        rotated = usable[shift:] + usable[:shift]
        return min(rotated, key=lambda p: self._in_flight.get(p.remote_key, 0))

    @contextlib.contextmanager
    def using(self, peer: Peer) -> Iterator[None]:
        """Count a request in flight on ``peer`` while the block runs."""
        key = peer.remote_key
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        try:
            yield
        finally:
            self._in_flight[key] -= 1
            if not self._in_flight[key]:
                del self._in_flight[key]

    def in_flight(self) -> dict[bytes, int]:
        """Requests in flight per orchestrator key (a snapshot)."""
        return dict(self._in_flight)
