"""Spawning helpers for the interop tests: Node fixture scripts and the Python CLI.

Paths are computed from this file; Node runs with its working directory at the repository root
so that it resolves the pinned packages in the root ``node_modules``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import trio

from tests import node_env

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = Path(__file__).resolve().parent / "node"


def require_node() -> str:
    return node_env.require_node("hyperdht")


class LineProcess:
    """A child process spoken to in lines over stdin/stdout (stderr is inherited)."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self._buf = b""
        self.lines: list[str] = []

    async def readline(self) -> str:
        assert self.proc.stdout is not None
        while b"\n" not in self._buf:
            chunk = await self.proc.stdout.receive_some(65536)
            if not chunk:
                raise EOFError(f"process exited; partial output {self._buf!r}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        text = line.decode()
        self.lines.append(text)
        return text

    async def read_json(self) -> Any:
        return json.loads(await self.readline())

    async def expect_json(self, event: str) -> dict[str, Any]:
        while True:
            msg = await self.read_json()
            if msg.get("event") == event:
                return msg

    async def send_json(self, obj: Any) -> None:
        assert self.proc.stdin is not None
        await self.proc.stdin.send_all((json.dumps(obj) + "\n").encode())

    async def close_stdin(self) -> None:
        if self.proc.stdin is not None:
            await self.proc.stdin.aclose()


async def spawn(nursery: trio.Nursery, argv: list[str]) -> LineProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = await nursery.start(partial(trio.run_process, argv, stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, cwd=str(ROOT), env=env,
                                       check=False))
    return LineProcess(proc)


async def spawn_node(nursery: trio.Nursery, script: str, *args: str) -> LineProcess:
    return await spawn(nursery, [require_node(), str(NODE_DIR / script), *args])


async def spawn_cli(nursery: trio.Nursery, *args: str) -> LineProcess:
    return await spawn(nursery, [sys.executable, "-m", "p2p_transport", *args])
