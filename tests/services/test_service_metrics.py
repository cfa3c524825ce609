"""Each service's own state as metrics (``tether.metrics``), read through the in-memory
reader: the worker's gauges, the registry's resolves, the orchestrator's placements,
retries, dead letters and breakers, labelled only with bounded values."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from tests.services.harness import MODEL, ScriptedEngine, fleet, metrics_reader, points
from tests.services.test_request_path import collect, request
from tether import blocking
from tether.errors import Internal
from tether.rpc import RpcError, StatusCode


def values(reader: InMemoryMetricReader, name: str, **match: str) -> dict[tuple, float]:
    """Each point of ``name`` whose attributes include ``match``: its attributes (sorted
    items) -> its value."""
    return {
        tuple(sorted(p.attributes.items())): p.value
        for p in points(reader, name)
        if all(p.attributes.get(k) == v for k, v in match.items())
    }


def total(reader: InMemoryMetricReader, name: str, **match: str) -> float:
    return sum(values(reader, name, **match).values())


def genai(reader: InMemoryMetricReader, name: str) -> tuple[int, float]:
    """(count, sum) of a GenAI histogram for text completion of MODEL 1.0."""
    found = [p for p in points(reader, name)
             if p.attributes["gen_ai.request.model"] == MODEL
             and p.attributes["gen_ai.operation.name"] == "text_completion"
             and p.attributes["tether.model.version"] == "1.0"]
    return (found[0].count, found[0].sum) if found else (0, 0.0)


def test_services_export_their_state(tmp_path: Path) -> None:
    reader = metrics_reader()
    before = {
        "ok": total(reader, "tether.orchestrator.placements", model=MODEL, outcome="OK"),
        "internal": total(reader, "tether.orchestrator.placements", model=MODEL,
                          outcome="INTERNAL"),
        "resolves": total(reader, "tether.registry.resolves", model=MODEL, result="OK"),
        "other": total(reader, "tether.registry.resolves", model="other"),
        "dlq": total(reader, "tether.orchestrator.dead_letters", model=MODEL, code="INTERNAL"),
    }
    placements_before = values(reader, "tether.orchestrator.placements", model=MODEL)
    genai_before = genai(reader, "gen_ai.server.request.duration")
    tpot_before = genai(reader, "gen_ai.server.time_per_output_token")
    seen: dict[str, object] = {}

    async def main() -> None:
        (tmp_path / "failing").mkdir()
        async with fleet(tmp_path, breaker_open_s=30.0) as f:
            good = ScriptedEngine([(MODEL, "1.0")])
            good.gate = trio.Event()
            await f.add_worker("w-good", engine=good, slots=1, queue_limit=4)
            await f.discovery.wait_for(lambda s: len(s) == 1)
            gw = await f.gateway()
            token = f.token("acme")
            async with trio.open_nursery() as nursery:
                for _ in range(2):
                    nursery.start_soon(collect, gw, request(n=2), token)
                with trio.fail_after(30):  # (virtual time) the worker keeps no event for it
                    while (good.active < 1  # noqa: ASYNC110
                           or f.workers["w-good"].quota.stats().queue_depth < 1):
                        await trio.sleep(0.01)
                # One running, one queued: the worker's gauges say so.
                seen["queue"] = values(reader, "tether.worker.queue.depth", worker="w-good")
                seen["in_use"] = values(reader, "tether.worker.slots.in_use", worker="w-good")
                good.gate.set()
            unknown = request()
            unknown.model_id = "no-such-model"
            with pytest.raises(RpcError) as info:
                await collect(gw, unknown, token)
            assert info.value.code == StatusCode.NOT_FOUND
        async with fleet(tmp_path / "failing", breaker_open_s=30.0) as f:
            bad = ScriptedEngine([(MODEL, "1.0")])
            bad.fail_with = Internal("engine crashed")
            await f.add_worker("w-bad", engine=bad)
            await f.discovery.wait_for(lambda s: len(s) == 1)
            gw = await f.gateway()
            token = f.token("acme")
            for _ in range(3):
                with pytest.raises(RpcError):
                    await collect(gw, request(), token)
            seen["breakers"] = values(reader, "tether.orchestrator.breakers.open", model=MODEL)

    with blocking.inline():
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert list(seen["queue"].values()) == [1]  # type: ignore[attr-defined]
    assert list(seen["in_use"].values()) == [1]  # type: ignore[attr-defined]
    assert total(reader, "tether.orchestrator.placements", model=MODEL,
                 outcome="OK") - before["ok"] == 2
    assert total(reader, "tether.orchestrator.placements", model=MODEL,
                 outcome="INTERNAL") - before["internal"] >= 3
    assert total(reader, "tether.registry.resolves", model=MODEL,
                 result="OK") - before["resolves"] >= 1
    # An unknown model is "other", not the caller's text.
    assert total(reader, "tether.registry.resolves", model="other",
                 result="NOT_FOUND") - before["other"] == 1
    assert not values(reader, "tether.registry.resolves", model="no-such-model")
    assert total(reader, "tether.orchestrator.dead_letters", model=MODEL,
                 code="INTERNAL") - before["dlq"] >= 3
    assert 1 in seen["breakers"].values()  # type: ignore[attr-defined]
    # The GenAI conventions' server metrics, by operation, model and version: two
    # answers of 2 tokens each (the virtual clock: 0.1 s a token).
    count, _ = genai(reader, "gen_ai.server.request.duration")
    assert count - genai_before[0] == 2
    count, seconds = genai(reader, "gen_ai.server.time_per_output_token")
    count, seconds = count - tpot_before[0], seconds - tpot_before[1]
    assert count == 2 and seconds / count == pytest.approx(0.1, abs=0.01)
    # This test's placements are labelled with the catalog's version (the request named none).
    after = values(reader, "tether.orchestrator.placements", model=MODEL)
    grown = {dict(k)["version"] for k, v in after.items() if v > placements_before.get(k, 0)}
    assert grown == {"1.0"}
