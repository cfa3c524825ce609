"""Tether's RPC runtime over the Python Hyperswarm stack: a generated Worker service served by
one Python peer is called by another that found it by topic, and by public key. A Node testnet
provides the DHT storage nodes (Python peers are ephemeral)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
from interop2_helpers import spawn_node

from p2p_transport.cenc import SocketAddress
from p2p_transport.hyperdht import HyperDht, RawConnection, secure
from p2p_transport.hyperswarm import Hyperswarm, SwarmConnection
from p2p_transport.protomux import ChannelMessageStream, Mux
from tether.rpc import RpcConnection, ServerContext, collect_handlers, open_connection
from tether.topics import topic_key
from tether.v1 import health_pb2, infer_pb2, services_pb2, services_rpc

pytestmark = pytest.mark.interop

PROTOCOL = "tether-rpc"


class Worker(services_rpc.WorkerServicer):
    async def GetHealth(self, request: services_pb2.GetHealthRequest,
                        context: ServerContext) -> health_pb2.Health.Report:
        report = health_pb2.Health.Report(worker_id="w-python", gpu_class="cpu")
        report.capacity.slots = 2
        return report

    async def Infer(self, request: infer_pb2.Infer.Request,
                    context: ServerContext) -> AsyncIterator[infer_pb2.Infer.Chunk]:
        for seq in range(request.params.max_tokens):
            chunk = infer_pb2.Infer.Chunk(correlation_id=request.correlation_id, seq=seq,
                                          done=seq == request.params.max_tokens - 1)
            chunk.payload.text = f"tok{seq}"
            yield chunk


def _boot(ready: dict) -> list[SocketAddress]:
    return [SocketAddress(b["host"], b["port"]) for b in ready["bootstrap"]]


async def _serve_worker(stream: ChannelMessageStream, mux: Mux) -> None:
    async with trio.open_nursery() as nursery:
        stream.open()
        await nursery.start(mux.run)
        server = RpcConnection(stream, initiator=False, handlers=collect_handlers(Worker()))
        await server.run()
        nursery.cancel_scope.cancel()


async def _call_worker(stream: ChannelMessageStream, mux: Mux) -> list[str]:
    async with trio.open_nursery() as nursery:
        stream.open()
        await nursery.start(mux.run)
        await stream.wait_opened()
        async with open_connection(stream, initiator=True) as conn:
            stub = services_rpc.WorkerStub(conn)
            report = await stub.GetHealth(services_pb2.GetHealthRequest(), timeout=10)
            req = infer_pb2.Infer.Request(tenant_id="t", model_id="m", correlation_id="c")
            req.params.max_tokens = 3
            async with stub.Infer(req, timeout=10) as chunks:
                tokens = [c.payload.text async for c in chunks]
        nursery.cancel_scope.cancel()
    return [report.worker_id, *tokens]


def test_worker_found_by_topic() -> None:
    async def main() -> None:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                node = await spawn_node(nursery, "hyperdht_peer.mjs", "--testnet", "3")
                boot = _boot(await node.expect_json("ready"))
                results: list[list[str]] = []
                done = trio.Event()

                async def worker_side(conn: SwarmConnection) -> None:
                    mux = Mux(conn.stream)
                    await _serve_worker(ChannelMessageStream(mux, PROTOCOL), mux)

                async def client_side(conn: SwarmConnection) -> None:
                    mux = Mux(conn.stream)
                    results.append(await _call_worker(ChannelMessageStream(mux, PROTOCOL), mux))
                    done.set()

                topic = topic_key("tether/models/llama3.1-8b/1.0/us-east")
                async with Hyperswarm.open(worker_side, bootstrap=boot) as worker, \
                        Hyperswarm.open(client_side, bootstrap=boot) as client:
                    await worker.join(topic, server=True, client=False).flushed()
                    client.join(topic, server=False, client=True)
                    await done.wait()
                assert results == [["w-python", "tok0", "tok1", "tok2"]]
                await node.close_stdin()
                await node.proc.wait()

    trio.run(main)


def test_worker_called_by_public_key() -> None:
    async def main() -> None:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                node = await spawn_node(nursery, "hyperdht_peer.mjs", "--testnet", "3")
                boot = _boot(await node.expect_json("ready"))
                async with HyperDht.open(bootstrap=boot) as server_dht, \
                        HyperDht.open(bootstrap=boot) as client_dht:

                    async def on_conn(raw: RawConnection) -> None:
                        stream = await secure(raw, server_dht.nursery)
                        mux = Mux(stream)
                        await _serve_worker(ChannelMessageStream(mux, PROTOCOL), mux)

                    server = server_dht.create_server(on_conn)
                    await server.listen()
                    raw = await client_dht.connect(server.public_key)
                    stream = await secure(raw, client_dht.nursery)
                    mux = Mux(stream)
                    got = await _call_worker(ChannelMessageStream(mux, PROTOCOL), mux)
                    assert got == ["w-python", "tok0", "tok1", "tok2"]
                await node.close_stdin()
                await node.proc.wait()

    trio.run(main)
