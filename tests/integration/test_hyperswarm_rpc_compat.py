"""A stock Node ``@hyperswarm/rpc`` client calls a Tether service's unary methods:
the method name is the full gRPC-style path, the value the protobuf request, the reply
the protobuf response; a failure arrives as REQUEST_ERROR with the status name as code."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import AsyncGenerator
from contextlib import AsyncExitStack, aclosing
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from app.localnet import python_testnet
from tether.errors import NotFound
from tether.keys import KeyPair
from tether.net.swarm import SwarmNetwork
from tether.rpc import ServerContext, collect_handlers
from tether.v1 import registry_pb2, services_pb2, services_rpc

ROOT = Path(__file__).resolve().parents[2]
NODE_CLIENT = ROOT / "tests" / "interop2" / "node" / "hrpc_peer.mjs"

pytestmark = pytest.mark.interop


class Registry(services_rpc.RegistryServicer):
    async def Resolve(
        self, request: services_pb2.ResolveRequest, context: ServerContext
    ) -> registry_pb2.ModelRecord:
        if request.model_id != "kjv-textgen":
            raise NotFound(f"{request.model_id} is not published")
        record = registry_pb2.ModelRecord(description="found")
        record.model.model_id = request.model_id
        record.model.version = "1.0"
        return record


def test_stock_hyperswarm_rpc_client_calls_unary_methods() -> None:
    node = shutil.which("node")
    assert node is not None, "node is needed (tools/setup installs the Node packages)"

    async def main() -> None:
        with trio.fail_after(60):
            async with python_testnet() as bootstrap:
                server = SwarmNetwork(
                    KeyPair.generate(), collect_handlers(Registry()), bootstrap=bootstrap
                )
                async with (
                    server.running(),
                    trio.open_nursery() as nursery,
                    AsyncExitStack() as stack,
                ):
                    await server.listen()
                    proc: trio.Process = await nursery.start(
                        partial(
                            trio.run_process,
                            [node, str(NODE_CLIENT), "call", "--bootstrap",
                             f"{bootstrap[0].host}:{bootstrap[0].port}"],
                            stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE,
                            cwd=str(ROOT),
                            check=False,
                        )
                    )
                    assert proc.stdin is not None and proc.stdout is not None
                    lines = await stack.enter_async_context(aclosing(_lines(proc.stdout)))
                    assert (await lines.__anext__())["event"] == "ready"
                    key = server.public_key.hex()
                    results = {}
                    for tag, model in ((1, "kjv-textgen"), (2, "nope")):
                        req = services_pb2.ResolveRequest(model_id=model).SerializeToString()
                        await proc.stdin.send_all(json.dumps({
                            "op": "request", "key": key, "tag": tag,
                            "method": "/tether.v1.Registry/Resolve", "hex": req.hex(),
                        }).encode() + b"\n")
                        async for msg in lines:
                            if msg["event"] == "result":
                                results[msg["tag"]] = msg
                                break
                    await proc.stdin.aclose()
                    await proc.wait()
        found = registry_pb2.ModelRecord.FromString(bytes.fromhex(results[1]["hex"]))
        assert (found.model.model_id, found.description) == ("kjv-textgen", "found")
        error = results[2]["error"]
        assert error["code"] == "REQUEST_ERROR"
        assert error["cause"]["code"] == "NOT_FOUND"
        assert "nope is not published" in error["cause"]["message"]

    trio.run(main)


async def _lines(stream: trio.abc.ReceiveStream) -> AsyncGenerator[dict[str, Any]]:
    buf = b""
    while True:
        while b"\n" not in buf:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            buf += chunk
        line, buf = buf.split(b"\n", 1)
        yield json.loads(line)
