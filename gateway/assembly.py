"""The gateway's wiring (``assemble``): run by ``gateway.main`` and by the service tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from gateway.service import GatewayService
from tether import topics
from tether.assembly import Assembly, find, serve
from tether.rpc import Handler, collect_handlers


def assemble(
    service: GatewayService,
    region: str,
    *,
    fallback_regions: Sequence[str] = (),
    wrap: Callable[[dict[str, Handler]], dict[str, Handler]] = lambda handlers: handlers,
    watch_readiness: bool = True,
) -> Assembly:
    """Serve ``tether.v1.Gateway`` on the region's gateway topic; find its orchestrators
    (control topic, and each fallback region's, in order) and registries; watch for dead
    orchestrators and (``watch_readiness``) check readiness every few seconds. ``wrap``
    decorates the handlers (access logs, test spies)."""
    background: list[Callable[[], Awaitable[None]]] = [service.orchestrators.watch]
    if watch_readiness:
        background.insert(0, service.watch_readiness)
    return Assembly(
        handlers=wrap(collect_handlers(service)),
        joins=[serve(topics.gateway(region)), find(topics.control(region)),
               *(find(topics.control(r)) for r in fallback_regions),
               find(topics.registry(region))],
        background=background,
    )
