"""Degrade (spec §3.2, the orchestrator's policy engine): a request whose pool sheds it
before admission runs on its model's ``degrade_to`` model when the policy allows it,
and says so; otherwise it is shed as before.

Real services on the in-memory network in virtual time; the engines are the
``ScriptedEngine`` double (``big-lm`` streams `` b0 b1 ...``, ``tiny-lm`` `` w0 w1 ...``).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
import trio
import trio.testing

from gateway import openai
from gateway.grpc_edge import GrpcEdge
from gateway.http import HttpApi
from registry.catalog import Catalog
from tests.services.harness import MODEL, Fleet, ScriptedEngine, fleet, model_record, wall_ms
from tests.services.test_http_edge import exchange, raw_request
from tests.services.test_orchestrator_failover import submit_to
from tests.services.test_overload import assert_shed
from tether import blocking
from tether.keys import KeyPair
from tether.resume import LOST_ORCHESTRATOR
from tether.rpc import RpcError, StatusCode
from tether.v1 import (
    control_pb2,
    health_pb2,
    infer_pb2,
    jobs_pb2,
    presence_pb2,
    services_pb2_grpc,
)

BIG = "big-lm"


def publish_big(*, allow: bool) -> Callable[[Catalog, KeyPair], None]:
    """``big-lm`` 1.0, degrading to ``tiny-lm`` (any version: the latest) when allowed."""

    def extra(catalog: Catalog, publisher: KeyPair) -> None:
        record = model_record(publisher, BIG)
        record.capabilities.degrade_to.model_id = MODEL
        record.policy.allow_degrade = allow
        catalog.publish(record)

    return extra


def run(body: Callable[[Fleet], Awaitable[None]], tmp_path: Path, *, allow: bool = True) -> None:
    async def main() -> None:
        async with fleet(tmp_path, extra=publish_big(allow=allow)) as f:
            await body(f)

    with blocking.inline():
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def request(cid: str, n: int = 2) -> infer_pb2.Infer.Request:
    req = infer_pb2.Infer.Request(model_id=BIG, correlation_id=cid)
    req.input.text = "hello"
    req.params.max_tokens = n
    return req


async def collect(stub, req, metadata) -> list[infer_pb2.Infer.Chunk]:
    async with stub.Infer(req, metadata=metadata) as chunks:
        return [c async for c in chunks]


async def busy_big_pool(f: Fleet) -> tuple[ScriptedEngine, ScriptedEngine, trio.Event]:
    """A ``big-lm`` worker with room for one request (held until the gate opens) and a
    ``tiny-lm`` worker."""
    big = ScriptedEngine([(BIG, "1.0")], word="b")
    big.gate = gate = trio.Event()
    small = ScriptedEngine([(MODEL, "1.0")])
    await f.add_worker("w-big", engine=big, slots=1, queue_limit=0)
    await f.add_worker("w-small", engine=small)
    await f.discovery.wait_for(lambda s: len(s) == 2)
    return big, small, gate


def test_a_full_pool_degrades_to_the_smaller_model_when_allowed(tmp_path: Path) -> None:
    """The big pool is full: the next request is served by tiny-lm. Its first chunk
    names the model asked for and the one serving; usage, the job, the usage record and
    the quota are all tiny-lm's; requests with room still run on big-lm."""

    async def body(f: Fleet) -> None:
        big, small, gate = await busy_big_pool(f)
        f.store.set_quota("acme", limit_tokens=100, period_ms=3_600_000)
        gw = await f.gateway()
        token = f.token("acme")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, gw, request("on-big"), token)
            await big.running.wait()
            chunks = await collect(gw, request("degraded", n=3), token)
            gate.set()
        assert "".join(c.payload.text for c in chunks) == " w0 w1 w2"
        assert chunks[0].degraded_from == f"{BIG}@1.0"
        assert chunks[0].served_model == f"{MODEL}@1.0"
        assert not any(c.degraded_from or c.served_model for c in chunks[1:])
        usage = chunks[-1].usage
        assert (usage.model_id, usage.version, usage.output_tokens) == (MODEL, "1.0", 3)
        assert [r.model_id for r in small.requests] == [MODEL]
        assert big.started == 1
        await f.settled()  # outcomes are written behind the response
        job = f.store.get_job("degraded")
        assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED and job.worker_id == "w-small"
        assert f.store.job_record("degraded").model_id == MODEL
        report = {(u.model_id, u.version): (u.requests, u.output_tokens)
                  for u in f.store.usage_report(tenant_id="acme")}
        assert report == {(BIG, "1.0"): (1, 2), (MODEL, "1.0"): (1, 3)}
        assert f.store.consume_quota("acme", 0) == 100 - 2 - 3  # both charged, as run
        # With room again, big-lm serves big-lm requests.
        again = await collect(gw, request("big-again"), token)
        assert again[-1].usage.model_id == BIG and not again[0].degraded_from

    run(body, tmp_path)


