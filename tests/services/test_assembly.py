"""``tether.assembly``: a service's wiring runs in one order everywhere (handlers before the
network runs, startup tasks before any topic is joined, background tasks after), and the
in-memory network closes a stopped node's connections for its peers."""

from __future__ import annotations

import trio
import trio.testing

from tether import topics
from tether.assembly import Assembly, find, serve
from tether.keys import KeyPair
from tether.net.local import LocalHub, LocalNetwork
from tether.rpc import collect_handlers
from tether.v1 import services_pb2, services_rpc


class Echo(services_rpc.RegistryServicer):
    """A registry that lists no models (enough to show a handler is reachable)."""

    async def ListModels(self, request, context):
        return services_pb2.ListModelsResponse()


def test_an_assembly_runs_in_order_and_serves() -> None:
    trio.run(_runs_in_order_and_serves)


async def _runs_in_order_and_serves() -> None:
    hub = LocalHub()
    net = LocalNetwork(hub, KeyPair.generate(), {})
    seen: list[str] = []

    async def startup(*, task_status: trio.TaskStatus[None]) -> None:
        seen.append(f"startup, joined {sorted(hub.servers)}")
        task_status.started()
        await trio.sleep_forever()

    async def background() -> None:
        seen.append(f"background, joined {sorted(hub.servers)}")
        await trio.sleep_forever()

    region = "eu-west"
    assembly = Assembly(
        handlers=collect_handlers(Echo()),
        joins=[serve(topics.registry(region)), find(topics.control(region))],
        startup=[startup],
        background=[background],
    )
    client = LocalNetwork(hub, KeyPair.generate(), {})
    async with assembly.running(net), client.running():
        assert net.handlers.keys() == assembly.handlers.keys()
        await client.join(topics.registry(region), server=False, client=True)
        (peer,) = client.peers()
        stub = services_rpc.RegistryStub(peer.rpc)
        assert await stub.ListModels(services_pb2.ListModelsRequest(), timeout=5) is not None
        await trio.testing.wait_all_tasks_blocked()
        assert seen == ["startup, joined []", f"background, joined {[topics.registry(region)]}"]
        assert net.public_key in hub.clients[topics.control(region)]


def test_a_cancelled_node_closes_its_connections_for_its_peers() -> None:
    """A node stopped by cancellation (a killed service in the harness) closes each of its
    connections, whichever task is cancelled first: its peers see them end."""
    trio.run(_cancelled_node_closes)


async def _cancelled_node_closes() -> None:
    hub = LocalHub()
    server = LocalNetwork(hub, KeyPair.generate(), collect_handlers(Echo()))
    clients = [LocalNetwork(hub, KeyPair.generate(), {}) for _ in range(3)]
    async with trio.open_nursery() as nursery:
        for c in clients:
            await nursery.start(_run, c)

        async def run_server(*, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
            with trio.CancelScope() as scope:
                async with server.running(), trio.open_nursery():
                    await server.join("tether/registry/eu-west", server=True, client=False)
                    task_status.started(scope)
                    await trio.sleep_forever()

        for c in clients:
            await c.join("tether/registry/eu-west", server=False, client=True)
        scope: trio.CancelScope = await nursery.start(run_server)
        for c in clients:
            await c.join("tether/registry/eu-west", server=False, client=True)
        peers = [peer for c in clients for peer in c.peers()]
        assert len(peers) == len(clients)
        scope.cancel()
        with trio.fail_after(5):
            for peer in peers:
                await peer.closed.wait()
        assert not any(c.peers() for c in clients)
        nursery.cancel_scope.cancel()


async def _run(net: LocalNetwork, *, task_status: trio.TaskStatus[None]) -> None:
    async with net.running():
        task_status.started()
        await trio.sleep_forever()
