"""Scheduler: the spec's affinity score (§3.2) and placement order.

    score = model match + region proximity + gpuClass match
            + inverse queue depth + warm-cache bonus

Model match is a gate, not a term that can be outweighed: a worker that does
not serve the requested version or is draining is not a candidate. A worker
with no room is a candidate marked ``full``: a pool that is all full is
overloaded, not missing. Room counts what this orchestrator dispatched to the
worker since its last heartbeat (``InFlight``) on top of what the heartbeat
reports, and is measured two ways:

* slots: every slot busy and the queue at its limit (the worker would shed);
* sequences, for a worker that batches (its heartbeat reports
  ``max_batch_size``): its batch holds ``max_batch_size`` sequences, or its
  KV-cache budget has no room for one more sequence of the size its batch holds
  on average. Such a request would only wait on the worker for a seat, which is
  when a model's policy may rather degrade it (``orchestrator.service``).

The remaining terms are each in [0, 1] and weighted by ``Weights`` (the
queue term counts a batching worker's batch occupancy); ties break by worker id
so placement is deterministic.

Scores are computed over a ``WorkerRecord``: the plain values of a presence that
placement reads, made once per heartbeat (``WorkerRecord.of``) rather than read
from the protobuf message for every request. ``orchestrator.fleet_index`` keeps
them per served model version and ranks with the same ``candidate``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tether.v1 import presence_pb2

if TYPE_CHECKING:  # discovery imports the index, which imports this module
    from orchestrator.discovery import InFlight, WorkerEntry


@dataclass(frozen=True)
class Weights:
    model: float = 10.0
    region: float = 4.0
    gpu_class: float = 2.0
    queue: float = 3.0
    warm_cache: float = 1.5


@dataclass(frozen=True)
class Placement:
    request_region: str
    model: presence_pb2.ModelKey
    #: gpuClasses the model accepts; empty means any.
    gpu_classes: Sequence[str] = ()


@dataclass(frozen=True)
class Candidate:
    entry: WorkerEntry
    score: float
    #: No room: every slot busy and the queue at its limit (the worker would shed the
    #: request), or, for a batching worker, its batch or KV-cache budget used up.
    full: bool = False


def region_proximity(a: str, b: str) -> float:
    """1 for the same region, 0.5 for the same area (``eu-west`` ~ ``eu-north``)."""
    if a == b:
        return 1.0
    if a.split("-", 1)[0] == b.split("-", 1)[0]:
        return 0.5
    return 0.0


_DEFAULT_WEIGHTS = Weights()


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    """What placement reads of one presence, as plain values."""

    worker_id: str
    region: str
    gpu_class: str
    draining: bool
    #: (model_id, version) pairs served.
    supported: frozenset[tuple[str, str]]
    #: (model_id, version) pairs already loaded (the warm-cache bonus).
    warm: frozenset[tuple[str, str]]
    slots: int
    in_use: int
    queue_depth: int
    queue_limit: int
    #: Sequences a batch holds at most; 0: the worker does not batch (slots alone).
    max_batch_size: int
    active_sequences: int
    kv_cache_budget_bytes: int
    kv_cache_used_bytes: int

    @classmethod
    def of(cls, p: presence_pb2.Presence) -> WorkerRecord:
        cap = p.capacity
        return cls(
            worker_id=p.worker_id,
            region=p.region,
            gpu_class=p.gpu_class,
            draining=p.draining,
            supported=frozenset((s.model_id, s.version) for s in p.supported),
            warm=frozenset((c.model_id, c.version) for c in p.health.model_cache),
            slots=cap.slots,
            in_use=cap.in_use,
            queue_depth=cap.queue_depth,
            queue_limit=cap.queue_limit,
            max_batch_size=cap.max_batch_size,
            active_sequences=cap.active_sequences,
            kv_cache_budget_bytes=cap.kv_cache_budget_bytes,
            kv_cache_used_bytes=cap.kv_cache_used_bytes,
        )


def busy(r: WorkerRecord, unreported: int = 0) -> int:
    """Requests running or queued on the worker: its last report plus ``unreported``
    (what this orchestrator dispatched to it since, less what ended since)."""
    return max(0, r.in_use + r.queue_depth + unreported)


def sequences(r: WorkerRecord, unreported: int = 0) -> int:
    """Sequences in the worker's batches: its last report plus ``unreported``."""
    return max(0, r.active_sequences + unreported)


