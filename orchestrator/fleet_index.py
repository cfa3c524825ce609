"""FleetIndex: the live fleet by served model version, ranked without a full scan.

``DiscoverySub`` tells the index about every accepted heartbeat (``update``) and
every worker that leaves (``remove``: disconnected or revoked); expiry needs no
scan either, because members are kept in the order of their last heartbeat and
``expire`` drops them from the front. Each member's presence becomes a
``WorkerRecord`` once, when its heartbeat is accepted.

Placement (``ranked``) looks only at the members serving the requested version.
For each kind of request it has seen (version, region, gpuClasses, weights) the
index keeps a *view*: those members in placement order, by their score at their
last heartbeat; a heartbeat moves its worker within each view of its versions
(a binary search), so a placement does not score the pool again. What
``InFlight`` says this orchestrator dispatched since a heartbeat (in requests,
and in sequences for a batching worker: ``scheduler.corrections``) changes a few
workers' scores; those (and only those) are scored again per request and merged
into the view's order. The order is ``scheduler.rank``'s: full ones last, best
score first, ties by worker id (then by key, for two peers claiming one id).

Candidates come lazily, best first: the caller takes as many as it needs and
must do so before its next checkpoint (a heartbeat in between moves the views).
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from collections import OrderedDict
from collections.abc import Iterator, KeysView
from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestrator.scheduler import (
    Candidate,
    Placement,
    Weights,
    WorkerRecord,
    candidate,
    corrections,
)

if TYPE_CHECKING:
    from orchestrator.discovery import InFlight, WorkerEntry

#: (model_id, version)
ModelKey = tuple[str, str]
#: The order of ``scheduler.rank`` plus the peer key: (full, -score, worker id, key).
_SortKey = tuple[bool, float, str, bytes]
_ViewKey = tuple[ModelKey, str, tuple[str, ...], Weights]
#: Views kept at once (least recently used dropped); one per kind of request.
MAX_VIEWS = 64


@dataclass(slots=True)
class _Member:
    entry: WorkerEntry
    record: WorkerRecord


class _View:
    """The members serving one version in placement order for one kind of request,
    each as scored at its last heartbeat (no in-flight correction)."""

    def __init__(self, want: Placement, weights: Weights) -> None:
        self.want = want
        self.weights = weights
        self.keys: list[_SortKey] = []
        self._key_of: dict[bytes, _SortKey] = {}
        #: Members scored again with what was dispatched to them since their heartbeat,
        #: by the corrections (requests, sequences) they were scored with (until those
        #: change or they beat again).
        self.corrected: dict[bytes, tuple[tuple[int, int], _SortKey, Candidate]] = {}

    def fill(self, members: dict[bytes, _Member]) -> None:
        for key, m in members.items():
            self._key_of[key] = self._sort_key(key, m)
        self.keys = sorted(self._key_of.values())

    def add(self, key: bytes, m: _Member) -> None:
        self.corrected.pop(key, None)
        k = self._key_of[key] = self._sort_key(key, m)
        insort(self.keys, k)

    def _sort_key(self, key: bytes, m: _Member) -> _SortKey:
        c = candidate(m.entry, m.record, self.want, self.weights)
        assert c is not None  # members serve the version and are not draining
        return (c.full, -c.score, m.record.worker_id, key)

    def discard(self, key: bytes) -> None:
        self.corrected.pop(key, None)
        k = self._key_of.pop(key, None)
        if k is not None:
            del self.keys[bisect_left(self.keys, k)]


class FleetIndex:
    def __init__(self, expiry_s: float) -> None:
        self.expiry_s = expiry_s
        self._members: dict[bytes, _Member] = {}
        #: Member keys, oldest heartbeat first (heartbeats come in clock order).
        self._last_seen: OrderedDict[bytes, float] = OrderedDict()
        #: Members serving each version, draining ones left out (they take no work).
        self._serving: dict[ModelKey, dict[bytes, None]] = {}
        #: Member keys by worker id (what ``InFlight`` counts by).
        self._by_worker_id: dict[str, set[bytes]] = {}
        self._views: OrderedDict[_ViewKey, _View] = OrderedDict()
        self._views_of: dict[ModelKey, dict[_ViewKey, _View]] = {}

    def __len__(self) -> int:
        return len(self._members)

    def update(self, key: bytes, entry: WorkerEntry) -> None:
        """A heartbeat from ``key`` was accepted: ``entry`` is its worker now."""
        self.remove(key)
        m = _Member(entry, WorkerRecord.of(entry.presence))
        self._members[key] = m
        self._last_seen[key] = entry.last_seen
        self._by_worker_id.setdefault(m.record.worker_id, set()).add(key)
        for model in self._models(m.record):
            self._serving.setdefault(model, {})[key] = None
            for view in self._views_of.get(model, {}).values():
                view.add(key, m)

    def remove(self, key: bytes) -> None:
        """The worker behind ``key`` left (disconnected, revoked or expired)."""
        m = self._members.pop(key, None)
        if m is None:
            return
        del self._last_seen[key]
        ids = self._by_worker_id[m.record.worker_id]
        ids.discard(key)
        if not ids:
            del self._by_worker_id[m.record.worker_id]
        for model in self._models(m.record):
            serving = self._serving[model]
            del serving[key]
            if not serving:
                del self._serving[model]
            for view in self._views_of.get(model, {}).values():
                view.discard(key)

    def expire(self, now: float) -> None:
        """Drop the members whose last heartbeat is older than ``expiry_s``."""
        horizon = now - self.expiry_s
        while self._last_seen:
            key, seen = next(iter(self._last_seen.items()))
            if seen >= horizon:
                break
            self.remove(key)

    def worker_ids(self) -> KeysView[str]:
        """The ids of the live members (as of the last ``expire``)."""
        return self._by_worker_id.keys()

    def ranked(
        self, want: Placement, weights: Weights, in_flight: InFlight | None = None
    ) -> Iterator[Candidate]:
        """The candidates for ``want``, best first, full ones last, as
        ``scheduler.rank`` orders them; call ``expire`` first."""
        model = (want.model.model_id, want.model.version)
        serving = self._serving.get(model)
        if not serving:
            return iter(())
        view = self._view(model, want, weights)
        # Workers with dispatches counted since their heartbeat: scored again (once
        # per change of their correction) and placed by that score.
        fresh: dict[bytes, tuple[_SortKey, Candidate]] = {}
        if in_flight is not None:
            for worker_id in in_flight.counted():
                for key in self._by_worker_id.get(worker_id, ()):
                    if key not in serving:
                        continue
                    m = self._members[key]
                    # By slots and by sequences, exactly as ``scheduler.rank`` corrects.
                    extra = corrections(in_flight, m.record)
                    if extra == (0, 0):
                        continue  # its heartbeat's score holds
                    done = view.corrected.get(key)
                    if done is None or done[0] != extra:
                        c = candidate(
                            m.entry, m.record, want, weights,
                            unreported=extra[0], unreported_sequences=extra[1],
                        )
                        assert c is not None
                        done = (extra, (c.full, -c.score, worker_id, key), c)
                        view.corrected[key] = done
                    fresh[key] = done[1:]
        return self._merge(view, fresh)

    def _merge(
        self, view: _View, fresh: dict[bytes, tuple[_SortKey, Candidate]]
    ) -> Iterator[Candidate]:
        members = self._members
        if not fresh:
            for full, neg, _, key in view.keys:
                yield Candidate(members[key].entry, -neg, full)
            return
        again = sorted(k for k, _ in fresh.values())
        rest = (k for k in view.keys if k[3] not in fresh)
        for full, neg, _, key in heapq.merge(rest, again):
            done = fresh.get(key)
            yield done[1] if done is not None else Candidate(members[key].entry, -neg, full)

    def _view(self, model: ModelKey, want: Placement, weights: Weights) -> _View:
        vkey = (model, want.request_region, tuple(want.gpu_classes), weights)
        view = self._views.get(vkey)
        if view is not None:
            self._views.move_to_end(vkey)
            return view
        view = _View(want, weights)
        view.fill({key: self._members[key] for key in self._serving[model]})
        self._views[vkey] = view
        self._views_of.setdefault(model, {})[vkey] = view
        if len(self._views) > MAX_VIEWS:
            old, _ = self._views.popitem(last=False)
            views = self._views_of[old[0]]
            del views[old]
            if not views:
                del self._views_of[old[0]]
        return view

    @staticmethod
    def _models(r: WorkerRecord) -> frozenset[ModelKey]:
        return frozenset() if r.draining else r.supported
