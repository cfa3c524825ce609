"""The gateway's SLI metrics: outcomes by status code, latency and first-chunk time by model."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from tests.services.harness import MODEL, fleet, metrics_reader, points
from tests.services.test_request_path import collect, request
from tether import blocking
from tether.rpc import RpcError


def gateway_counts(reader: InMemoryMetricReader) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in points(reader, "tether.requests"):
        if p.attributes["service"] == "gateway" and p.attributes["model"] == MODEL:
            counts[p.attributes["code"]] = p.value
    for name in ("tether.request.duration", "tether.request.first_chunk"):
        for p in points(reader, name):
            if p.attributes["service"] == "gateway" and p.attributes["model"] == MODEL:
                counts[name] = p.count
    return counts


def test_gateway_counts_outcomes_and_times_requests(tmp_path: Path) -> None:
    reader = metrics_reader()
    before = gateway_counts(reader)

    async def main() -> None:
        async with fleet(tmp_path, rate=0.001, burst=2) as f:
            await f.add_worker("w1")
            await f.discovery.wait_for(lambda s: len(s) == 1)
            gw = await f.gateway()
            token = f.token("acme")
            for _ in range(2):  # the bucket holds two
                await collect(gw, request(n=3), token)
            for metadata in (token, {"authorization": "Bearer wrong"}):
                with pytest.raises(RpcError):
                    await collect(gw, request(n=3), metadata)

    with blocking.inline():
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    after = gateway_counts(reader)
    delta = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    assert delta == {
        "OK": 2, "RESOURCE_EXHAUSTED": 1, "UNAUTHENTICATED": 1,
        "tether.request.duration": 2, "tether.request.first_chunk": 2,
    }
    (latency,) = [p for p in points(reader, "tether.request.duration")
                  if p.attributes["service"] == "gateway" and p.attributes["model"] == MODEL]
    assert latency.sum > 0
