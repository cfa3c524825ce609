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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.discovery import InFlight, WorkerEntry
from tether.v1 import presence_pb2


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


def busy(p: presence_pb2.Presence, unreported: int = 0) -> int:
    """Requests running or queued on the worker: its last report plus ``unreported``
    (what this orchestrator dispatched to it since, less what ended since)."""
    cap = p.capacity
    return max(0, cap.in_use + cap.queue_depth + unreported)


def sequences(p: presence_pb2.Presence, unreported: int = 0) -> int:
    """Sequences in the worker's batches: its last report plus ``unreported``."""
    return max(0, p.capacity.active_sequences + unreported)


def batch_full(p: presence_pb2.Presence, unreported: int = 0) -> bool:
    """A batching worker with no seat for one more sequence: its batch is at
    ``max_batch_size``, or its KV-cache budget cannot hold one more sequence of the
    average size of those it holds. False for a worker that reports no batch size."""
    cap = p.capacity
    if not cap.max_batch_size:
        return False
    n = sequences(p, unreported)
    if n >= cap.max_batch_size:
        return True
    if not cap.kv_cache_budget_bytes:
        return False
    if cap.kv_cache_used_bytes >= cap.kv_cache_budget_bytes:
        return True
    if not cap.active_sequences:
        return False
    per_sequence = cap.kv_cache_used_bytes / cap.active_sequences
    extra = n - cap.active_sequences  # dispatched since the report, each of average size
    return cap.kv_cache_used_bytes + (extra + 1) * per_sequence > cap.kv_cache_budget_bytes


def is_full(
    p: presence_pb2.Presence, unreported: int = 0, unreported_sequences: int | None = None
) -> bool:
    """No room by slots (``unreported`` corrects the report's in-use and queued
    requests) or by sequences (``unreported_sequences`` corrects its active sequences;
    ``unreported`` when not given)."""
    cap = p.capacity
    if cap.slots and busy(p, unreported) >= cap.slots + cap.queue_limit:
        return True
    seqs = unreported if unreported_sequences is None else unreported_sequences
    return batch_full(p, seqs)


def score(
    p: presence_pb2.Presence,
    want: Placement,
    w: Weights = _DEFAULT_WEIGHTS,
    unreported: int = 0,
    unreported_sequences: int | None = None,
) -> float | None:
    if p.draining:
        return None
    if not any(
        s.model_id == want.model.model_id and s.version == want.model.version for s in p.supported
    ):
        return None
    cap = p.capacity
    if want.gpu_classes:
        gpu = 1.0 if p.gpu_class in want.gpu_classes else 0.0
    else:
        gpu = 0.5
    n = busy(p, unreported)
    running = min(n, cap.slots) if cap.slots else 0
    load = (n - running) + (running / cap.slots if cap.slots else 0.0)
    if cap.max_batch_size:  # a batching worker: how full its batch is counts too
        seqs = unreported if unreported_sequences is None else unreported_sequences
        load = max(load, sequences(p, seqs) / cap.max_batch_size)
    warm = any(
        c.model_id == want.model.model_id and c.version == want.model.version
        for c in p.health.model_cache
    )
    return (
        w.model
        + w.region * region_proximity(p.region, want.request_region)
        + w.gpu_class * gpu
        + w.queue / (1.0 + load)
        + w.warm_cache * (1.0 if warm else 0.0)
    )


def rank(
    entries: Sequence[WorkerEntry],
    want: Placement,
    w: Weights = _DEFAULT_WEIGHTS,
    in_flight: InFlight | None = None,
) -> list[Candidate]:
    """Candidates best first, full ones last; ``in_flight`` corrects each reported load
    (requests by slots, and sequences for a batching worker)."""
    scored = []
    for e in entries:
        extra = extra_seqs = 0
        if in_flight is not None:
            extra = in_flight.unreported(e.worker_id, busy(e.presence))
            extra_seqs = in_flight.unreported(e.worker_id, sequences(e.presence))
        s = score(e.presence, want, w, extra, extra_seqs)
        if s is not None:
            scored.append(Candidate(e, s, is_full(e.presence, extra, extra_seqs)))
    return sorted(scored, key=lambda c: (c.full, -c.score, c.entry.worker_id))
