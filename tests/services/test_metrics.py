"""The gateway's SLI metrics: outcomes by status code, latency and first-chunk time by model."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from tests.services.harness import MODEL, fleet, metrics_reader, points
from tests.services.test_request_path import collect, request
from tether import blocking, telemetry
from tether.rpc import RpcError
from tether.ttlcache import TtlCache


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


def test_model_labels_are_the_catalog_s_models_or_other(tmp_path: Path) -> None:
    """Made-up model names, with a token or without, never become label values."""
    reader = metrics_reader()

    def other_counts() -> dict[str, int]:
        return {p.attributes["code"]: p.value for p in points(reader, "tether.requests")
                if p.attributes["service"] == "gateway" and p.attributes["model"] == "other"}

    before = other_counts()

    async def main() -> None:
        async with fleet(tmp_path) as f:
            await f.add_worker("w1")
            await f.discovery.wait_for(lambda s: len(s) == 1)
            gw = await f.gateway()
            for i, metadata in enumerate((f.token("acme"), {}, {"authorization": "Bearer x"})):
                made_up = request(n=1)
                made_up.model_id = f"made-up-{i}"
                with pytest.raises(RpcError):
                    await collect(gw, made_up, metadata)

    with blocking.inline():
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    after = other_counts()
    delta = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    assert delta == {"NOT_FOUND": 1, "UNAUTHENTICATED": 2}
    labels = {p.attributes.get("model") for name in
              ("tether.requests", "tether.request.duration", "tether.request.first_chunk")
              for p in points(reader, name)}
    assert not any(str(label).startswith("made-up") for label in labels)


def test_model_labels_bound_and_refresh() -> None:
    labels = telemetry.ModelLabels(["b", "a", "c"], max_models=2)
    assert [labels.label(m) for m in ("a", "b", "c", "zz")] == ["a", "b", "other", "other"]
    labels.update(["zz"])
    assert (labels.label("zz"), labels.label("a")) == ("zz", "other")


def test_named_caches_count_hits_misses_and_stale_entries() -> None:
    reader = metrics_reader()

    def counts() -> dict[str, int]:
        return {p.attributes["result"]: p.value for p in points(reader, "tether.cache.lookups")
                if p.attributes["cache"] == "test_cache"}

    before = counts()
    now = [0.0]
    cache: TtlCache[str, int] = TtlCache(ttl_s=5, max_entries=4, clock=lambda: now[0],
                                         name="test_cache")
    cache.get("a")
    cache.put("a", 1)
    cache.get("a")
    cache.get("a")
    now[0] = 5.0
    cache.get("a")  # there, but too old: stale
    unnamed: TtlCache[str, int] = TtlCache(ttl_s=5, max_entries=4, clock=lambda: now[0])
    unnamed.get("a")
    after = counts()
    assert {k: v - before.get(k, 0) for k, v in after.items()} == {
        "miss": 1, "hit": 2, "stale": 1}


def test_a_streamed_http_answer_counts_as_ok_not_cancelled(tmp_path: Path) -> None:
    """The HTTP edge closes the stream once it has the last chunk: a whole answer, OK
    (it was counted CANCELLED, every streamed completion a failure)."""
    from gateway.http import HttpApi
    from tests.services.test_http_edge import exchange, raw_request

    reader = metrics_reader()
    before = gateway_counts(reader)

    async def main() -> None:
        async with fleet(tmp_path) as f:
            await f.add_worker("w1")
            await f.discovery.wait_for(lambda s: len(s) == 1)
            token = f.store.issue_token("acme")
            ask = {"model": MODEL, "prompt": "hello", "max_tokens": 3}
            replies = await exchange(
                HttpApi(f.gateway_service),
                raw_request("POST", "/v1/completions", {**ask, "stream": True}, token),
                raw_request("POST", "/v1/completions", ask, token))
            assert [r.status for r in replies] == [200, 200]

    with blocking.inline():
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    after = gateway_counts(reader)
    delta = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    assert delta == {"OK": 2, "tether.request.duration": 2, "tether.request.first_chunk": 2}
