"""@hyperswarm/rpc interop over real HyperDHT connections on a Node testnet, both directions:
request/response, thrown error, unknown method, events both ways, concurrent requests answered
out of order, with and without a capability."""

from __future__ import annotations

import os

import pytest
import trio
from interop2_helpers import spawn_node

from p2p_transport.cenc import SocketAddress
from p2p_transport.hyperdht import HyperDht
from p2p_transport.rpc import HyperswarmRpc, RpcError

pytestmark = pytest.mark.interop


def _boot(ready: dict) -> list[SocketAddress]:
    return [SocketAddress(b["host"], b["port"]) for b in ready["bootstrap"]]


CAPS = [None, os.urandom(32)]


@pytest.mark.parametrize("cap", CAPS, ids=["plain", "capability"])
def test_python_client_node_server(cap: bytes | None) -> None:
    async def main() -> None:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                extra = ["--cap", cap.hex()] if cap else []
                node = await spawn_node(nursery, "hrpc_peer.mjs", "serve", "--testnet", "3",
                                        *extra)
                ready = await node.expect_json("ready")
                key = bytes.fromhex(ready["publicKey"])
                async with HyperDht.open(bootstrap=_boot(ready)) as dht:
                    rpc = HyperswarmRpc(dht, capability_key=cap)
                    got_event = trio.Event()
                    events: list[bytes | None] = []

                    async def hello(v: bytes | None) -> bytes | None:
                        events.append(v)
                        got_event.set()
                        return None

                    client = await rpc.connect(key, handlers={"hello": hello})
                    assert await client.request("echo", b"hi from python") == b"hi from python"
                    assert await rpc.request(key, "echo", b"") is None
                    big = os.urandom(60000)
                    assert await rpc.request(key, "echo", big) == big
                    with pytest.raises(RpcError) as info:
                        await rpc.request(key, "fail", b"x")
                    assert (info.value.code, info.value.cause_message,
                            info.value.cause_code) == ("REQUEST_ERROR", "boom", "E_BOOM")
                    with pytest.raises(RpcError) as info:
                        await rpc.request(key, "nope")
                    assert info.value.code == "UNKNOWN_METHOD"
                    await rpc.event(key, "note", b"a")
                    await rpc.event(key, "note", b"b")
                    assert await rpc.request(key, "notes") == b"a,b"
                    await rpc.request(key, "send-event", b"\x07")
                    await got_event.wait()
                    assert events == [b"\x07"]
                    done: list[int] = []

                    async def call(i: int) -> None:
                        assert await rpc.request(key, "slow", bytes([i])) == bytes([i])
                        done.append(i)

                    async with trio.open_nursery() as calls:
                        for i in (15, 3, 8):
                            calls.start_soon(call, i)
                    assert done == [3, 8, 15]
                    await rpc.aclose()
                await node.close_stdin()
                await node.proc.wait()
                nursery.cancel_scope.cancel()

    trio.run(main)


@pytest.mark.parametrize("cap", CAPS, ids=["plain", "capability"])
def test_node_client_python_server(cap: bytes | None) -> None:
    async def main() -> None:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                extra = ["--cap", cap.hex()] if cap else []
                node = await spawn_node(nursery, "hrpc_peer.mjs", "call", "--testnet", "3",
                                        *extra)
                ready = await node.expect_json("ready")
                async with HyperDht.open(bootstrap=_boot(ready)) as dht:
                    rpc = HyperswarmRpc(dht, capability_key=cap)
                    notes: list[bytes] = []

                    async def echo(v: bytes | None) -> bytes | None:
                        return v

                    async def fail(v: bytes | None) -> bytes | None:
                        raise ValueError("python says no")

                    async def slow(v: bytes | None) -> bytes | None:
                        assert v is not None
                        await trio.sleep(v[0] / 100)
                        return v

                    async def note(v: bytes | None) -> bytes | None:
                        notes.append(v or b"")
                        return None

                    server = await rpc.serve({"echo": echo, "fail": fail, "slow": slow,
                                              "note": note})
                    key = server.public_key.hex()
                    await node.send_json({"op": "request", "key": key, "method": "echo",
                                          "hex": "6869"})
                    assert (await node.expect_json("result"))["hex"] == "6869"
                    await node.send_json({"op": "request", "key": key, "method": "fail",
                                          "hex": "00"})
                    err = (await node.expect_json("result"))["error"]
                    assert err["code"] == "REQUEST_ERROR"
                    assert err["cause"]["message"] == "python says no"
                    await node.send_json({"op": "request", "key": key, "method": "nope",
                                          "hex": "00"})
                    err = (await node.expect_json("result"))["error"]
                    assert err["code"] == "UNKNOWN_METHOD"
                    await node.send_json({"op": "event", "key": key, "method": "note",
                                          "hex": "abcd"})
                    await node.expect_json("sent")
                    await node.send_json({"op": "request", "key": key, "method": "echo",
                                          "hex": "00"})
                    await node.expect_json("result")
                    assert notes == [b"\xab\xcd"]
                    await node.send_json({"op": "concurrent", "key": key, "calls": [
                        ["slow", "1e"], ["slow", "02"], ["slow", "0a"]]})
                    tags = [(await node.expect_json("result"))["tag"] for _ in range(3)]
                    assert tags == [1, 2, 0]
                await node.close_stdin()
                await node.proc.wait()
                nursery.cancel_scope.cancel()

    trio.run(main)
