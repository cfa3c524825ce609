"""Services in processes of their own, for tests that kill them for real (SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import trio

from p2p_transport.cenc import SocketAddress

ROOT = Path(__file__).resolve().parents[2]


@asynccontextmanager
async def service_process(
    module: str, bootstrap: list[SocketAddress], *args: str
) -> AsyncIterator[trio.Process]:
    """``python -m module --bootstrap ... args`` until it prints ``ready``; killed (SIGKILL)
    at the end if still running."""
    argv = [sys.executable, "-m", module, *args]
    for b in bootstrap:
        argv += ["--bootstrap", f"{b.host}:{b.port}"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    async with trio.open_nursery() as nursery:
        proc: trio.Process = await nursery.start(
            partial(trio.run_process, argv, stdout=subprocess.PIPE, check=False, env=env,
                    cwd=str(ROOT))
        )
        assert proc.stdout is not None
        with trio.fail_after(30):
            line = await proc.stdout.receive_some(64)
        assert line.startswith(b"ready"), line
        try:
            yield proc
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGKILL)
