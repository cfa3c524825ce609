"""Scheduler units: room by slots and, for a worker that batches, by sequences and
KV-cache budget, corrected by what this orchestrator dispatched since the heartbeat."""

from __future__ import annotations

from orchestrator.discovery import InFlight, WorkerEntry
from orchestrator.scheduler import Placement, WorkerRecord, batch_full, is_full, rank, score
from tether.v1 import health_pb2, presence_pb2

MODEL = presence_pb2.ModelKey(model_id="tiny-lm", version="1.0")
WANT = Placement(request_region="eu-west", model=MODEL)


def presence(worker_id: str = "w1", **capacity: int) -> presence_pb2.Presence:
    return presence_pb2.Presence(
        worker_id=worker_id,
        region="eu-west",
        supported=[MODEL],
        capacity=health_pb2.Capacity(**capacity),
    )


def record(worker_id: str = "w1", **capacity: int) -> WorkerRecord:
    """What placement reads of such a presence (made once per heartbeat in service)."""
    return WorkerRecord.of(presence(worker_id, **capacity))


def entry(p: presence_pb2.Presence) -> WorkerEntry:
    return WorkerEntry(p, peer=None, last_seen=0.0)  # type: ignore[arg-type]


def test_a_worker_without_a_batch_size_is_full_by_slots_and_queue() -> None:
    p = record(slots=2, in_use=2, queue_depth=1, queue_limit=2, active_sequences=99)
    assert not is_full(p)  # active_sequences means nothing without max_batch_size
    assert is_full(p, unreported=1)
    assert not batch_full(p, 1000)


def test_a_batching_worker_is_full_when_its_batch_is() -> None:
    """Slots and queue have room, but the batch holds max_batch_size sequences once the
    dispatches since the heartbeat are counted."""
    p = record(slots=16, in_use=3, queue_limit=8, max_batch_size=4, active_sequences=3)
    assert not is_full(p, 0, 0)
    assert is_full(p, 1, 1)
    # What ended since the heartbeat frees a seat again.
    assert not is_full(p, 0, -1)
    assert is_full(record(slots=16, max_batch_size=4, active_sequences=4))


def test_a_batching_worker_is_full_when_its_kv_budget_is() -> None:
    """Two sequences hold 600 of 1000 bytes: one more of that size (300) still fits,
    a second does not; a budget used up is full whatever the batch size."""
    p = record(slots=16, queue_limit=8, max_batch_size=8, active_sequences=2,
               kv_cache_budget_bytes=1000, kv_cache_used_bytes=600)
    assert not batch_full(p, 0)
    assert batch_full(p, 1)
    used_up = record(slots=16, max_batch_size=8, active_sequences=1,
                     kv_cache_budget_bytes=1000, kv_cache_used_bytes=1000)
    assert batch_full(used_up)
    # An idle worker's budget says nothing about the size of a sequence yet.
    assert not batch_full(record(max_batch_size=8, kv_cache_budget_bytes=1000), 3)


def test_placement_counts_its_own_dispatches_as_sequences() -> None:
    """Between heartbeats the orchestrator's own dispatches fill the batch: a batching
    worker with one free seat takes one request and is full for the next, and the
    less loaded batch is ranked first."""
    busy = entry(presence("w1", slots=8, queue_limit=8, max_batch_size=4, active_sequences=3))
    idle = entry(presence("w2", slots=8, queue_limit=8, max_batch_size=4, active_sequences=0))
    in_flight = InFlight()
    ranked = rank([busy, idle], WANT, in_flight=in_flight)
    assert [(c.entry.worker_id, c.full) for c in ranked] == [("w2", False), ("w1", False)]
    in_flight.started("w1")
    ranked = rank([busy, idle], WANT, in_flight=in_flight)
    assert [(c.entry.worker_id, c.full) for c in ranked] == [("w2", False), ("w1", True)]
    # The next heartbeat reports the sequence; the count is not doubled.
    in_flight.heartbeat("w1")
    busy.presence.capacity.active_sequences = 4
    assert rank([busy], WANT, in_flight=in_flight)[0].full
    in_flight.ended("w1")
    assert not rank([busy], WANT, in_flight=in_flight)[0].full


def test_batch_occupancy_lowers_the_score() -> None:
    empty = record(slots=16, max_batch_size=8, active_sequences=0)
    half = record(slots=16, in_use=4, max_batch_size=8, active_sequences=4)
    s_empty, s_half = score(empty, WANT), score(half, WANT)
    assert s_empty is not None and s_half is not None and s_empty > s_half
