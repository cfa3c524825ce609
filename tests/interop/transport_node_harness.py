"""Spawns the Node fixture scripts under ``tests/interop/node`` and talks JSON lines to them.

Scripts run with the repository root as working directory so they resolve the pinned packages
from the root ``node_modules``. Every read is bounded by the caller's ``trio.fail_after``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import trio

from tests import node_env

REPO_ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = Path(__file__).resolve().parent / "node"


def node_script(name: str) -> Path:
    return NODE_DIR / name


def require_node() -> None:
    node_env.require_node("udx-native")


class NodePeer:
    """One running Node fixture script: send JSON commands, read JSON events."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self._buf = bytearray()

    async def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        await self.proc.stdin.send_all((json.dumps(cmd) + "\n").encode())

    async def recv(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while b"\n" not in self._buf:
            chunk = await self.proc.stdout.receive_some(65536)
            if not chunk:
                raise EOFError("node fixture exited")
            self._buf += chunk
        line, _, rest = bytes(self._buf).partition(b"\n")
        self._buf = bytearray(rest)
        msg: dict[str, Any] = json.loads(line)
        return msg

    async def expect(self, event: str) -> dict[str, Any]:
        """Read events until one named ``event``; fail on an ``error`` event."""
        while True:
            msg = await self.recv()
            if msg.get("event") == event:
                return msg
            if msg.get("event") == "error":
                raise AssertionError(f"node fixture error: {msg}")

    async def close(self) -> None:
        if self.proc.stdin is not None:
            await self.proc.stdin.aclose()
        with trio.move_on_after(5):
            await self.proc.wait()
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def start_node(script: str, *args: str) -> NodePeer:
    require_node()
    proc = await trio.lowlevel.open_process(
        ["node", str(node_script(script)), *args],
        cwd=str(REPO_ROOT),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    return NodePeer(proc)
