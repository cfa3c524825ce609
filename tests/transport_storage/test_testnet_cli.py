"""``python -m p2p_transport testnet`` and ``bootstrap --persistent`` as separate processes:
the JSON bootstrap line, Python swarms meeting through those nodes, clean exit on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import trio

from p2p_transport.cenc import SocketAddress
from p2p_transport.cli import parse_address
from p2p_transport.hyperswarm import Hyperswarm, SwarmConnection

ROOT = Path(__file__).resolve().parents[2]


async def _start_cli(nursery: trio.Nursery, *args: str) -> tuple[trio.Process, str]:
    """Start the CLI and return it with its first stdout line."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc: trio.Process = await nursery.start(partial(
        trio.run_process, [sys.executable, "-m", "p2p_transport", *args],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=str(ROOT), env=env,
        check=False))
    assert proc.stdout is not None
    buf = b""
    while b"\n" not in buf:
        chunk = await proc.stdout.receive_some(4096)
        assert chunk, "the CLI exited before printing its first line"
        buf += chunk
    return proc, buf.split(b"\n", 1)[0].decode()


async def _meet(bootstrap: list[SocketAddress]) -> None:
    """Two Python swarms find each other on a fresh topic and exchange one message each way."""
    got: list[bytes] = []
    both = trio.Event()

    async def on_conn(conn: SwarmConnection) -> None:
        await conn.send_message(b"hi")
        got.append(await conn.receive_message())
        if len(got) == 2:
            both.set()

    topic = os.urandom(32)
    async with Hyperswarm.open(on_conn, bootstrap=bootstrap) as a, \
            Hyperswarm.open(on_conn, bootstrap=bootstrap) as b:
        await a.join(topic, server=True, client=False).flushed()
        b.join(topic, server=False, client=True)
        await both.wait()
    assert got == [b"hi", b"hi"]


async def _terminate(proc: trio.Process) -> int:
    proc.send_signal(signal.SIGTERM)
    with trio.fail_after(15):
        return await proc.wait()


def test_testnet_command_prints_the_bootstrap_list_and_exits_on_sigterm() -> None:
    async def main() -> None:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                proc, line = await _start_cli(nursery, "testnet", "--nodes", "3")
                ready = json.loads(line)
                assert list(ready) == ["bootstrap"]
                nodes = [parse_address(a) for a in ready["bootstrap"]]
                assert len(nodes) == 3
                assert all(n.host == "127.0.0.1" for n in nodes)
                await _meet(nodes[:1])
                assert await _terminate(proc) == 0

    trio.run(main)


def test_persistent_bootstrap_nodes_make_a_network() -> None:
    async def main() -> None:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                boot, line = await _start_cli(nursery, "bootstrap", "--port", "0")
                where = line.split()[-1]
                storage = [await _start_cli(nursery, "bootstrap", "--persistent", "--port", "0",
                                            "--bootstrap", where) for _ in range(2)]
                assert all(first.startswith("listening ") for _, first in storage)
                await _meet([parse_address(where)])
                for proc in [boot, *(p for p, _ in storage)]:
                    assert await _terminate(proc) == 0

    trio.run(main)


def test_storage_nodes_refuse_the_wildcard_host() -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    for args in (["testnet", "--host", "0.0.0.0"],
                 ["bootstrap", "--persistent", "--host", "0.0.0.0", "--port", "0"],
                 ["testnet", "--nodes", "1"]):
        done = subprocess.run([sys.executable, "-m", "p2p_transport", *args], cwd=str(ROOT),
                              env=env, capture_output=True, timeout=30, check=False)
        assert done.returncode == 2, args
        assert done.stdout == b""
        assert b"Traceback" not in done.stderr
