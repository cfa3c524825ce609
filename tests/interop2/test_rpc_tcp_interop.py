"""protomux + protomux-rpc interop with the Node packages, both directions, over framed TCP on
127.0.0.1 (the same messages secret-stream carries, without encryption)."""

from __future__ import annotations

import os

import pytest
import trio
from interop2_helpers import spawn_node

from p2p_transport.protomux import Mux, Uint24FramedStream
from p2p_transport.rpc import RpcChannel, RpcError

pytestmark = pytest.mark.interop

KEY = bytes(range(32))
HASH = bytes(range(64))


@pytest.mark.parametrize("cap", [None, os.urandom(32)], ids=["plain", "capability"])
def test_python_client_node_server(cap: bytes | None) -> None:
    async def main() -> None:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                extra = ["--cap", cap.hex()] if cap else []
                node = await spawn_node(nursery, "rpc_tcp.mjs", "server", "--key", KEY.hex(),
                                        "--hash", HASH.hex(), *extra)
                port = (await node.expect_json("listening"))["port"]
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                mux = Mux(Uint24FramedStream(stream))
                # the channel exists before any frame is read, so the peer's open pairs
                rpc = RpcChannel(mux, id_=KEY, capability_key=cap, is_initiator=True,
                                 handshake_hash=HASH if cap else None)
                events: list[bytes | None] = []
                got_event = trio.Event()

                async def hello(v: bytes | None) -> bytes | None:
                    events.append(v)
                    got_event.set()
                    return None

                rpc.respond("hello", hello)
                rpc.open()
                await nursery.start(mux.run)
                await rpc.opened.wait()
                assert await rpc.request("echo", b"hi from python") == b"hi from python"
                assert await rpc.request("echo", b"") is None
                assert await rpc.request("echo", None) is None
                big = os.urandom(60000)
                assert await rpc.request("echo", big) == big
                with pytest.raises(RpcError) as info:
                    await rpc.request("fail", b"x")
                e = info.value
                assert (e.code, e.message, e.cause_message, e.cause_code) == (
                    "REQUEST_ERROR", "Request failed", "boom", "E_BOOM")
                with pytest.raises(RpcError) as info:
                    await rpc.request("missing", b"x")
                assert info.value.code == "UNKNOWN_METHOD"
                await rpc.event("note", b"a")
                await rpc.event("note", b"b")
                assert await rpc.request("notes") == b"a,b"
                await rpc.request("send-event", b"\x01\x02")
                await got_event.wait()
                assert events == [b"\x01\x02"]

                done: list[int] = []

                async def call(i: int) -> None:
                    assert await rpc.request("slow", bytes([i])) == bytes([i])
                    done.append(i)

                async with trio.open_nursery() as calls:
                    for i in (12, 2, 7):
                        calls.start_soon(call, i)
                assert done == [2, 7, 12]
                await rpc.end()
                await node.close_stdin()
                await node.proc.wait()
                nursery.cancel_scope.cancel()

    trio.run(main)


@pytest.mark.parametrize("cap", [None, os.urandom(32)], ids=["plain", "capability"])
def test_node_client_python_server(cap: bytes | None) -> None:
    async def main() -> None:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                notes: list[bytes] = []

                async def serve(stream: trio.SocketStream) -> None:
                    mux = Mux(Uint24FramedStream(stream))
                    async with trio.open_nursery() as inner:
                        rpc = RpcChannel(mux, id_=KEY, capability_key=cap, is_initiator=False,
                                         handshake_hash=HASH if cap else None)

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
                            await rpc.event("hello", v)
                            return None

                        for name, fn in (("echo", echo), ("fail", fail), ("slow", slow),
                                         ("note", note)):
                            rpc.respond(name, fn)
                        rpc.open()
                        await inner.start(mux.run)
                        await mux.closed.wait()

                listeners = await nursery.start(trio.serve_tcp, serve, 0)
                port = listeners[0].socket.getsockname()[1]
                extra = ["--cap", cap.hex()] if cap else []
                node = await spawn_node(nursery, "rpc_tcp.mjs", "client", str(port),
                                        "--key", KEY.hex(), "--hash", HASH.hex(), *extra)
                await node.expect_json("open")
                await node.send_json({"op": "request", "method": "echo", "hex": "6869"})
                assert (await node.expect_json("result"))["hex"] == "6869"
                await node.send_json({"op": "request", "method": "echo", "hex": ""})
                assert (await node.expect_json("result"))["hex"] is None
                await node.send_json({"op": "request", "method": "fail", "hex": "00"})
                err = (await node.expect_json("result"))["error"]
                assert err["code"] == "REQUEST_ERROR"
                assert err["cause"]["message"] == "python says no"
                await node.send_json({"op": "request", "method": "nope", "hex": "00"})
                err = (await node.expect_json("result"))["error"]
                assert err["code"] == "UNKNOWN_METHOD"
                assert err["message"] == "UNKNOWN_METHOD: Unknown method 'nope'"
                await node.send_json({"op": "event", "method": "note", "hex": "abcd"})
                got = await node.expect_json("got-event")
                assert got["hex"] == "abcd" and notes == [b"\xab\xcd"]
                await node.send_json({"op": "concurrent", "calls": [
                    ["slow", "1e"], ["slow", "02"], ["slow", "0a"]]})
                tags = [(await node.expect_json("result"))["tag"] for _ in range(3)]
                assert tags == [1, 2, 0]
                await node.send_json({"op": "end"})
                await node.expect_json("ended")
                await node.close_stdin()
                await node.proc.wait()
                nursery.cancel_scope.cancel()

    trio.run(main)