def batch_full(r: WorkerRecord, unreported: int = 0) -> bool:
    """A batching worker with no seat for one more sequence: its batch is at
    ``max_batch_size``, or its KV-cache budget cannot hold one more sequence of the
    average size of those it holds. False for a worker that reports no batch size."""
    if not r.max_batch_size:
        return False
    n = sequences(r, unreported)
    if n >= r.max_batch_size:
        return True
    if not r.kv_cache_budget_bytes:
        return False
    if r.kv_cache_used_bytes >= r.kv_cache_budget_bytes:
        return True
    if not r.active_sequences:
        return False
    per_sequence = r.kv_cache_used_bytes / r.active_sequences
    extra = n - r.active_sequences  # dispatched since the report, each of average size
    return r.kv_cache_used_bytes + (extra + 1) * per_sequence > r.kv_cache_budget_bytes


def is_full(
    r: WorkerRecord, unreported: int = 0, unreported_sequences: int | None = None
) -> bool:
    """No room by slots (``unreported`` corrects the report's in-use and queued
    requests) or by sequences (``unreported_sequences`` corrects its active sequences;
    ``unreported`` when not given)."""
    if r.slots and busy(r, unreported) >= r.slots + r.queue_limit:
        return True
    seqs = unreported if unreported_sequences is None else unreported_sequences
    return batch_full(r, seqs)


def score(
    r: WorkerRecord,
    want: Placement,
    w: Weights = _DEFAULT_WEIGHTS,
    unreported: int = 0,
    unreported_sequences: int | None = None,
) -> float | None:
    if r.draining:
        return None
    model = (want.model.model_id, want.model.version)
    if model not in r.supported:
        return None
    if want.gpu_classes:
        gpu = 1.0 if r.gpu_class in want.gpu_classes else 0.0
    else:
        gpu = 0.5
    n = busy(r, unreported)
    running = min(n, r.slots) if r.slots else 0
    load = (n - running) + (running / r.slots if r.slots else 0.0)
    if r.max_batch_size:  # a batching worker: how full its batch is counts too
        seqs = unreported if unreported_sequences is None else unreported_sequences
        load = max(load, sequences(r, seqs) / r.max_batch_size)
    return (
        w.model
        + w.region * region_proximity(r.region, want.request_region)
        + w.gpu_class * gpu
        + w.queue / (1.0 + load)
        + w.warm_cache * (1.0 if model in r.warm else 0.0)
    )


def candidate(
    entry: WorkerEntry,
    r: WorkerRecord,
    want: Placement,
    w: Weights = _DEFAULT_WEIGHTS,
    *,
    unreported: int = 0,
    unreported_sequences: int | None = None,
) -> Candidate | None:
    """``entry`` scored for ``want`` (``None``: not a candidate), ``unreported`` added
    to its reported requests and ``unreported_sequences`` to its reported sequences
    (``unreported`` when not given), as for ``is_full``."""
    s = score(r, want, w, unreported, unreported_sequences)
    if s is None:
        return None
    return Candidate(entry, s, is_full(r, unreported, unreported_sequences))


def corrections(in_flight: InFlight, r: WorkerRecord) -> tuple[int, int]:
    """What ``in_flight`` adds to the worker's reported load: (requests, sequences).
    Both are its dispatches since the heartbeat, each floored by its open dispatches
    against what the heartbeat reports in that unit."""
    return (
        in_flight.unreported(r.worker_id, busy(r)),
        in_flight.unreported(r.worker_id, sequences(r)),
    )


def order(c: Candidate) -> tuple[bool, float, str]:
    """Placement order: full ones last, then best score first, then by worker id."""
    return (c.full, -c.score, c.entry.worker_id)


def rank(
    entries: Sequence[WorkerEntry],
    want: Placement,
    w: Weights = _DEFAULT_WEIGHTS,
    in_flight: InFlight | None = None,
) -> list[Candidate]:
    """Candidates best first, full ones last; ``in_flight`` corrects each reported load
    (requests by slots, and sequences for a batching worker; ``corrections``).
    (Every entry scored: the orchestrator ranks through ``FleetIndex`` instead.)"""
    scored = []
    for e in entries:
        r = WorkerRecord.of(e.presence)
        extra, extra_seqs = (0, 0) if in_flight is None else corrections(in_flight, r)
        c = candidate(e, r, want, w, unreported=extra, unreported_sequences=extra_seqs)
        if c is not None:
            scored.append(c)
    return sorted(scored, key=order)
