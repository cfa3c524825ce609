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


def test_services_export_their_state(tmp_path: Path) -> None:
    reader = metrics_reader()
    before = {
        "ok": total(reader, "tether.orchestrator.placements", model=MODEL, outcome="OK"),
        "internal": total(reader, "tether.orchestrator.placements", model=MODEL,
                          outcome="INTERNAL"),
        "resolves": total(reader, "tether.registry.resolves", model=MODEL, result="OK"),
        "other": total(reader, "tether.registry.resolves", model="other"),
        "dlq": total(reader, "tether.orchestrator.dead_letters", model=MODEL, code="INTERNAL"),
        "genai": sum(p.count for p in points(reader, "gen_ai.server.request.duration")
                     if p.attributes["gen_ai.request.model"] == MODEL),
    }
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
    [duration] = [p for p in points(reader, "gen_ai.server.request.duration")
                  if p.attributes["gen_ai.request.model"] == MODEL]
    assert duration.attributes["gen_ai.operation.name"] == "text_completion"
    assert duration.attributes["tether.model.version"] == "1.0"
    assert duration.count - before["genai"] == 2
    [tpot] = [p for p in points(reader, "gen_ai.server.time_per_output_token")
              if p.attributes["gen_ai.request.model"] == MODEL]
    assert tpot.count >= 2 and 0.05 < tpot.sum / tpot.count < 0.2
    # Every placement is labelled with the catalog's version.
    assert {dict(k)["version"] for k in values(reader, "tether.orchestrator.placements",
                                               model=MODEL)} == {"1.0"}
