"""Helpers shared by the model-plane tests (fixtures are in conftest.py)."""

from __future__ import annotations

import socket
import uuid

from tether.artifacts import S3Store, s3_client


class ManualClock:
    """Milliseconds that move only when a test says so."""

    def __init__(self, start_ms: int = 1_800_000_000_000) -> None:
        self.now_ms = start_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, ms: int) -> None:
        self.now_ms += ms


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def s3_buckets(endpoint: str, n: int = 3, prefix: str = "tether") -> list[S3Store]:
    client = s3_client(endpoint, "testing", "testing", timeout_s=5, retries=0)
    tag = uuid.uuid4().hex[:8]
    return [S3Store(client, f"{prefix}-{tag}-r{i}") for i in range(n)]
