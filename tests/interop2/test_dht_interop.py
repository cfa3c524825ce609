"""dht-rpc interop: the Python bootstrap node carries a Node testnet."""

from __future__ import annotations

import pytest
import trio
from interop2_helpers import spawn_cli, spawn_node

pytestmark = pytest.mark.interop


def test_node_testnet_forms_through_python_bootstrap() -> None:
    async def main() -> None:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                boot = await spawn_cli(nursery, "bootstrap", "--host", "127.0.0.1",
                                       "--port", "0")
                line = await boot.readline()
                assert line.startswith("listening 127.0.0.1:")
                addr = line.split()[1]
                node = await spawn_node(nursery, "testnet_via_bootstrap.mjs", addr)
                testnet = await node.expect_json("testnet")
                assert len(testnet["nodes"]) == 3
                assert (await node.expect_json("persistent"))["count"] == 3
                assert (await node.expect_json("exchanged"))["text"] == "hello through python"
                assert await node.proc.wait() == 0
                boot.proc.terminate()
                assert await boot.proc.wait() == 0

    trio.run(main)
