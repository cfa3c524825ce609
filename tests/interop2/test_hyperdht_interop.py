"""HyperDHT interop with Node on a local testnet: signed announce/lookup/unannounce both
directions, and FIND_PEER of a Python self-announcement."""

from __future__ import annotations

import os

import pytest
import trio
from interop2_helpers import spawn_node

from p2p_transport.cenc import SocketAddress
from p2p_transport.crypto import key_pair
from p2p_transport.hyperdht import HyperDht

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
