"""Python secret-stream against Node's @hyperswarm/secret-stream, both over UDX on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from transport_node_harness import NodePeer, start_node

from p2p_transport import crypto
from p2p_transport.noise import HandshakeResult, dht_handshake
from p2p_transport.secret_stream import SecretStream, open_secret_stream
from p2p_transport.udx import UdxSocket, UdxStream

pytestmark = pytest.mark.interop


def handshake_pair() -> tuple[HandshakeResult, HandshakeResult]:
    server = crypto.key_pair()
    client = dht_handshake(crypto.key_pair(), server.public_key)
    responder = dht_handshake(server)
    responder.recv(client.send(b""))
    client.recv(responder.send(b""))
    assert client.result is not None and responder.result is not None
    return client.result, responder.result


def as_json(h: HandshakeResult) -> dict[str, str]:
    return {"tx": h.tx.hex(), "rx": h.rx.hex(), "hash": h.hash.hex(),
            "publicKey": h.public_key.hex(), "remotePublicKey": h.remote_public_key.hex()}


@asynccontextmanager
async def node_udx() -> AsyncIterator[tuple[NodePeer, UdxSocket, int]]:
    node = await start_node("secret-peer.mjs")
    try:
        port = (await node.expect("ready"))["port"]
        async with UdxSocket.bind() as sock:
            yield node, sock, port
    finally:
        await node.close()


async def raw_pair(node: NodePeer, sock: UdxSocket, port: int, **stream_cmd: object
                   ) -> tuple[UdxStream, int]:
    raw = sock.create_stream()
    node_id = int.from_bytes(os.urandom(4), "little")
    await node.send(cmd="stream", id=node_id, remoteId=raw.id, port=sock.address[1],
                    **stream_cmd)
    await node.expect("opened")
    raw.connect(node_id, ("127.0.0.1", port))
    return raw, node_id


@pytest.mark.parametrize("py_initiator", [True, False], ids=["py-initiator", "py-responder"])
def test_messages_keepalives_and_datagrams(py_initiator: bool) -> None:
    async def main() -> None:
        hi, hr = handshake_pair()
        mine, theirs = (hi, hr) if py_initiator else (hr, hi)
        async with node_udx() as (node, sock, port):
            raw, node_id = await raw_pair(node, sock, port, isInitiator=not py_initiator,
                                          keepAlive=100, handshake=as_json(theirs))
            with trio.fail_after(60):
                async with open_secret_stream(raw, py_initiator, mine, keepalive=0.1) as s:
                    await node.expect("connect")
                    small = [os.urandom(1 + i % 200) for i in range(1000)]
                    big = os.urandom(1024 * 1024)

                    async def writer() -> None:
                        for m in small:
                            await s.send_message(m)
                        await s.send_message(big)

                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(writer)
                        for m in small:
                            assert await s.receive_message() == m
                        assert await s.receive_message() == big
                    # one message originated by Node, 1 MiB
                    await node.send(cmd="write", id=node_id, size=1024 * 1024)
                    wrote = await node.expect("wrote")
                    got = await s.receive_message()
                    assert hashlib.sha256(got).hexdigest() == wrote["sha256"]
                    await s.send_message(got)  # Node echoes it back
                    assert await s.receive_message() == got
                    # both sides idle for a while: only keepalives travel, none surface
                    await trio.sleep(0.5)
                    await s.send_message(b"after idle")
                    assert await s.receive_message() == b"after idle"
                    # unordered datagrams both ways
                    s.send(b"datagram from python")
                    dg = await node.expect("datagram")
                    assert bytes.fromhex(dg["data"]) == b"datagram from python"
                    assert await s.receive_datagram() == b"datagram from python"
                    await node.send(cmd="send", id=node_id, data=b"from node".hex())
                    assert await s.receive_datagram() == b"from node"
                    await s.send_eof()
                    end = await node.expect("end")
                    # Node filtered our keepalives (keepAlive > 0): no empty message counted
                    assert end["empty"] == 0
                    assert end["messages"] == len(small) + 3
                    with pytest.raises(trio.EndOfChannel):
                        await s.receive_message()
                assert (await node.expect("close"))["error"] is None
    trio.run(main)


@pytest.mark.parametrize("py_initiator", [True, False], ids=["py-initiator", "py-responder"])
def test_in_band_xx_handshake(py_initiator: bool) -> None:
    async def main() -> None:
        node_seed = os.urandom(32)
        mine = crypto.key_pair()
        async with node_udx() as (node, sock, port):
            raw, _ = await raw_pair(node, sock, port, isInitiator=not py_initiator,
                                    seed=node_seed.hex(), handshake=None)
            with trio.fail_after(20):
                s = SecretStream(raw, py_initiator, static_key_pair=mine, keepalive=None)
                await s.start()
                connect = await node.expect("connect")
                assert connect["remotePublicKey"] == mine.public_key.hex()
                assert s.remote_public_key == crypto.key_pair(node_seed).public_key
                await s.send_message(b"hello over XX")
                assert await s.receive_message() == b"hello over XX"
                await s.aclose()
    trio.run(main)


def test_node_destroy_breaks_python_stream() -> None:
    async def main() -> None:
        hi, hr = handshake_pair()
        async with node_udx() as (node, sock, port):
            raw, node_id = await raw_pair(node, sock, port, isInitiator=False, keepAlive=0,
                                          handshake=as_json(hr))
            with trio.fail_after(20):
                s = SecretStream(raw, True, hi, keepalive=None)
                await s.start()
                await s.send_message(b"x")
                assert await s.receive_message() == b"x"
                await node.send(cmd="destroy", id=node_id)
                with pytest.raises(trio.BrokenResourceError):
                    await s.receive_message()
    trio.run(main)