def test_a_full_pool_is_shed_when_the_policy_does_not_allow_degrading(
    tmp_path: Path
) -> None:
    async def body(f: Fleet) -> None:
        big, small, gate = await busy_big_pool(f)
        gw = await f.gateway()
        token = f.token("acme")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, gw, request("on-big"), token)
            await big.running.wait()
            with pytest.raises(RpcError) as info:
                await collect(gw, request("shed"), token)
            gate.set()
        assert_shed(info.value)
        assert "degrade" not in info.value.message
        assert small.started == 0

    run(body, tmp_path, allow=False)


def test_a_full_degrade_target_is_shed_naming_both_pools(tmp_path: Path) -> None:
    async def body(f: Fleet) -> None:
        big = ScriptedEngine([(BIG, "1.0")], word="b")
        small = ScriptedEngine([(MODEL, "1.0")])
        big.gate = small.gate = gate = trio.Event()
        await f.add_worker("w-big", engine=big, slots=1, queue_limit=0)
        await f.add_worker("w-small", engine=small, slots=1, queue_limit=0)
        await f.discovery.wait_for(lambda s: len(s) == 2)
        gw = await f.gateway()
        token = f.token("acme")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, gw, request("on-big"), token)
            await big.running.wait()
            nursery.start_soon(collect, gw, request("on-small"), token)  # degraded
            await small.running.wait()
            with pytest.raises(RpcError) as info:
                await collect(gw, request("shed"), token)
            gate.set()
        assert_shed(info.value)
        assert f"{BIG}@1.0" in info.value.message and f"{MODEL}@1.0" in info.value.message
        assert info.value.details["degrade_to"] == f"{MODEL}@1.0"
        assert (big.started, small.started) == (1, 1)
        assert f.store.dead_letters() == []

    run(body, tmp_path)


def test_a_model_with_no_worker_degrades(tmp_path: Path) -> None:
    """No worker serves big-lm at all (or its circuit is open): degrading is allowed, so
    tiny-lm serves; without a tiny-lm worker either the answer stays UNAVAILABLE and
    names both."""

    async def body(f: Fleet) -> None:
        gw = await f.gateway()
        token = f.token("acme")
        with pytest.raises(RpcError) as info:
            await collect(gw, request("nowhere"), token)
        assert info.value.code == StatusCode.UNAVAILABLE
        assert "no healthy worker serves big-lm" in info.value.message
        assert "degrade target tiny-lm@1.0" in info.value.message
        await f.add_worker("w-small")
        await f.discovery.wait_for(lambda s: len(s) == 1)
        chunks = await collect(gw, request("degraded"), token)
        assert chunks[0].degraded_from == f"{BIG}@1.0"
        assert chunks[-1].usage.model_id == MODEL

    run(body, tmp_path)


