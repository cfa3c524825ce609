"""Storage nodes and an ephemeral client on an in-memory network under trio's MockClock: the
real dht-rpc request path (query walk, tokens, commit) with virtual time, so expiry after 20
minutes and token rotation are checked without sleeping."""

from __future__ import annotations

import trio
import trio.testing
from storage_helpers import MemoryNetwork, announce_value, seeded_key_pair

from p2p_transport.crypto import hash as blake2b
from p2p_transport.dht_rpc import FIND_NODE, INVALID_TOKEN, DhtNode, QueryReply, query
from p2p_transport.hyperdht.messages import ANNOUNCE, LOOKUP, decode_lookup_reply
from p2p_transport.hyperdht.storage import StorageNode

TOPIC = blake2b(b"tether/control/eu-west")


async def _network(nursery: trio.Nursery, storage_count: int
                   ) -> tuple[DhtNode, list[StorageNode], DhtNode]:
    """A bootstrap node, ``storage_count`` storage nodes and one ephemeral client."""
    net = MemoryNetwork(nursery)
    boot_ep = net.endpoint(1000)
    boot = DhtNode(boot_ep, seed=1)
    boot_ep.serve(boot.datagram_received)
    await nursery.start(boot.run)
    nodes: list[StorageNode] = []
    for i in range(storage_count):
        ep = net.endpoint(2000 + i)
        storage = StorageNode(ep, bootstrap=[boot_ep.addr], seed=10 + i)
        ep.serve(storage.datagram_received)
        await nursery.start(storage.node.run)
        await storage.bootstrap()
        nodes.append(storage)
    client_ep = net.endpoint(3000)
    client = DhtNode(client_ep, bootstrap=[boot_ep.addr], seed=99)
    client_ep.serve(client.datagram_received)
    await nursery.start(client.run)
    await query(client, client.id, FIND_NODE, internal=True)
    return boot, nodes, client


async def _lookup(client: DhtNode) -> tuple[set[bytes], list[QueryReply]]:
    res = await query(client, TOPIC, LOOKUP)
    keys: set[bytes] = set()
    for reply in res.replies:
        if reply.value:
            keys |= {p.public_key for p in decode_lookup_reply(reply.value).peers}
    return keys, res.closest_replies


def test_announcements_expire_after_twenty_minutes_of_virtual_time() -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            _boot, nodes, client = await _network(nursery, 3)
            kp = seeded_key_pair(1)
            keys, closest = await _lookup(client)
            assert keys == set()
            assert {r.from_addr for r in closest} == {n.address for n in nodes}
            for reply in closest:
                assert reply.token is not None and reply.from_id is not None
                value = announce_value(kp, TOPIC, token=reply.token, nid=reply.from_id)
                res = await client.request(reply.from_addr, ANNOUNCE, target=TOPIC,
                                           value=value, token=reply.token)
                assert res.error == 0
            assert (await _lookup(client))[0] == {kp.public_key}
            await trio.sleep(19 * 60)
            assert (await _lookup(client))[0] == {kp.public_key}
            await trio.sleep(60)
            assert (await _lookup(client))[0] == set()
            assert all(len(n.persistent.records) == 0 for n in nodes)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_write_token_stops_working_after_two_rotations() -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            _boot, nodes, client = await _network(nursery, 1)
            kp = seeded_key_pair(2)
            _keys, [reply] = await _lookup(client)
            assert reply.token is not None and reply.from_id is not None
            value = announce_value(kp, TOPIC, token=reply.token, nid=reply.from_id)
            await trio.sleep(16)  # tokens rotate every 7.5 s and stay valid for one rotation
            res = await client.request(reply.from_addr, ANNOUNCE, target=TOPIC, value=value,
                                       token=reply.token)
            assert res.error == INVALID_TOKEN
            assert len(nodes[0].persistent.records) == 0
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
