"""Node Hyperswarm peers on the Python testnet: they bootstrap from the Python bootstrap node,
announce to and look up on Python storage nodes, and connect through the handshakes and
holepunch messages those nodes relay.

Between two Node peers on one loopback host, hyperdht races its LAN shortcut against holepunch
rounds, and now and then (on a Node testnet as well) the first connection carries no data and
Hyperswarm's retry connects about 15 s later; the time limits leave room for that retry.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import trio
from storage_helpers import ROOT, require_node, spawn_swarm_peer

from p2p_transport.crypto import hash as blake2b
from p2p_transport.crypto import key_pair, verify
from p2p_transport.hyperdht.persistent import decode_mutable_value, mutable_signable
from p2p_transport.hyperswarm import Hyperswarm, SwarmConnection
from p2p_transport.testnet import open_testnet

STORAGE_CLIENT = Path(__file__).resolve().parent / "node" / "dht_storage_client.mjs"

pytestmark = pytest.mark.interop


def test_two_node_swarms_meet_through_the_python_testnet() -> None:
    require_node()

    async def main() -> None:
        with trio.fail_after(100):
            async with open_testnet(3) as testnet, trio.open_nursery() as nursery:
                boot = testnet.bootstrap[0]
                where = f"{boot.host}:{boot.port}"
                server = await spawn_swarm_peer(nursery, "--bootstrap", where)
                client = await spawn_swarm_peer(nursery, "--bootstrap", where)
                server_key = (await server.expect_json("ready"))["publicKey"]
                client_key = (await client.expect_json("ready"))["publicKey"]
                topic = os.urandom(32).hex()
                await server.send_json({"op": "join", "topic": topic, "server": True,
                                        "client": False})
                await server.expect_json("joined")
                assert sum(len(s.persistent.records) for s in testnet.storage_nodes) >= 1
                await client.send_json({"op": "join", "topic": topic, "server": False,
                                        "client": True})
                conn = await client.expect_json("connection")
                assert conn["remotePublicKey"] == server_key
                assert conn["initiator"] is True
                got = await client.expect_json("data")
                assert (got["remotePublicKey"], got["text"]) == (server_key, "hello from node")
                got = await server.expect_json("data")
                assert (got["remotePublicKey"], got["text"]) == (client_key, "hello from node")
                await server.send_json({"op": "send", "text": "more"})
                got = await client.expect_json("data")
                assert got["text"] == "more"
                # the connection was relayed by Python storage nodes, not found some other way
                relayed = sum(s.node.stats["requests"] for s in testnet.storage_nodes)
                assert relayed > 0
                await server.close()
                await client.close()

    trio.run(main)


def test_node_client_finds_a_python_server_through_the_python_testnet() -> None:
    require_node()

    async def main() -> None:
        with trio.fail_after(60):
            async with open_testnet(3) as testnet, trio.open_nursery() as nursery:
                boot = testnet.bootstrap[0]
                received: list[bytes] = []
                got_one = trio.Event()

                async def on_conn(conn: SwarmConnection) -> None:
                    await conn.send_message(b"hello from python")
                    received.append(await conn.receive_message())
                    got_one.set()

                topic = os.urandom(32)
                async with Hyperswarm.open(on_conn, bootstrap=[boot]) as swarm:
                    await swarm.join(topic, server=True, client=False).flushed()
                    node = await spawn_swarm_peer(nursery, "--bootstrap",
                                            f"{boot.host}:{boot.port}")
                    await node.expect_json("ready")
                    await node.send_json({"op": "join", "topic": topic.hex(), "server": False,
                                          "client": True})
                    conn = await node.expect_json("connection")
                    assert conn["remotePublicKey"] == swarm.key_pair.public_key.hex()
                    got = await node.expect_json("data")
                    assert got["text"] == "hello from python"
                    await got_one.wait()
                    assert received == [b"hello from node"]
                    await node.close()

    trio.run(main)


def test_node_dht_storage_commands_against_python_storage_nodes() -> None:
    node = require_node()
    seed = bytes([0x11]) * 32
    public_key = key_pair(seed).public_key

    async def main() -> None:
        with trio.fail_after(60):
            async with open_testnet(3) as testnet:
                boot = testnet.bootstrap[0]
                done = await trio.run_process(
                    [node, str(STORAGE_CLIENT), "--bootstrap", f"{boot.host}:{boot.port}",
                     "--seed", seed.hex()],
                    capture_stdout=True, cwd=str(ROOT), check=True)
                steps = {s["step"]: s for s in map(json.loads, done.stdout.splitlines())}
                # Node keeps our storage nodes in its routing table: their ids check out
                table = {(n["host"], n["port"]) for n in steps["table"]["nodes"]}
                assert {(n.address.host, n.address.port)
                        for n in testnet.storage_nodes} <= table
                immutable = steps["immutable"]
                assert immutable["value"] == "an immutable tether value"
                assert immutable["nodes"] == 2  # both storage nodes took the value
                assert steps["mutable"] == {"step": "mutable", "seq": 1, "value": "mutable v1"}
                # a stale put is refused (SEQ_TOO_LOW); hyperdht's mutablePut does not raise
                target = blake2b(public_key)
                for storage in testnet.storage_nodes:
                    raw = storage.persistent.mutables.get(target, trio.current_time())
                    assert raw is not None
                    stored = decode_mutable_value(raw)
                    assert (stored.seq, stored.value) == (1, b"mutable v1")
                    assert verify(mutable_signable(1, b"mutable v1"), stored.signature,
                                  public_key)
                peers = steps["lookup"]["peers"]
                assert {p["publicKey"] for p in peers} == {public_key.hex()}
                assert all(p["relayAddresses"] == [{"host": "127.0.0.1", "port": 1234}]
                           for p in peers)
                assert steps["lookup-after-unannounce"]["peers"] == []

    trio.run(main)


def test_python_client_finds_a_node_server_through_the_python_testnet() -> None:
    require_node()

    async def main() -> None:
        with trio.fail_after(60):
            async with open_testnet(3) as testnet, trio.open_nursery() as nursery:
                boot = testnet.bootstrap[0]
                node = await spawn_swarm_peer(nursery, "--bootstrap", f"{boot.host}:{boot.port}")
                node_key = bytes.fromhex((await node.expect_json("ready"))["publicKey"])
                topic = os.urandom(32)
                await node.send_json({"op": "join", "topic": topic.hex(), "server": True,
                                      "client": False})
                await node.expect_json("joined")
                received: list[tuple[bytes, bytes]] = []
                got_one = trio.Event()

                async def on_conn(conn: SwarmConnection) -> None:
                    await conn.send_message(b"hello from python")
                    received.append((conn.remote_public_key, await conn.receive_message()))
                    got_one.set()

                async with Hyperswarm.open(on_conn, bootstrap=[boot]) as swarm:
                    swarm.join(topic, server=False, client=True)
                    await got_one.wait()
                    assert received == [(node_key, b"hello from node")]
                    got = await node.expect_json("data")
                    assert got["text"] == "hello from python"
                await node.close()

    trio.run(main)
