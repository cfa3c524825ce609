"""Python peers on a Python-only loopback testnet (real UDP sockets, no Node): Hyperswarm topic
discovery and messages, a connection by public key relayed through a storage node, and the
server's unannounce on close."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import trio

from p2p_transport import testnet as testnet_mod
from p2p_transport.cenc import SocketAddress
from p2p_transport.dht_rpc import node_id
from p2p_transport.hyperdht import HyperDht, PeerNotFound, RawConnection, secure
from p2p_transport.hyperdht.messages import Mode, decode_handshake
from p2p_transport.hyperdht.router import Action
from p2p_transport.hyperswarm import Hyperswarm, SwarmConnection
from p2p_transport.testnet import open_testnet


def test_testnet_nodes_know_each_other() -> None:
    async def main() -> None:
        with trio.fail_after(20):
            async with open_testnet(4) as testnet:
                assert len(testnet.bootstrap) == 4
                assert len(set(testnet.bootstrap)) == 4
                assert len(testnet.storage_nodes) == 3
                # the bootstrap node stays ephemeral; every storage node is in its table
                assert testnet.bootstrap_node.ephemeral
                assert len(testnet.bootstrap_node.table) == 3
                for storage in testnet.storage_nodes:
                    assert not storage.node.ephemeral
                    assert len(storage.node.table) >= 1

    trio.run(main)


class _Inbox:
    def __init__(self, greeting: bytes) -> None:
        self.greeting = greeting
        self.messages: list[tuple[bytes, bytes]] = []
        self.changed = trio.Event()

    async def __call__(self, conn: SwarmConnection) -> None:
        await conn.send_message(self.greeting)
        while True:
            try:
                msg = await conn.receive_message()
            except trio.EndOfChannel:
                return
            self.messages.append((conn.remote_public_key, msg))
            self.changed.set()
            self.changed = trio.Event()

    async def wait_for(self, pred: Callable[[], bool]) -> None:
        while not pred():
            await self.changed.wait()


def test_two_python_swarms_meet_on_a_topic() -> None:
    async def main() -> None:
        with trio.fail_after(40):
            async with open_testnet(3) as testnet:
                boot = testnet.bootstrap[:1]  # only the bootstrap node: the rest is discovered
                topic = os.urandom(32)
                a_inbox, b_inbox = _Inbox(b"hello from a"), _Inbox(b"hello from b")
                async with Hyperswarm.open(a_inbox, bootstrap=boot) as a, \
                        Hyperswarm.open(b_inbox, bootstrap=boot) as b:
                    await a.join(topic, server=True, client=False).flushed()
                    stored = sum(len(s.persistent.records) for s in testnet.storage_nodes)
                    assert stored >= 1  # the topic announcement landed on storage nodes
                    b.join(topic, server=False, client=True)
                    await b.flush()
                    a_key, b_key = a.key_pair.public_key, b.key_pair.public_key
                    await a_inbox.wait_for(lambda: (b_key, b"hello from b") in a_inbox.messages)
                    await b_inbox.wait_for(lambda: (a_key, b"hello from a") in b_inbox.messages)
                    assert list(a.connections) == [b_key]
                    assert list(b.connections) == [a_key]
                    await a.leave(topic)
                    assert sum(len(s.persistent.records)
                               for s in testnet.storage_nodes) == 0  # unannounced

    trio.run(main)


def _spy_on_handshakes(testnet: testnet_mod.Testnet) -> list[int]:
    """Record the modes of the handshakes the storage nodes relay (a spy on the real router)."""
    modes: list[int] = []
    for storage in testnet.storage_nodes:
        real = storage.router.on_peer_handshake

        def spy(target: bytes | None, value: bytes | None, frm: SocketAddress, now: float,
                real: Callable[..., Action | None] = real) -> Action | None:
            if value:
                modes.append(decode_handshake(value).mode)
            return real(target, value, frm, now)

        setattr(storage.router, "on_peer_handshake", spy)  # noqa: B010 (a spy on one instance)
    return modes


def test_python_client_connects_by_key_through_a_storage_node() -> None:
    async def main() -> None:
        with trio.fail_after(40):
            async with open_testnet(3) as testnet:
                boot = testnet.bootstrap[:1]
                async with HyperDht.open(bootstrap=boot) as server_dht, \
                        HyperDht.open(bootstrap=boot) as client_dht, \
                        trio.open_nursery() as nursery:

                    async def on_conn(raw: RawConnection) -> None:
                        stream = await secure(raw, nursery)
                        msg = await stream.receive_message()
                        await stream.send_message(b"echo:" + msg)

                    server = server_dht.create_server(on_conn)
                    await server.listen()
                    assert {node for node, _ in server.relays} <= set(testnet.bootstrap[1:])
                    routed = [s for s in testnet.storage_nodes
                              if s.router.get(server.target, trio.current_time()) is not None]
                    assert routed  # the self-announce made router entries
                    modes = _spy_on_handshakes(testnet)
                    raw = await client_dht.connect(server.public_key)
                    assert raw.remote_public_key == server.public_key
                    # relayed: the client's message went out FROM_CLIENT, came back FROM_SERVER
                    assert Mode.FROM_CLIENT in modes and Mode.FROM_SERVER in modes
                    stream = await secure(raw, nursery)
                    await stream.send_message(b"ping")
                    assert await stream.receive_message() == b"echo:ping"
                    await stream.aclose()
                    await server.close()
                    for storage in testnet.storage_nodes:
                        assert storage.router.get(server.target, trio.current_time()) is None
                    try:
                        await client_dht.connect(server.public_key, timeout=10)
                    except PeerNotFound:
                        pass
                    else:
                        raise AssertionError("connected to a server that unannounced")
                    nursery.cancel_scope.cancel()

    trio.run(main)


def test_persistent_hyperdht_peers_store_and_relay() -> None:
    async def main() -> None:
        with trio.fail_after(40):
            async with open_testnet(2) as testnet:
                boot = testnet.bootstrap[:1]
                async with HyperDht.open(bootstrap=boot, persistent=True) as relay_a, \
                        HyperDht.open(bootstrap=boot, persistent=True) as relay_b, \
                        HyperDht.open(bootstrap=boot) as server_dht, \
                        HyperDht.open(bootstrap=boot) as client_dht, \
                        trio.open_nursery() as nursery:
                    for relay in (relay_a, relay_b):
                        assert not relay.node.ephemeral
                        assert relay.node.id == node_id(relay.local_address)

                    async def on_conn(raw: RawConnection) -> None:
                        stream = await secure(raw, nursery)
                        await stream.send_message(b"from server")

                    server = server_dht.create_server(on_conn)
                    await server.listen()
                    holders = [r for r in (relay_a, relay_b)
                               if r.storage is not None
                               and r.storage.router.get(server.target,
                                                        trio.current_time()) is not None]
                    assert holders  # a peer in persistent mode took the self-announce
                    raw = await client_dht.connect(server.public_key)
                    stream = await secure(raw, nursery)
                    assert await stream.receive_message() == b"from server"
                    await stream.aclose()
                    nursery.cancel_scope.cancel()

    trio.run(main)


@pytest.mark.parametrize(("size", "host"), [(1, "127.0.0.1"), (3, "0.0.0.0")])
def test_open_testnet_rejects_bad_arguments(size: int, host: str) -> None:
    async def main() -> None:
        async with open_testnet(size, host=host):
            raise AssertionError("unreachable")

    with pytest.raises(ValueError, match="testnet"):
        trio.run(main)


def test_persistent_hyperdht_refuses_the_wildcard_host() -> None:
    async def main() -> None:
        async with HyperDht.open("0.0.0.0", persistent=True):
            raise AssertionError("unreachable")

    with pytest.raises(ValueError, match=r"0\.0\.0\.0"):
        trio.run(main)
