"""Scheduler: the spec's affinity score (§3.2) and placement order.

    score = model match + region proximity + gpuClass match
            + inverse queue depth + warm-cache bonus

Model match is a gate, not a term that can be outweighed: a worker that does
not serve the requested version, is draining, or has no room (every slot busy
and its queue at its limit) is not a candidate. The remaining terms are each
in [0, 1] and weighted by ``Weights``; ties break by worker id so placement is
deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.discovery import WorkerEntry
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


def region_proximity(a: str, b: str) -> float:
    """1 for the same region, 0.5 for the same area (``eu-west`` ~ ``eu-north``)."""
    if a == b:
        return 1.0
    if a.split("-", 1)[0] == b.split("-", 1)[0]:
        return 0.5
    return 0.0


_DEFAULT_WEIGHTS = Weights()


def score(
    p: presence_pb2.Presence, want: Placement, w: Weights = _DEFAULT_WEIGHTS
) -> float | None:
    if p.draining:
        return None
    if not any(
        s.model_id == want.model.model_id and s.version == want.model.version for s in p.supported
    ):
        return None
    cap = p.capacity
    if cap.slots and cap.in_use >= cap.slots and cap.queue_depth >= cap.queue_limit:
        return None
    if want.gpu_classes:
        gpu = 1.0 if p.gpu_class in want.gpu_classes else 0.0
    else:
        gpu = 0.5
    load = cap.queue_depth + (cap.in_use / cap.slots if cap.slots else 0.0)
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
    entries: Sequence[WorkerEntry], want: Placement, w: Weights = _DEFAULT_WEIGHTS
) -> list[Candidate]:
    """Candidates best first."""
    scored = [
        Candidate(e, s) for e in entries if (s := score(e.presence, want, w)) is not None
    ]
    return sorted(scored, key=lambda c: (-c.score, c.entry.worker_id))
