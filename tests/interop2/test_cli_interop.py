"""``python -m p2p_transport``: a stock Node @hyperswarm/rpc client calls ``rpc-serve``;
``rpc-call`` calls a Node server (value, thrown error, unknown method); ``swarm`` meets a Node
swarm on a named topic; every command exits cleanly on SIGTERM."""

from __future__ import annotations

import signal
import sys

import pytest
import trio
from interop2_helpers import ROOT, spawn_cli, spawn_node

from p2p_transport.cli import topic_from_text

pytestmark = pytest.mark.interop


def _boot_args(ready: dict) -> list[str]:
    out: list[str] = []
    for b in ready["bootstrap"]:
        out += ["--bootstrap", f"{b['host']}:{b['port']}"]
    return out


async def _run_cli(*args: str) -> tuple[int, str]:
    proc = await trio.run_process([sys.executable, "-m", "p2p_transport", *args],
                                  capture_stdout=True, capture_stderr=True, check=False,
                                  cwd=str(ROOT))
    return proc.returncode, proc.stdout.decode()


def test_node_rpc_client_calls_cli_server() -> None:
    async def main() -> None:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                node = await spawn_node(nursery, "hrpc_peer.mjs", "call", "--testnet", "3")
                ready = await node.expect_json("ready")
                cli = await spawn_cli(nursery, "rpc-serve", *_boot_args(ready))
                key = await cli.readline()
                assert len(key) == 64 and bytes.fromhex(key)
                await node.send_json({"op": "request", "key": key, "method": "echo",
                                      "hex": "68656c6c6f"})
                assert (await node.expect_json("result"))["hex"] == "68656c6c6f"
                await node.send_json({"op": "request", "key": key, "method": "nope",
                                      "hex": "00"})
                err = (await node.expect_json("result"))["error"]
                assert err["code"] == "UNKNOWN_METHOD"
                cli.proc.send_signal(signal.SIGTERM)
                assert await cli.proc.wait() == 0
                await node.close_stdin()
                await node.proc.wait()

    trio.run(main)


def test_cli_rpc_call_against_node_server() -> None:
    async def main() -> None:
        with trio.fail_after(90):
            async with trio.open_nursery() as nursery:
                node = await spawn_node(nursery, "hrpc_peer.mjs", "serve", "--testnet", "3")
                ready = await node.expect_json("ready")
                boot = _boot_args(ready)
                key = ready["publicKey"]
                rc, out = await _run_cli("rpc-call", "--key", key, "--method", "echo",
                                         "--data", "cafe", *boot)
                assert (rc, out) == (0, "cafe\n")
                rc, out = await _run_cli("rpc-call", "--key", key, "--method", "fail",
                                         "--data", "00", *boot)
                assert rc != 0 and "REQUEST_ERROR" in out and "boom" in out
                rc, out = await _run_cli("rpc-call", "--key", key, "--method", "nope", *boot)
                assert rc != 0 and "UNKNOWN_METHOD" in out
                await node.close_stdin()
                await node.proc.wait()

    trio.run(main)


def test_cli_swarm_meets_node_swarm() -> None:
    async def main() -> None:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                node = await spawn_node(nursery, "swarm_peer.mjs", "--testnet", "3")
                ready = await node.expect_json("ready")
                name = "tether/presence/us-east"
                await node.send_json({"op": "join", "topic": topic_from_text(name).hex(),
                                      "server": True, "client": False})
                await node.expect_json("joined")
                cli = await spawn_cli(nursery, "swarm", "--topic", name, "--client",
                                      "--send", "hi from cli", *_boot_args(ready))
                assert await cli.readline() == f"connected {ready['publicKey']}"
                assert await cli.readline() == f"data {ready['publicKey']} hello from node"
                assert (await node.expect_json("data"))["text"] == "hi from cli"
                cli.proc.send_signal(signal.SIGINT)
                assert await cli.proc.wait() == 0
                await node.close_stdin()
                await node.proc.wait()

    trio.run(main)


def test_topic_from_text() -> None:
    assert topic_from_text("ab" * 32) == bytes.fromhex("ab" * 32)
    assert len(topic_from_text("tether/control/eu-west")) == 32
    assert topic_from_text("zz" * 32) != bytes(32)  # not hex: hashed as a name
