"""Hyperswarm interop with Node on a local testnet: topic discovery and messages both ways,
and simultaneous connects de-duplicated to the same single connection on both ends."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import trio
from interop2_helpers import spawn_node

from p2p_transport.cenc import SocketAddress
from p2p_transport.hyperswarm import Hyperswarm, SwarmConnection

pytestmark = pytest.mark.interop


def _boot(ready: dict) -> list[SocketAddress]:
    return [SocketAddress(b["host"], b["port"]) for b in ready["bootstrap"]]


class Recorder:
    def __init__(self) -> None:
        self.connections: list[SwarmConnection] = []
        self.messages: list[tuple[bytes, bytes]] = []
        self.changed = trio.Event()

    async def __call__(self, conn: SwarmConnection) -> None:
        self.connections.append(conn)
        self._poke()
        await conn.send_message(b"hello from python")
        while True:
            try:
                msg = await conn.receive_message()
            except trio.EndOfChannel:
                return
            self.messages.append((conn.remote_public_key, msg))
            self._poke()

    def _poke(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, pred: Callable[[], bool]) -> None:
        while not pred():
            await self.changed.wait()


@pytest.mark.parametrize(("py_server", "py_client"), [(True, False), (False, True)],
                         ids=["python-server", "python-client"])
def test_swarm_message_exchange(py_server: bool, py_client: bool) -> None:
    async def main() -> None:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                node = await spawn_node(nursery, "swarm_peer.mjs", "--testnet", "3")
                ready = await node.expect_json("ready")
                node_key = bytes.fromhex(ready["publicKey"])
                topic = os.urandom(32)
                rec = Recorder()
                async with Hyperswarm.open(rec, bootstrap=_boot(ready)) as swarm:
                    if py_server:
                        await swarm.join(topic, server=True, client=False).flushed()
                        await node.send_json({"op": "join", "topic": topic.hex(),
                                              "server": False, "client": True})
                    else:
                        await node.send_json({"op": "join", "topic": topic.hex(),
                                              "server": True, "client": False})
                        await node.expect_json("joined")
                        swarm.join(topic, server=False, client=True)
                        await swarm.flush()
                    conn_ev = await node.expect_json("connection")
                    assert conn_ev["remotePublicKey"] == swarm.key_pair.public_key.hex()
                    got = await node.expect_json("data")
                    assert got["text"] == "hello from python"
                    await rec.wait_for(lambda: (node_key, b"hello from node") in rec.messages)
                    assert [c.is_initiator for c in rec.connections] == [py_client]
                    if py_server:
                        await node.send_json({"op": "lookup", "topic": topic.hex()})
                        peers = (await node.expect_json("lookup"))["peers"]
                        assert swarm.key_pair.public_key.hex() in peers
                    await swarm.leave(topic)
                    if py_server:  # leaving unannounces: Node's lookup no longer finds us
                        await node.send_json({"op": "lookup", "topic": topic.hex()})
                        peers = (await node.expect_json("lookup"))["peers"]
                        assert swarm.key_pair.public_key.hex() not in peers
                await node.close_stdin()
                await node.proc.wait()
                nursery.cancel_scope.cancel()

    trio.run(main)


def test_simultaneous_connects_are_deduplicated() -> None:
    async def main() -> None:
        with trio.fail_after(90):
            async with trio.open_nursery() as nursery:
                node = await spawn_node(nursery, "swarm_peer.mjs", "--testnet", "3")
                ready = await node.expect_json("ready")
                node_key = bytes.fromhex(ready["publicKey"])
                topic = os.urandom(32)
                rec = Recorder()
                async with Hyperswarm.open(rec, bootstrap=_boot(ready)) as swarm:
                    # both announce first, then both look up: each side dials the other
                    await node.send_json({"op": "join", "topic": topic.hex(),
                                          "server": True, "client": False})
                    await node.expect_json("joined")
                    await swarm.join(topic, server=True, client=False).flushed()
                    await node.send_json({"op": "join", "topic": topic.hex(),
                                          "server": True, "client": True})
                    swarm.join(topic, server=True, client=True)
                    await node.expect_json("joined")
                    await swarm.flush()
                    await rec.wait_for(lambda: node_key in swarm.connections)
                    await trio.sleep(3)  # let any duplicate settle
                    await node.send_json({"op": "status"})
                    status = await node.expect_json("status")
                    assert status["connections"] == [swarm.key_pair.public_key.hex()]
                    assert list(swarm.connections) == [node_key]
                    survivor = swarm.connections[node_key]
                    # the survivor was initiated by the peer with the larger key
                    assert survivor.is_initiator == (swarm.key_pair.public_key > node_key)
                    await node.send_json({"op": "send", "text": "after dedup"})
                    await rec.wait_for(lambda: (node_key, b"after dedup") in rec.messages)
                await node.close_stdin()
                await node.proc.wait()
                nursery.cancel_scope.cancel()

    trio.run(main)
