"""``tether status``: what an orchestrator reports of the network (``GetFleet``: workers,
breakers, rollouts, recent outcomes, registries) and the one screen made of it."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from orchestrator.recent import RecentOutcomes
from tests.services.harness import MODEL, ScriptedEngine, fleet
from tests.services.test_request_path import collect, request
from tether import blocking, operator
from tether.errors import Internal
from tether.rpc import RpcError, StatusCode
from tether.status import render
from tether.v1 import services_pb2


def test_recent_outcomes_count_worker_failures_in_the_window() -> None:
    now = [0.0]
    recent = RecentOutcomes(lambda: now[0], window_s=60)
    for code in (StatusCode.OK, StatusCode.INTERNAL, StatusCode.INVALID_ARGUMENT):
        recent.record(code)
    assert recent.totals() == (3, 1)  # a caller's error is not a failure
    now[0] = 30
    recent.record(StatusCode.UNAVAILABLE)
    assert recent.totals() == (4, 2)
    now[0] = 61
    assert recent.totals() == (1, 1)  # the first second left the window
    now[0] = 500
    assert recent.totals() == (0, 0)


def test_status_shows_workers_breakers_rollouts_and_errors(tmp_path: Path) -> None:
    got: list[services_pb2.GetFleetResponse] = []

    async def main() -> None:
        async with fleet(tmp_path, breaker_open_s=600.0) as f:
            engine = ScriptedEngine([(MODEL, "1.0")])
            engine.fail_with = Internal("engine crashed")
            await f.add_worker("w1", engine=engine)
            await f.discovery.wait_for(lambda s: len(s) == 1)
            gw = await f.gateway()
            token = f.token("acme")
            for _ in range(3):
                with pytest.raises(RpcError):
                    await collect(gw, request(), token)
            control = await f.control()
            ack = await control.Apply(operator.rollout_message(
                MODEL, ["1.0=90", "1.1=10"], max_error_rate=0.05, region="eu-west"))
            assert ack.accepted, ack.message
            stub = await f.orchestrator()
            got.append(await stub.GetFleet(services_pb2.GetFleetRequest()))

    with blocking.inline():
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    [answer] = got
    assert [w.worker_id for w in answer.workers] == ["w1"]
    assert (answer.recent_requests, answer.recent_failures) == (3, 3)
    [breaker] = answer.breakers
    assert (breaker.model_id, breaker.version, breaker.region, breaker.state) == (
        MODEL, "1.0", "eu-west", "open")
    [rollout] = answer.rollouts
    assert rollout.model_id == MODEL and "1.0=90%" in rollout.summary
    assert len(answer.orchestrator_key) == 32
    screen = render(answer, region="eu-west")
    assert "last 5 min: 3 requests, 100.0% failed" in screen
    assert "eu-west: 1 worker(s)" in screen and "w1" in screen
    assert f"cached: {MODEL}@1.0" in screen
    assert f"{MODEL}@1.0 in eu-west: open" in screen
    assert f"{MODEL}: " in screen and "1.1=10%" in screen
    assert len(screen.splitlines()) < 25  # one screen


def test_an_empty_network_renders() -> None:
    screen = render(services_pb2.GetFleetResponse(recent_window_s=300), region="local")
    assert "no requests" in screen and "registry NOT REACHED" in screen
    assert "workers    none" in screen and "breakers   all closed" in screen
