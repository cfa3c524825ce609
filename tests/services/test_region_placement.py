"""Placement across two regions (spec §8), on the in-memory network double in virtual time:
the request's own region first; the other region's workers (``--watch-region``) when the
local pool is drained or full. (An open breaker moving work across regions is
``test_request_path``'s ``a_slow_pool_trips_its_breaker_and_requests_go_elsewhere``; the
same across real processes and lab hosts is ``tests/lab/test_regions.py``.)"""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from tests.services.harness import MODEL, ScriptedEngine, fleet
from tether import blocking
from tether.v1 import control_pb2, infer_pb2


def request(cid: str, n: int = 2) -> infer_pb2.Infer.Request:
    req = infer_pb2.Infer.Request(model_id=MODEL, correlation_id=cid)
    req.input.text = "hello"
    req.params.max_tokens = n
    return req


def run(main) -> None:
    with blocking.inline():
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def first_worker(gw, req, token) -> str:
    async with gw.Infer(req, metadata=token) as chunks:
        got = [c async for c in chunks]
    return str(got[0].worker_id)


def test_a_drained_local_pool_sends_work_to_the_other_region(tmp_path: Path) -> None:
    async def main() -> None:
        async with fleet(tmp_path, watch_regions=("us-east",)) as f:
            await f.add_worker("near", engine=ScriptedEngine([(MODEL, "1.0")]))
            await f.add_worker("far", region="us-east", engine=ScriptedEngine([(MODEL, "1.0")]))
            await f.discovery.wait_for(lambda s: len(s) == 2)
            gw, token = await f.gateway(), f.token("acme")
            assert await first_worker(gw, request("a"), token) == "near"
            control = await f.control()
            ack = await control.Apply(control_pb2.ControlMessage(
                id=1, drain=control_pb2.Drain(worker_ids=["near"])))
            assert ack.accepted
            assert await first_worker(gw, request("b"), token) == "far"
    run(main)


def test_a_full_local_pool_sends_work_to_the_other_region(tmp_path: Path) -> None:
    async def main() -> None:
        async with fleet(tmp_path, watch_regions=("us-east",)) as f:
            await f.add_worker("near", engine=ScriptedEngine([(MODEL, "1.0")], step_s=5.0),
                               slots=1, queue_limit=0)
            await f.add_worker("far", region="us-east", engine=ScriptedEngine([(MODEL, "1.0")]))
            await f.discovery.wait_for(lambda s: len(s) == 2)
            gw, token = await f.gateway(), f.token("acme")
            seen: list[str] = []
            async with trio.open_nursery() as nursery:
                async def long() -> None:
                    seen.append(await first_worker(gw, request("long", n=3), token))
                nursery.start_soon(long)
                await trio.sleep(1)  # virtual: the long request holds near's one slot
                seen.append(await first_worker(gw, request("next"), token))
            assert seen == ["far", "near"]  # (the second one finished first)
    run(main)
