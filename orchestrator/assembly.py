"""The orchestrator's wiring (``assemble``): run by ``orchestrator.main`` and by the service
tests."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

from orchestrator.control import ControlService
from orchestrator.discovery import DiscoverySub
from orchestrator.service import OrchestratorService
from tether import topics
from tether.assembly import Assembly, find, serve
from tether.rpc import Handler, collect_handlers


def assemble(
    service: OrchestratorService,
    control: ControlService,
    discovery: DiscoverySub,
    regions: Sequence[str],
    *,
    wrap: Callable[[dict[str, Handler]], dict[str, Handler]] = lambda handlers: handlers,
) -> Assembly:
    """Serve ``tether.v1.Orchestrator`` and ``Control`` on the control topic of
    ``regions[0]`` (its own region); find the registry there and the workers on the
    presence topics of every region in ``regions``.

    Before it is reachable it watches peers (``DiscoverySub.run``), takes its lease
    (failing the jobs a previous run of it left) and starts its group-commit writer; once
    joined it follows the registry's model topics, which join the list of topics discovery
    looks up again. ``wrap`` decorates the handlers (test spies)."""
    regions = list(dict.fromkeys(regions))
    # Topics DiscoverySub looks up again periodically; model topics join it as the
    # registry lists models (follow_model_topics appends to this same list).
    refreshed = [topics.presence(r) for r in regions]
    return Assembly(
        handlers=wrap(collect_handlers(service, control)),
        startup=[functools.partial(discovery.run, refresh=refreshed), service.keep_lease,
                 service.writer.run],
        joins=[serve(topics.control(regions[0])), find(topics.registry(regions[0])),
               *[find(topic) for topic in refreshed]],
        background=[functools.partial(service.follow_model_topics, regions, refreshed)],
    )
