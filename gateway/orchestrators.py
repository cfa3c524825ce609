"""The orchestrators a gateway sends work to, which one takes the next request, and
which ones are dead.

Every peer found on ``tether/control/<region>`` is an orchestrator; those found on a
fallback region's control topic (``--fallback-region``) are used only while none of the
gateway's own region is usable, so losing a whole region's orchestrators moves its
gateway's traffic to the next region (streams in flight resume there too). A request
goes to the one with the fewest requests in flight from this gateway (ties in
turn), so work spreads over all of them; one whose streams have all been quiet
for ``QUIET_S`` comes last (it may have just died). A connection whose
orchestrator refused work because it is draining is avoided; a closed one is
skipped.

A process killed with SIGKILL closes nothing: over UDP its connections look open
until the transport's timeouts (about 11 s). So ``watch`` probes, every
``HEARTBEAT_S``, each orchestrator not heard from in that time (a cheap
``GetJob``); one that does not answer within ``PROBE_S`` has its connection
closed, which ends every stream on it at once (the gateway resumes them
elsewhere) and keeps new requests away from it.

Once an orchestrator's connection is gone, ``watch`` looks the control topics up again
every ``REFIND_EVERY_S`` for ``REFIND_FOR_S``: an orchestrator restarted with its key (at a
new address) is found within seconds, not at Hyperswarm's next refresh (10 minutes) when its
reconnect attempts ran out (three, each used up by a connection that lived under 15 s).
"""

from __future__ import annotations

import contextlib
import logging
import math
import weakref
from collections.abc import Callable, Iterator, Sequence

import trio

from tether.errors import Unavailable
from tether.net import Network, Peer, is_closed, peers_on, wait_for_peer
from tether.rpc import RpcError, StatusCode
from tether.v1 import services_pb2, services_rpc

log = logging.getLogger("tether.gateway")

#: How often orchestrators not heard from are probed, and how long a probe may take.
HEARTBEAT_S = 1.0
PROBE_S = 2.0
#: An orchestrator with requests in flight and nothing heard from it for this long is
#: picked only when no other is usable, until a probe answers.
QUIET_S = 0.5
#: After an orchestrator is lost, its topics are looked up again this often, for this long.
REFIND_EVERY_S = 5.0
REFIND_FOR_S = 120.0


