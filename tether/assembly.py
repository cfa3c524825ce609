"""What a service runs on a network, in one value: its RPC handlers, the topics it joins
and its background tasks (:class:`Assembly`).

Each service builds its own with one ``assemble(...)`` function (``gateway.assembly``,
``orchestrator.assembly``, ``registry.assembly``, ``worker.assembly``); the service's
``main`` and the test harness both run that, so the topic wiring is written once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from tether.rpc import Handler


class Joinable(Protocol):
    """The part of a network an assembly uses (``SwarmNetwork``, ``LocalNetwork``)."""

    handlers: dict[str, Handler]

    async def join(self, topic: str, *, server: bool = True, client: bool = True) -> None: ...

    def running(self) -> AbstractAsyncContextManager[object]: ...


@dataclass(frozen=True)
class Join:
    """One topic: announced as a ``server`` (peers find this one), looked up as a
    ``client`` (this one dials the peers announced there), or both."""

    topic: str
    server: bool
    client: bool


def serve(topic: str) -> Join:
    """Announce on ``topic``: peers find this service there."""
    return Join(topic, server=True, client=False)


def find(topic: str) -> Join:
    """Look ``topic`` up: this service dials the peers announced there."""
    return Join(topic, server=False, client=True)


#: A task started with ``nursery.start``: it calls ``task_status.started()`` once ready.
Startup = Callable[..., Awaitable[Any]]


@dataclass
class Assembly:
    """A service's wiring (see the module doc): :meth:`running` starts a network with it;
    :meth:`run` adds it to a network already running (a worker's, which asks the registry
    what to serve first)."""

    handlers: Mapping[str, Handler]
    joins: list[Join]
    #: Started in order, each ready (``task_status.started()``) before the next and before
    #: any topic is joined: what must hold before peers reach the service.
    startup: list[Startup] = field(default_factory=list)
    #: Started once every topic is joined; they run until the service stops.
    background: list[Callable[[], Awaitable[Any]]] = field(default_factory=list)

    @asynccontextmanager
    async def running(self, network: Joinable) -> AsyncIterator[None]:
        """``network`` running with this wiring, ready (topics joined) inside the block.

        The handlers are given before the network starts: a connection takes the handlers
        it finds when it opens, and a peer that knows this one's key may dial it at once."""
        network.handlers.update(self.handlers)
        async with network.running(), trio.open_nursery() as nursery:
            await nursery.start(self.run, network)
            yield
            nursery.cancel_scope.cancel()

    async def run(
        self, network: Joinable, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Give the running ``network`` the handlers (from its next connection on), start
        the startup tasks, join the topics, start the background tasks; ready then, and runs
        until cancelled."""
        network.handlers.update(self.handlers)
        async with trio.open_nursery() as nursery:
            for start in self.startup:
                await nursery.start(start)
            for join in self.joins:
                await network.join(join.topic, server=join.server, client=join.client)
            for task in self.background:
                nursery.start_soon(task)
            task_status.started()
