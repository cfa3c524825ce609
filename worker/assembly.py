"""The worker's wiring (``assemble``): run by ``worker.main`` and by the service tests."""

from __future__ import annotations

from collections.abc import Iterable

from tether import topics
from tether.assembly import Assembly, find, serve
from tether.rpc import collect_handlers
from worker.service import WorkerService


def assemble(service: WorkerService, region: str, models: Iterable[tuple[str, str]]) -> Assembly:
    """Serve ``tether.v1.Worker`` on the region's presence topic and on the topic of each
    (model, version) it serves; dial the region's orchestrators too (control topic): ones
    that looked the presence topic up before this worker announced would otherwise find
    it only at their next refresh."""
    return Assembly(
        handlers=collect_handlers(service),
        joins=[serve(topics.presence(region)), find(topics.control(region)),
               *[serve(topics.models(model, version, region)) for model, version in models]],
    )
