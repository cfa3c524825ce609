"""Tether RPC over real Hyperswarm connections: a service found by topic and by key."""

from __future__ import annotations

import pytest
import trio

from tests.integration.testnet import node_testnet
from tether import topics
from tether.keys import KeyPair
from tether.net import wait_for_peer
from tether.net.swarm import SwarmNetwork
from tether.rpc import ServerContext, collect_handlers
from tether.v1 import health_pb2, services_pb2, services_rpc


class Health(services_rpc.WorkerServicer):
    async def GetHealth(
        self, request: services_pb2.GetHealthRequest, context: ServerContext
    ) -> health_pb2.Health.Report:
        return health_pb2.Health.Report(worker_id="w-swarm", gpu_class="cpu")


@pytest.mark.interop
def test_rpc_over_hyperswarm_by_topic_and_by_key() -> None:
    async def main() -> None:
        with trio.fail_after(90):
            async with node_testnet(3) as bootstrap:
                server = SwarmNetwork(
                    KeyPair.generate(), collect_handlers(Health()), bootstrap=bootstrap
                )
                client = SwarmNetwork(KeyPair.generate(), {}, bootstrap=bootstrap)
                async with server.running(), client.running():
                    topic = topics.presence("eu-west")
                    await server.join(topic, server=True, client=False)
                    await client.join(topic, server=False, client=True)
                    peer = await wait_for_peer(client, topic)
                    assert peer.remote_key == server.public_key
                    report = await services_rpc.WorkerStub(peer.rpc).GetHealth(
                        services_pb2.GetHealthRequest(), timeout=10
                    )
                    assert report.worker_id == "w-swarm"

                    third = SwarmNetwork(KeyPair.generate(), {}, bootstrap=bootstrap)
                    async with third.running():
                        peer = await third.connect(server.public_key)
                        report = await services_rpc.WorkerStub(peer.rpc).GetHealth(
                            services_pb2.GetHealthRequest(), timeout=10
                        )
                        assert report.worker_id == "w-swarm"

    trio.run(main)
