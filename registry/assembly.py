"""The registry's wiring (``assemble``): run by ``registry.main`` and by the service tests."""

from __future__ import annotations

from registry.service import RegistryService
from tether import topics
from tether.admission import Admissions
from tether.assembly import Assembly, serve
from tether.rpc import collect_handlers


def assemble(
    service: RegistryService, region: str, *, admissions: Admissions | None = None
) -> Assembly:
    """Serve ``tether.v1.Registry`` on the region's registry topic; follow the store's
    worker admissions (``admissions``) while it runs."""
    return Assembly(
        handlers=collect_handlers(service),
        joins=[serve(topics.registry(region))],
        background=[admissions.follow] if admissions is not None else [],
    )