class Orchestrators:
    """Picks orchestrators for requests and finds dead ones (see the module docstring)."""

    def __init__(
        self, network: Network, topic: str, *, clock: Callable[[], float] = trio.current_time,
        fallback_topics: Sequence[str] = (),
    ) -> None:
        self.network = network
        self.topic = topic
        #: Other regions' control topics, in order, for when no own orchestrator is usable.
        self.fallback_topics = tuple(fallback_topics)
        self._clock = clock
        self._in_flight: dict[bytes, int] = {}
        #: Connections to send nothing new to (their orchestrator is draining).
        self._avoid: set[Peer] = set()
        self._heard_at: dict[Peer, float] = {}
        #: Why the gateway dropped a connection (its orchestrator stopped answering).
        self._dropped: weakref.WeakKeyDictionary[Peer, str] = weakref.WeakKeyDictionary()
        self._turn = 0
        #: When each orchestrator key last had an open connection (for ``_refind_due``).
        self._seen_at: dict[bytes, float] = {}
        self._refound_at = -math.inf
        self._refinding = False
        #: Keys dropped for not answering: a new connection to one (found again by a
        #: lookup) takes work only once it answered a probe (a hung process may still
        #: accept connections).
        self._suspect: set[bytes] = set()

    def why_dropped(self, peer: Peer) -> str | None:
        """Why this gateway closed the connection to ``peer``, if it did."""
        return self._dropped.get(peer)

    def avoid(self, peer: Peer) -> None:
        """Send nothing new over this connection (its orchestrator is draining or lost);
        a new connection to the same key (a restart) is used again."""
        self._avoid = {p for p in self._avoid if not is_closed(p)}
        self._avoid.add(peer)

    def heard(self, peer: Peer) -> None:
        """``peer`` just sent something: it is alive."""
        self._heard_at[peer] = self._clock()
        self._suspect.discard(peer.remote_key)

    def _usable(self, peer: Peer, exclude: set[bytes]) -> bool:
        return (peer.remote_key not in exclude and peer not in self._avoid
                and peer.remote_key not in self._suspect)

    async def pick(self, *, exclude: set[bytes], timeout: float) -> Peer:
        """The orchestrator for the next request: the least loaded usable one, else the
        first to appear within ``timeout`` (then UNAVAILABLE)."""
        usable: list[Peer] = []
        for topic in (self.topic, *self.fallback_topics):
            usable = sorted(
                (p for p in peers_on(self.network, topic) if self._usable(p, exclude)),
                key=lambda p: p.remote_key,
            )
            if usable:
                break
        if not usable:
            if not self.fallback_topics:
                return await wait_for_peer(
                    self.network, self.topic, timeout=timeout,
                    accept=lambda p: self._usable(p, exclude),
                )
            return await self._first_anywhere(exclude, timeout)
        self._turn += 1
        shift = self._turn % len(usable)
        rotated = usable[shift:] + usable[:shift]
        now = self._clock()

        def rank(peer: Peer) -> tuple[bool, int]:
            busy = self._in_flight.get(peer.remote_key, 0)
            quiet = now - self._heard_at.get(peer, now) >= QUIET_S
            return (bool(busy) and quiet, busy)

        return min(rotated, key=rank)

    async def _first_anywhere(self, exclude: set[bytes], timeout: float) -> Peer:
        """The first usable orchestrator to appear on any of the topics within ``timeout``."""
        found: list[Peer] = []
        with trio.move_on_after(timeout):
            async with trio.open_nursery() as nursery:
                async def on(topic: str) -> None:
                    found.append(await wait_for_peer(
                        self.network, topic, accept=lambda p: self._usable(p, exclude)))
                    nursery.cancel_scope.cancel()

                for topic in (self.topic, *self.fallback_topics):
                    nursery.start_soon(on, topic)
        if not found:
            names = ", ".join((self.topic, *self.fallback_topics))
            raise Unavailable(f"nothing reachable on {names} within {timeout:g} s")
        return found[0]

    def peers(self) -> list[Peer]:
        """Every orchestrator known now, of this region and the fallback ones."""
        seen: dict[Peer, None] = {}
        for topic in (self.topic, *self.fallback_topics):
            seen.update(dict.fromkeys(peers_on(self.network, topic)))
        return list(seen)

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

    async def watch(self, *, every_s: float = HEARTBEAT_S) -> None:
        """Probe the orchestrators not heard from in ``every_s``, and look the topics up
        again while one is lost (see the module docstring), forever."""
        async with trio.open_nursery() as background:
            while True:
                now = self._clock()
                self._heard_at = {p: t for p, t in self._heard_at.items() if not is_closed(p)}
                if self._refind_due(now):
                    background.start_soon(self._refind)
                async with trio.open_nursery() as nursery:
                    for peer in self.peers():
                        if now - self._heard_at.get(peer, -every_s) >= every_s:
                            nursery.start_soon(self._probe, peer)
                await trio.sleep(every_s)

    def _refind_due(self, now: float) -> bool:
        """Whether to look the topics up again now: a key that had a connection lost it
        less than REFIND_FOR_S ago, and the last lookup was REFIND_EVERY_S ago or more."""
        for peer in self.peers():
            self._seen_at[peer.remote_key] = now
        self._seen_at = {k: t for k, t in self._seen_at.items() if now - t <= REFIND_FOR_S}
        lost = any(t < now for t in self._seen_at.values())
        if not lost or self._refinding or now - self._refound_at < REFIND_EVERY_S:
            return False
        self._refound_at = now
        return True

    async def _refind(self) -> None:
        self._refinding = True
        try:
            for topic in (self.topic, *self.fallback_topics):
                await self.network.refresh(topic)
        finally:
            self._refinding = False

    async def _probe(self, peer: Peer) -> None:
        try:
            await services_rpc.OrchestratorStub(peer.rpc).GetJob(
                services_pb2.GetJobRequest(), timeout=PROBE_S
            )
        except RpcError as exc:
            if exc.code not in (StatusCode.DEADLINE_EXCEEDED, StatusCode.UNAVAILABLE):
                self.heard(peer)  # an answer (NOT_FOUND, PERMISSION_DENIED): alive
                return
            if is_closed(peer):
                return
            log.warning("orchestrator %s did not answer within %g s (%s); dropping it",
                        peer.key_hex[:16], PROBE_S, exc.message)
            self.avoid(peer)
            self._suspect.add(peer.remote_key)
            self._dropped[peer] = f"it did not answer a probe within {PROBE_S:g} s"
            await peer.rpc.aclose()
            return
        self.heard(peer)
