"""A loopback DHT testnet for integration tests (Node's ``createTestnet`` from the pinned
``hyperdht``; the services under test are all Python)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import trio

from p2p_transport.cenc import SocketAddress

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).resolve().parent / "node" / "testnet.mjs"


@asynccontextmanager
async def node_testnet(size: int = 3) -> AsyncIterator[list[SocketAddress]]:
    node = shutil.which("node")
    if node is None or not (ROOT / "node_modules" / "hyperdht").is_dir():
        raise RuntimeError("integration tests need node and `npm ci` (tools/setup does both)")
    async with trio.open_nursery() as nursery:
        proc: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                [node, str(SCRIPT), str(size)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                cwd=str(ROOT),
                check=False,
            )
        )
        assert proc.stdout is not None and proc.stdin is not None
        buf = b""
        with trio.fail_after(30):
            while b"\n" not in buf:
                chunk = await proc.stdout.receive_some(4096)
                if not chunk:
                    raise RuntimeError("testnet process exited before printing its bootstrap")
                buf += chunk
        info = json.loads(buf.split(b"\n", 1)[0])
        try:
            yield [SocketAddress(b["host"], int(b["port"])) for b in info["bootstrap"]]
        finally:
            await proc.stdin.aclose()
            with trio.move_on_after(5):
                await proc.wait()
            proc.kill()


def run_on_hyperswarm(
    scenario: Callable[[Callable[..., AbstractAsyncContextManager[Any]]], Awaitable[None]],
    tmp_path: Path,
    *,
    timeout_s: float = 100,
) -> None:
    """Run a fleet scenario of ``tests/services`` (one that opens its fleet with the
    callable it is given) on real Hyperswarm: a Node testnet of three, every service on
    a ``SwarmNetwork``, wall-clock time."""
    from tests.services.harness import fleet, swarm_networks, wall_ms

    async def main() -> None:
        with trio.fail_after(timeout_s):
            async with node_testnet(3) as bootstrap:
                await scenario(
                    partial(fleet, tmp_path, networks=swarm_networks(bootstrap), clock_ms=wall_ms)
                )

    trio.run(main)
