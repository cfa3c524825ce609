"""DiscoverySub: the orchestrator's eventually-consistent view of the fleet.

For every peer it meets (workers found on ``tether/presence/<region>`` and
``tether/models/...`` topics), it opens ``Worker.WatchPresence`` and keeps the
latest verified ``Presence``. An envelope counts only if it is signed by the
very key the connection authenticated, fresh, and never seen before; anything
else is counted in ``rejected`` and dropped. Presence from a key that is not
admitted (``tether.admission``) is ignored before anything else and counted in
``rejected_unadmitted``, with one log line per key, not per heartbeat: the worker
gets no work. The admitted keys are read again every heartbeat period, and at once
(at most once a second) for a key not admitted, so an admission applies from the
worker's next heartbeat. A worker whose key was revoked leaves the snapshot at the
next read and its connection is closed, so requests it is streaming move to the
next worker (the orchestrator's resumption) rather than take any more of its
answer. A worker that has not sent a
valid heartbeat for ``expiry_s`` (15 s: three missed 5 s beats) leaves the
snapshot even while its connection stays open. Peers that are not workers
answer UNIMPLEMENTED and are left alone.

``in_flight`` counts the orchestrator's own dispatches per worker between
heartbeats, so that placement sees a worker fill up before its next report.
``index`` (``FleetIndex``) holds the same live workers by served model version,
kept current by every accepted heartbeat and departure: ``ranked`` places a
request from it without scanning the fleet.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, KeysView, Sequence
from dataclasses import dataclass

import trio
from opentelemetry import metrics as otel_metrics

from orchestrator.fleet_index import FleetIndex
from orchestrator.scheduler import Candidate, Placement, Weights
from tether.admission import Admissions
from tether.errors import TetherError
from tether.net import Network, Peer
from tether.rpc import RpcError, StatusCode
from tether.signing import EnvelopeVerifier
from tether.v1 import presence_pb2, services_pb2, services_rpc

log = logging.getLogger("tether.orchestrator.discovery")

DEFAULT_EXPIRY_S = 15.0
DEFAULT_HEARTBEAT_MS = 5000
#: How often the presence topics are looked up again (Hyperswarm alone refreshes every
#: 10 min; an orchestrator wants new workers sooner than that).
DEFAULT_REFRESH_S = 10.0
#: At most this many unadmitted keys are remembered as already logged.
_LOGGED_KEYS = 4096


@dataclass
class WorkerEntry:
    presence: presence_pb2.Presence
    peer: Peer
    #: trio clock time of the last valid heartbeat.
    last_seen: float

    @property
    def worker_id(self) -> str:
        return self.presence.worker_id


class InFlight:
    """This orchestrator's dispatches per worker, against the last heartbeat.

    A heartbeat reports a worker's load when it was sent; what was dispatched since is
    not in it, and what finished since is still in it. :meth:`unreported` is the
    correction placement adds to the reported load until the next heartbeat. The open
    dispatches are a floor on the load whatever the report says: one still on its way
    to the worker when the heartbeat left counts too.
    """

    def __init__(self) -> None:
        self._open: dict[str, int] = {}
        self._at_beat: dict[str, int] = {}

    def started(self, worker_id: str) -> None:
        self._open[worker_id] = self._open.get(worker_id, 0) + 1

    def ended(self, worker_id: str) -> None:
        left = self._open.get(worker_id, 0) - 1
        if left > 0:
            self._open[worker_id] = left
        else:
            self._open.pop(worker_id, None)

    def heartbeat(self, worker_id: str) -> None:
        """A heartbeat arrived: it counts the dispatches open now."""
        if worker_id in self._open:
            self._at_beat[worker_id] = self._open[worker_id]
        else:
            self._at_beat.pop(worker_id, None)

    def counted(self) -> set[str]:
        """The workers whose :meth:`unreported` may be other than 0 (with a dispatch
        open, or one counted at their last heartbeat)."""
        return self._open.keys() | self._at_beat.keys()

    def unreported(self, worker_id: str, reported: int = 0) -> int:
        """What to add to the ``reported`` load: dispatches started since the last
        heartbeat less those ended since, and at least enough to count every open one."""
        open_now = self._open.get(worker_id, 0)
        return max(open_now - self._at_beat.get(worker_id, 0), open_now - reported)


class DiscoverySub:
    def __init__(
        self,
        network: Network,
        *,
        admissions: Admissions,
        expiry_s: float = DEFAULT_EXPIRY_S,
        heartbeat_ms: int = DEFAULT_HEARTBEAT_MS,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        verifier: EnvelopeVerifier | None = None,
        refresh_s: float = DEFAULT_REFRESH_S,
    ) -> None:
        self.network = network
        self.refresh_s = refresh_s
        self.expiry_s = expiry_s
        self.heartbeat_ms = heartbeat_ms
        self.clock_ms = clock_ms
        self.verifier = verifier or EnvelopeVerifier(max_age_ms=int(expiry_s * 1000))
        self.admissions = admissions
        self.rejected = 0
        #: Presence envelopes ignored because their key is not admitted.
        self.rejected_unadmitted = 0
        #: Both, for operators (Prometheus/OTLP), by reason.
        self._rejections = otel_metrics.get_meter("tether").create_counter(
            "tether.presence.rejected",
            description="Worker presence ignored, by reason (unadmitted, invalid)",
        )
        self._logged_unadmitted: set[bytes] = set()
        self._entries: dict[bytes, WorkerEntry] = {}
        self.index = FleetIndex(expiry_s)
        self._changed = trio.Event()
        self.in_flight = InFlight()

    async def run(
        self,
        *,
        refresh: Sequence[str] = (),
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Watch every peer; look the ``refresh`` topics up again every ``refresh_s``
        (workers that announce later, e.g. in another region, are found then)."""
        await self.admissions.reload()
        async with trio.open_nursery() as nursery:
            self.network.on_peer(lambda peer: nursery.start_soon(self._watch, peer))
            nursery.start_soon(self._follow_admissions)
            task_status.started()
            while True:
                await trio.sleep(self.refresh_s)
                for topic in refresh:
                    await self.network.refresh(topic)

    def snapshot(self) -> list[WorkerEntry]:
        """Workers with a valid heartbeat in the last ``expiry_s``."""
        horizon = trio.current_time() - self.expiry_s
        return sorted(
            (e for e in self._entries.values() if e.last_seen >= horizon),
            key=lambda e: e.worker_id,
        )

    def ranked(self, want: Placement, weights: Weights) -> Iterator[Candidate]:
        """The live workers for ``want``, best first, full ones last (``scheduler.rank``'s
        order over ``snapshot()``, from the index); take them before the next checkpoint."""
        self.index.expire(trio.current_time())
        return self.index.ranked(want, weights, self.in_flight)

    def worker_ids(self) -> KeysView[str]:
        """The ids of the workers in ``snapshot()``."""
        self.index.expire(trio.current_time())
        return self.index.worker_ids()

    async def wait_for(self, predicate: Callable[[list[WorkerEntry]], bool]) -> None:
        """Wait until the snapshot satisfies ``predicate``."""
        while not predicate(self.snapshot()):
            self._changed = trio.Event()
            with trio.move_on_after(1.0):
                await self._changed.wait()

    async def _follow_admissions(self) -> None:
        """Read the admitted keys again every heartbeat period; revoked workers leave."""
        while True:
            await trio.sleep(self.admissions.reload_s)
            await self.admissions.reload()
            for key, entry in list(self._entries.items()):
                if not self.admissions.admits(key):
                    del self._entries[key]
                    self.index.remove(key)
                    self._changed.set()
                    log.warning(
                        "worker %s (%s) is no longer admitted: out of placement, "
                        "connection closed", entry.worker_id, entry.peer.key_hex,
                    )
                    await entry.peer.rpc.aclose()

    async def _watch(self, peer: Peer) -> None:
        stub = services_rpc.WorkerStub(peer.rpc)
        request = services_pb2.WatchPresenceRequest(interval_ms=self.heartbeat_ms)
        try:
            async with stub.WatchPresence(request) as envelopes:
                async for env in envelopes:
                    # A key admitted since the last read counts from this heartbeat on.
                    await self.admissions.admits_now(peer.remote_key)
                    self._accept(peer, env)
        except RpcError as exc:
            if exc.code != StatusCode.UNIMPLEMENTED:
                log.info("presence stream from %s ended: %s", peer.key_hex[:12], exc)
        finally:
            entry = self._entries.get(peer.remote_key)
            if entry is not None and entry.peer is peer:
                del self._entries[peer.remote_key]
                self.index.remove(peer.remote_key)
                self._changed.set()

    def _accept(self, peer: Peer, env: presence_pb2.SignedEnvelope) -> None:
        if not self.admissions.admits(peer.remote_key):
            self.rejected_unadmitted += 1
            self._rejections.add(1, {"reason": "unadmitted"})
            if peer.remote_key not in self._logged_unadmitted:
                if len(self._logged_unadmitted) >= _LOGGED_KEYS:
                    self._logged_unadmitted.clear()
                self._logged_unadmitted.add(peer.remote_key)
                log.warning(
                    "ignoring presence from unadmitted worker key %s; an operator admits "
                    "it with: tether admit %s", peer.key_hex, peer.key_hex,
                )
            return
        try:
            presence = self.verifier.verify(
                env,
                presence_pb2.Presence,
                now_ms=self.clock_ms(),
                expected_signer=peer.remote_key,
            )
        except TetherError as exc:
            self.rejected += 1
            self._rejections.add(1, {"reason": "invalid"})
            log.warning("rejected presence from %s: %s", peer.key_hex[:12], exc)
            return
        entry = WorkerEntry(presence, peer, trio.current_time())
        self._entries[peer.remote_key] = entry
        self.index.update(peer.remote_key, entry)
        self.in_flight.heartbeat(presence.worker_id)
        self._changed.set()
