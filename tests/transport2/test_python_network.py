"""The upper layers between Python peers only, on an in-process loopback testnet of Python
storage nodes (no Node.js): topic announce/lookup/unannounce, relayed connects by key, RPC,
and swarms that de-duplicate simultaneous connects."""

from __future__ import annotations

import os

import pytest
import trio

from p2p_transport.cenc import SocketAddress
from p2p_transport.crypto import key_pair
from p2p_transport.hyperdht import HyperDht, RawConnection, secure
from p2p_transport.hyperswarm import Hyperswarm, SwarmConnection
from p2p_transport.rpc import HyperswarmRpc, RpcError
from p2p_transport.testnet import open_testnet


def test_announce_lookup_unannounce() -> None:
    async def main() -> None:
        with trio.fail_after(30):
            async with open_testnet(4) as net, HyperDht.open(bootstrap=net.bootstrap) as a, \
                    HyperDht.open(bootstrap=net.bootstrap) as b:
                topic = os.urandom(32)
                kp = key_pair()
                await a.announce(topic, kp)
                assert [p.public_key for p in await b.lookup(topic)] == [kp.public_key]
                await a.unannounce(topic, kp)
                assert await b.lookup(topic) == []

    trio.run(main)


def test_relayed_connect_and_rpc_by_key() -> None:
    async def main() -> None:
        with trio.fail_after(30):
            async with open_testnet(3) as net, \
                    HyperDht.open(bootstrap=net.bootstrap) as server_dht, \
                    HyperDht.open(bootstrap=net.bootstrap) as client_dht:

                async def on_conn(raw: RawConnection) -> None:
                    stream = await secure(raw, server_dht.nursery)
                    await stream.send_message(b"echo:" + await stream.receive_message())

                server = server_dht.create_server(on_conn)
                await server.listen()
                assert len(server.relays) == 2  # the two storage nodes hold our record
                raw = await client_dht.connect(server.public_key)
                stream = await secure(raw, client_dht.nursery)
                await stream.send_message(b"relayed")
                assert await stream.receive_message() == b"echo:relayed"
                await stream.aclose()
                assert len(await client_dht.find_peer(server.public_key)) == 2
                await server.close()  # unannounces from its relays
                assert await client_dht.find_peer(server.public_key) == []

                def upper(v: bytes | None) -> bytes | None:
                    return (v or b"").upper()

                rpc_server = await HyperswarmRpc(server_dht).serve({"upper": upper},
                                                                    key_pair_=key_pair())
                rpc = HyperswarmRpc(client_dht)
                assert await rpc.request(rpc_server.public_key, "upper", b"abc") == b"ABC"
                with pytest.raises(RpcError) as info:
                    await rpc.request(rpc_server.public_key, "nope")
                assert info.value.code == "UNKNOWN_METHOD"
                await rpc.aclose()

    trio.run(main)


class _Chat:
    def __init__(self) -> None:
        self.got: list[tuple[bytes, bytes]] = []
        self.greeted = trio.Event()
        self.peer_key = b""

    async def __call__(self, conn: SwarmConnection) -> None:
        await conn.send_message(b"hi")
        while True:
            try:
                msg = await conn.receive_message()
            except trio.EndOfChannel:
                return
            self.got.append((conn.remote_public_key, msg))
            if (self.peer_key, b"hi") in self.got:
                self.greeted.set()


def test_swarms_deduplicate_simultaneous_connects() -> None:
    async def main() -> None:
        with trio.fail_after(60):
            async with open_testnet(3) as net:
                chat_a, chat_b = _Chat(), _Chat()
                topic = os.urandom(32)
                async with Hyperswarm.open(chat_a, bootstrap=net.bootstrap) as a, \
                        Hyperswarm.open(chat_b, bootstrap=net.bootstrap) as b:
                    ka, kb = a.key_pair.public_key, b.key_pair.public_key
                    chat_a.peer_key, chat_b.peer_key = kb, ka
                    await a.join(topic, server=True, client=False).flushed()
                    await b.join(topic, server=True, client=False).flushed()
                    a.join(topic, server=True, client=True)
                    b.join(topic, server=True, client=True)
                    await a.flush()
                    await b.flush()
                    await chat_a.greeted.wait()
                    await chat_b.greeted.wait()
                    await trio.sleep(2)  # let a duplicate, if any, settle
                    assert list(a.connections) == [kb] and list(b.connections) == [ka]
                    ca, cb = a.connections[kb], b.connections[ka]
                    assert ca.is_initiator != cb.is_initiator  # the same connection
                    assert ca.is_initiator == (ka > kb)  # initiated by the larger key
                    await a.leave(topic)
                    assert await b.dht.lookup(topic) != []  # b is still announced

    trio.run(main)


def test_server_reannounces_when_a_relay_stops_answering() -> None:
    async def main() -> None:
        with trio.fail_after(30):
            async with open_testnet(3) as net, HyperDht.open(bootstrap=net.bootstrap) as dht:

                async def on_conn(raw: RawConnection) -> None:
                    await raw.stream.aclose()

                server = dht.create_server(on_conn)
                server.relay_ping_interval = 0.2
                await server.listen()
                good = list(server.relays)
                dead = SocketAddress("127.0.0.1", 9)  # nothing answers there
                server.relays = [(dead, dead), *good]
                await server.wait_announced()
                assert sorted(n.port for n, _ in server.relays) == sorted(n.port for n, _ in good)
                await server.close()

    trio.run(main)


def test_join_peer_connects_by_key() -> None:
    async def main() -> None:
        with trio.fail_after(30):
            async with open_testnet(3) as net:
                chat_a, chat_b = _Chat(), _Chat()
                async with Hyperswarm.open(chat_a, bootstrap=net.bootstrap) as a, \
                        Hyperswarm.open(chat_b, bootstrap=net.bootstrap) as b:
                    chat_a.peer_key = b.key_pair.public_key
                    await b.listen()
                    a.join_peer(b.key_pair.public_key)
                    await chat_a.greeted.wait()
                    assert list(a.connections) == [b.key_pair.public_key]
                    assert a.connections[b.key_pair.public_key].is_initiator
                    a.leave_peer(b.key_pair.public_key)
                    assert not a.peers[b.key_pair.public_key].explicit

    trio.run(main)


def test_flush_returns_when_a_discovered_peer_is_unreachable() -> None:
    async def main() -> None:
        with trio.fail_after(40):
            async with open_testnet(3) as net, HyperDht.open(bootstrap=net.bootstrap) as dht:
                topic = os.urandom(32)
                ghost = key_pair()  # announced, but nobody listens on its key
                await dht.announce(topic, ghost)
                chat = _Chat()
                async with Hyperswarm.open(chat, bootstrap=net.bootstrap) as swarm:
                    swarm.join(topic, server=False, client=True)
                    await swarm.flush()  # the connect fails (PEER_NOT_FOUND); flush still ends
                    assert swarm.connections == {}
                    assert swarm.peers[ghost.public_key].attempts == 1

    trio.run(main)