def test_the_http_edge_names_the_serving_model_and_says_it_degraded(tmp_path: Path) -> None:
    """Whole and streamed: ``model`` is the model that served, and the
    ``x-tether-degraded-from`` header names the one asked for."""

    async def body(f: Fleet) -> None:
        small = ScriptedEngine([(MODEL, "1.0")])
        await f.add_worker("w-small", engine=small)
        await f.discovery.wait_for(lambda s: len(s) == 1)
        api = HttpApi(f.gateway_service, wall_clock=lambda: 1_800_000_000.0)
        token = f.store.issue_token("acme")
        ask = {"model": BIG, "prompt": "hello", "max_tokens": 2}
        whole, streamed, chat = await exchange(
            api,
            raw_request("POST", "/v1/completions", ask, token),
            raw_request("POST", "/v1/completions", {**ask, "stream": True}, token),
            raw_request("POST", "/v1/chat/completions",
                        {"model": BIG, "messages": [{"role": "user", "content": "hi"}],
                         "max_tokens": 2}, token),
        )
        assert whole.status == 200
        assert whole.headers[openai.DEGRADED_HEADER] == f"{BIG}@1.0"
        assert whole.json()["model"] == f"{MODEL}@1.0"
        assert streamed.status == 200
        assert streamed.headers[openai.DEGRADED_HEADER] == f"{BIG}@1.0"
        *events, done = streamed.events()
        assert done == "[DONE]"
        assert {json.loads(e)["model"] for e in events} == {f"{MODEL}@1.0"}
        assert chat.headers[openai.DEGRADED_HEADER] == f"{BIG}@1.0"
        assert chat.json()["model"] == f"{MODEL}@1.0"
        assert small.started == 3

    run(body, tmp_path)


def test_a_grpc_client_gets_the_chunk_fields_and_initial_metadata(tmp_path: Path) -> None:
    """Through the gRPC edge the first chunk carries the fields, and the initial
    metadata ``x-tether-degraded-from`` names the model asked for (real clock: gRPC runs
    its own threads)."""

    def call(port: int, token: str) -> tuple[dict[str, str], list[infer_pb2.Infer.Chunk]]:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = services_pb2_grpc.GatewayStub(channel)
            answer = stub.Infer(request("grpc"), metadata=[("authorization", f"Bearer {token}")],
                                timeout=30)
            chunks = list(answer)
            return dict(answer.initial_metadata() or ()), chunks

    async def main() -> None:
        async with fleet(tmp_path, clock_ms=wall_ms, extra=publish_big(allow=True)) as f:
            await f.add_worker("w-small")
            await f.discovery.wait_for(lambda s: len(s) == 1)
            token = f.store.issue_token("acme")
            async with trio.open_nursery() as nursery:
                port = await nursery.start(GrpcEdge(f.gateway_service, "127.0.0.1", 0).run)
                metadata, chunks = await trio.to_thread.run_sync(call, port, token)
                nursery.cancel_scope.cancel()
        assert metadata[openai.DEGRADED_HEADER] == f"{BIG}@1.0"
        assert (chunks[0].degraded_from, chunks[0].served_model) == (f"{BIG}@1.0", f"{MODEL}@1.0")
        assert chunks[-1].usage.model_id == MODEL

    with blocking.inline():
        trio.run(main)


def test_a_degraded_job_taken_over_runs_again_on_the_model_it_ran_on(tmp_path: Path) -> None:
    """A degraded stream whose orchestrator is lost: the retry through another
    orchestrator runs the stored request again on tiny-lm, even though big-lm has room
    by then (the client's stream is spliced onto one answer, not two models')."""

    async def main() -> None:
        async with fleet(tmp_path, orchestrators=2, extra=publish_big(allow=True)) as f:
            small = ScriptedEngine([(MODEL, "1.0")])
            await f.add_worker("w-small", engine=small)
            a, b = f.orchestrators.values()
            for o in (a, b):
                await o.discovery.wait_for(lambda s: len(s) == 1)
            req = request("r-d", n=6)
            req.tenant_id, req.retry_token = "acme", "first"
            got: list[infer_pb2.Infer.Chunk] = []
            with pytest.raises(RpcError):
                await submit_to(f, a.key, req, into=got, kill_after=2)
            assert got[0].degraded_from == f"{BIG}@1.0"
            big = ScriptedEngine([(BIG, "1.0")], word="b")
            await f.add_worker("w-big", engine=big)
            await b.discovery.wait_for(lambda s: len(s) == 2)
            again = await submit_to(f, b.key, req, {LOST_ORCHESTRATOR: a.key.hex()})
            assert "".join(c.payload.text for c in again) == "".join(
                f" w{i}" for i in range(6))
            assert again[-1].usage.model_id == MODEL
            assert big.started == 0
            await f.settled()  # outcomes are written behind the response
            assert f.store.get_job("r-d").state == jobs_pb2.JOB_STATE_SUCCEEDED

    with blocking.inline():
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


