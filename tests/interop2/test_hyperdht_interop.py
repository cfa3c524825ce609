"""HyperDHT interop with Node on a local testnet: signed announce/lookup/unannounce both
directions, and FIND_PEER of a Python self-announcement."""

from __future__ import annotations

import os

import pytest
import trio
from interop2_helpers import spawn_node

from p2p_transport.cenc import SocketAddress
from p2p_transport.crypto import key_pair
from p2p_transport.hyperdht import Firewall, HyperDht, RawConnection, secure

pytestmark = pytest.mark.interop


def _boot(ready: dict) -> list[SocketAddress]:
    return [SocketAddress(b["host"], b["port"]) for b in ready["bootstrap"]]


def test_topic_announce_and_lookup_both_directions() -> None:
    async def main() -> None:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                node = await spawn_node(nursery, "hyperdht_peer.mjs", "--testnet", "3")
                ready = await node.expect_json("ready")
                kp = key_pair()
                async with HyperDht.open(bootstrap=_boot(ready)) as dht:
                    # Python announces; Node looks it up
                    topic = os.urandom(32)
                    res = await dht.announce(topic, kp)
                    assert len(res.closest_replies) >= 2
                    await node.send_json({"op": "lookup", "topic": topic.hex()})
                    assert kp.public_key.hex() in (await node.expect_json("lookup"))["peers"]
                    # Node announces; Python looks it up
                    topic2 = os.urandom(32)
                    await node.send_json({"op": "announce", "topic": topic2.hex()})
                    await node.expect_json("announced")
                    peers = await dht.lookup(topic2)
                    assert [p.public_key.hex() for p in peers] == [ready["publicKey"]]
                    # Python unannounces; Node no longer sees it
                    await dht.unannounce(topic, kp)
                    await node.send_json({"op": "lookup", "topic": topic.hex()})
                    assert (await node.expect_json("lookup"))["peers"] == []
                    # re-announce with clear
                    await dht.announce(topic, kp, clear=True)
                    await node.send_json({"op": "lookup", "topic": topic.hex()})
                    assert (await node.expect_json("lookup"))["peers"] == [kp.public_key.hex()]
                await node.close_stdin()
                await node.proc.wait()

    trio.run(main)


@pytest.mark.parametrize("claim", [Firewall.OPEN, Firewall.UNKNOWN], ids=["open", "unknown"])
def test_python_client_connects_to_node_server(claim: int) -> None:
    async def main() -> None:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                node = await spawn_node(nursery, "hyperdht_peer.mjs", "--testnet", "3")
                ready = await node.expect_json("ready")
                await node.send_json({"op": "listen"})
                server_key = bytes.fromhex((await node.expect_json("listening"))["publicKey"])
                async with HyperDht.open(bootstrap=_boot(ready), firewall=claim) as dht:
                    raw = await dht.connect(server_key)
                    stream = await secure(raw, nursery)
                    assert stream.remote_public_key == server_key
                    await stream.send_message(b"ping from python")
                    got = await node.expect_json("data")
                    assert got["text"] == "ping from python"
                    assert got["remotePublicKey"] == dht.default_key_pair.public_key.hex()
                    assert await stream.receive_message() == b"echo:ping from python"
                    await stream.aclose()
                await node.close_stdin()
                await node.proc.wait()
                nursery.cancel_scope.cancel()

    trio.run(main)


def test_node_client_connects_to_python_server() -> None:
    async def main() -> None:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                node = await spawn_node(nursery, "hyperdht_peer.mjs", "--testnet", "3")
                ready = await node.expect_json("ready")
                received: list[bytes] = []
                async with HyperDht.open(bootstrap=_boot(ready)) as dht:

                    async def on_conn(raw: RawConnection) -> None:
                        stream = await secure(raw, nursery)
                        msg = await stream.receive_message()
                        received.append(msg)
                        await stream.send_message(b"echo:" + msg)

                    server = dht.create_server(on_conn)
                    await server.listen()
                    assert len(server.relays) >= 2
                    await node.send_json({"op": "find", "publicKey": server.public_key.hex()})
                    assert len((await node.expect_json("found"))["nodes"]) >= 2
                    await node.send_json({"op": "connect",
                                          "publicKey": server.public_key.hex(),
                                          "send": "ping from node"})
                    await node.expect_json("open")
                    got = await node.expect_json("data")
                    assert got["text"] == "echo:ping from node"
                    assert received == [b"ping from node"]
                    await server.close()
                await node.close_stdin()
                await node.proc.wait()
                nursery.cancel_scope.cancel()

    trio.run(main)
