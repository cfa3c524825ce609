"""Python UDX against Node's udx-native on 127.0.0.1, with loss injected on the Python side."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from transport_node_harness import NodePeer, start_node

from p2p_transport.udx import StreamReset, UdpTransport, UdxSocket, UdxStream

pytestmark = pytest.mark.interop

Address = tuple[str, int]


class LossyTransport:
    """Test double around a real UDP transport: drops every Nth datagram each way."""

    def __init__(self, inner: UdpTransport, drop_send_every: int = 0,
                 drop_recv_every: int = 0) -> None:
        self.inner = inner
        self.drop_send_every = drop_send_every
        self.drop_recv_every = drop_recv_every
        self._sent = 0
        self._recv = 0
        self.dropped = 0

    @property
    def local_address(self) -> Address:
        return self.inner.local_address

    def send(self, data: bytes, addr: Address) -> None:
        self._sent += 1
        if self.drop_send_every and self._sent % self.drop_send_every == 0:
            self.dropped += 1
            return
        self.inner.send(data, addr)

    async def receive_batch(self) -> list[tuple[bytes, Address]]:
        out = []
        for item in await self.inner.receive_batch():
            self._recv += 1
            if self.drop_recv_every and self._recv % self.drop_recv_every == 0:
                self.dropped += 1
                continue
            out.append(item)
        return out

    def close(self) -> None:
        self.inner.close()


@asynccontextmanager
async def node_and_socket(drop_send: int = 0, drop_recv: int = 0
                          ) -> AsyncIterator[tuple[NodePeer, UdxSocket, int, LossyTransport]]:
    node = await start_node("udx-peer.mjs")
    try:
        port = (await node.expect("ready"))["port"]
        transport = LossyTransport(UdpTransport.bind("127.0.0.1", 0), drop_send, drop_recv)
        async with UdxSocket.over(transport) as sock:
            yield node, sock, port, transport
    finally:
        await node.close()


async def open_pair(node: NodePeer, sock: UdxSocket, port: int, mode: str) -> tuple[UdxStream, int]:
    stream = sock.create_stream()
    node_id = int.from_bytes(os.urandom(4), "little")
    await node.send(cmd="stream", id=node_id, remoteId=stream.id, port=sock.address[1], mode=mode)
    with trio.fail_after(10):
        await node.expect("opened")
    stream.connect(node_id, ("127.0.0.1", port))
    return stream, node_id


@pytest.mark.parametrize("size", [1, 1152, 5 * 1024 * 1024], ids=["1B", "1152B", "5MB"])
def test_echo_with_loss(size: int) -> None:
    payload = os.urandom(size)

    async def main() -> None:
        async with node_and_socket(drop_send=13, drop_recv=17) as (node, sock, port, transport):
            stream, _node_id = await open_pair(node, sock, port, "echo")
            got = bytearray()
            with trio.fail_after(90):
                async def reader() -> None:
                    while chunk := await stream.receive_some():
                        got.extend(chunk)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(reader)
                    await stream.send_all(payload)
                    await stream.send_eof()
                end = await node.expect("end")
                assert end["bytes"] == size
                assert end["sha256"] == hashlib.sha256(payload).hexdigest()
                assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
                closed = await node.expect("close")
                assert closed["error"] is None
                await stream.aclose()
            assert stream.core.error is None
            if size > 1152:
                stats = stream.core.stats
                assert transport.dropped > 0 and stats.retransmissions > 0
                assert stats.sack_packets_received > 0  # Node reported the holes it saw
    trio.run(main)


def test_end_both_ways_and_node_ends_first() -> None:
    async def main() -> None:
        async with node_and_socket() as (node, sock, port, _):
            stream, node_id = await open_pair(node, sock, port, "sink")
            with trio.fail_after(20):
                await node.send(cmd="write", id=node_id, data=b"from-node".hex())
                await node.send(cmd="end", id=node_id)
                buf = b""
                while chunk := await stream.receive_some():
                    buf += chunk
                assert buf == b"from-node"
                await stream.send_all(b"from-python")
                await stream.send_eof()
                end = await node.expect("end")
                assert end["bytes"] == len(b"from-python")
                assert (await node.expect("close"))["error"] is None
                await stream.aclose()
                assert stream.core.closed and stream.core.error is None
    trio.run(main)


def test_python_destroy_resets_node() -> None:
    async def main() -> None:
        async with node_and_socket() as (node, sock, port, _):
            stream, node_id = await open_pair(node, sock, port, "echo")
            with trio.fail_after(20):
                await stream.send_all(b"abc")
                assert await stream.receive_some() == b"abc"
                stream.destroy()
                closed = await node.expect("close")
                assert closed["id"] == node_id and closed["error"] == "ECONNRESET"
    trio.run(main)


def test_node_destroy_resets_python() -> None:
    async def main() -> None:
        async with node_and_socket() as (node, sock, port, _):
            stream, node_id = await open_pair(node, sock, port, "echo")
            with trio.fail_after(20):
                await stream.send_all(b"abc")
                assert await stream.receive_some() == b"abc"
                await node.send(cmd="destroy", id=node_id)
                with pytest.raises(trio.BrokenResourceError) as info:
                    await stream.receive_some()
                assert isinstance(info.value.__cause__, StreamReset)
    trio.run(main)


def test_messages_both_ways() -> None:
    async def main() -> None:
        async with node_and_socket() as (node, sock, port, _):
            stream, node_id = await open_pair(node, sock, port, "echo")
            with trio.fail_after(20):
                stream.send_message(b"hello node")
                msg = await node.expect("message")
                assert bytes.fromhex(msg["data"]) == b"hello node"
                assert await stream.receive_message() == b"hello node"  # echoed by Node
                await node.send(cmd="message", id=node_id, data=(b"\x00" * 1000).hex())
                assert await stream.receive_message() == b"\x00" * 1000
    trio.run(main)


def test_node_data_before_python_connects_and_other_datagrams() -> None:
    async def main() -> None:
        others: list[bytes] = []
        got_other = trio.Event()

        def on_datagram(data: bytes, addr: Address) -> None:
            others.append(data)
            got_other.set()
        node = await start_node("udx-peer.mjs")
        try:
            port = (await node.expect("ready"))["port"]
            async with UdxSocket.bind(on_datagram=on_datagram) as sock:
                stream = sock.create_stream()
                node_id = 0xDEADBEEF
                with trio.fail_after(20):
                    await node.send(cmd="stream", id=node_id, remoteId=stream.id,
                                    port=sock.address[1], mode="sink")
                    await node.send(cmd="write", id=node_id, data=b"early bird".hex())
                    # before connect, a reader callback sees the bytes arrive (no polling)
                    arrived = trio.Event()

                    def on_bytes() -> None:
                        if stream.core.readable_bytes >= 10:
                            arrived.set()
                    stream.set_reader(on_bytes)
                    await arrived.wait()
                    stream.set_reader(None)
                    stream.connect(node_id, ("127.0.0.1", port))
                    assert await stream.receive_some() == b"early bird"
                    # non-UDX traffic shares the socket in both directions
                    await node.send(cmd="datagram", data=b"\x03dht".hex(), port=sock.address[1])
                    sock.send_datagram(b"\x13reply", ("127.0.0.1", port))
                    dg = await node.expect("datagram")
                    assert bytes.fromhex(dg["data"]) == b"\x13reply"
                    await got_other.wait()
                    assert others == [b"\x03dht"]
        finally:
            await node.close()
    trio.run(main)


def test_node_heartbeats_are_answered() -> None:
    async def main() -> None:
        async with node_and_socket() as (node, sock, port, _):
            stream, node_id = await open_pair(node, sock, port, "echo")
            with trio.fail_after(20):
                await node.send(cmd="keepalive", id=node_id, ms=50)
                await stream.send_all(b"x")
                assert await stream.receive_some() == b"x"
                await trio.sleep(1)  # idle: Node probes with HEARTBEATs, Python ACKs them
                assert stream.core.stats.heartbeats_received >= 3
                await stream.send_all(b"still alive")
                assert await stream.receive_some() == b"still alive"
    trio.run(main)