class BatchingEngine(ScriptedEngine):
    """The scripted double, reporting a batch of ``max_batch`` sequences in its
    heartbeat as the real engine does (``WorkerEngine.batch_capacity``)."""

    max_batch = 1

    def batch_capacity(self, capacity: health_pb2.Capacity) -> None:
        capacity.max_batch_size = self.max_batch
        capacity.active_sequences = self.active


def test_a_full_batch_degrades_though_slots_are_free(tmp_path: Path) -> None:
    """The big worker has slots and queue to spare but batches one sequence: the
    orchestrator counts sequences (its own dispatch at first, then the heartbeat's), so
    the next request goes to the degrade target rather than wait for a seat."""

    async def body(f: Fleet) -> None:
        big = BatchingEngine([(BIG, "1.0")], word="b")
        big.gate = gate = trio.Event()
        small = ScriptedEngine([(MODEL, "1.0")])
        await f.add_worker("w-big", engine=big, slots=4, queue_limit=4)
        await f.add_worker("w-small", engine=small)
        await f.discovery.wait_for(lambda s: len(s) == 2)
        gw = await f.gateway()
        token = f.token("acme")

        def batch_reported(snapshot: list) -> bool:
            return any(e.presence.capacity.active_sequences == 1 for e in snapshot)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, gw, request("on-big"), token)
            await big.running.wait()
            with trio.fail_after(30):  # placed on big-lm, it would wait for the gate
                before = await collect(gw, request("before-beat"), token)
                await f.discovery.wait_for(batch_reported)
                after = await collect(gw, request("after-beat"), token)
            gate.set()
        for chunks in (before, after):
            assert chunks[0].degraded_from == f"{BIG}@1.0"
            assert chunks[-1].usage.model_id == MODEL
        assert (big.started, small.started) == (1, 2)

    run(body, tmp_path)


def test_a_degraded_request_says_nothing_about_a_canary_version(tmp_path: Path) -> None:
    """A request a canary rollout pinned to big-lm 1.1 that tiny-lm served is not
    counted in 1.1's error budget, either way: 1.1 never ran it."""

    async def body(f: Fleet) -> None:
        assert f.catalog is not None
        record = model_record(KeyPair.generate(), BIG, "1.1")
        record.capabilities.degrade_to.model_id = MODEL
        record.policy.allow_degrade = True
        f.catalog.publish(record)
        rollouts = f.orchestrator_service.rollouts
        rollout = control_pb2.Rollout(model_id=BIG, max_error_rate=0.1)
        for version, bps in (("1.0", 0), ("1.1", 10_000)):
            rollout.weights.add(model=presence_pb2.ModelKey(model_id=BIG, version=version),
                                weight_bps=bps)
        rollouts.apply_rollout(rollout)
        await f.add_worker("w-small")
        await f.discovery.wait_for(lambda s: len(s) == 1)
        gw = await f.gateway()
        token = f.token("acme")
        for cid in ("c-1", "c-2"):
            chunks = await collect(gw, request(cid), token)
            assert chunks[0].degraded_from == f"{BIG}@1.1"
        state = rollouts.get(BIG)
        assert state is not None
        assert {v: s.served for v, s in state.versions.items()} == {"1.0": 0, "1.1": 0}

    run(body, tmp_path)
