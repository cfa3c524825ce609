"""Overload and client errors on the request path (real services, in-memory network,
virtual time; the engine is the ``ScriptedEngine`` double).

Overload is RESOURCE_EXHAUSTED with a retry hint, never UNAVAILABLE while workers are
alive, and never a dead letter; a client error is refused before admission (nothing
charged, reserved or dead-lettered), and one a worker finds after admission is undone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
import trio
import trio.testing

from gateway.grpc_edge import GrpcEdge
from orchestrator.discovery import InFlight
from tests.services.harness import MODEL, Fleet, ScriptedEngine, fleet, wall_ms
from tether import blocking
from tether.errors import RETRY_AFTER_MS, InvalidArgument, NotFound, retry_after_s
from tether.rpc import RpcError, StatusCode
from tether.v1 import infer_pb2, jobs_pb2, services_pb2_grpc, tensor_pb2


def run(body: Callable[[Fleet], Awaitable[None]], tmp_path: Path) -> None:
    async def main() -> None:
        async with fleet(tmp_path) as f:
            await body(f)

    with blocking.inline():
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def request(cid: str = "", n: int = 2, prompt: str = "hello") -> infer_pb2.Infer.Request:
    req = infer_pb2.Infer.Request(model_id=MODEL, correlation_id=cid)
    req.input.text = prompt
    req.params.max_tokens = n
    return req


async def collect(stub, req, metadata) -> list[infer_pb2.Infer.Chunk]:
    async with stub.Infer(req, metadata=metadata) as chunks:
        return [c async for c in chunks]


def test_placement_counts_its_own_dispatches_between_heartbeats() -> None:
    """A heartbeat counts what was running when it was sent; the orchestrator adds what
    it dispatched since and takes off what ended since."""
    counts = InFlight()
    counts.started("w1")
    counts.started("w1")
    assert counts.unreported("w1") == 2
    counts.heartbeat("w1")  # reports both
    assert counts.unreported("w1", reported=2) == 0
    counts.ended("w1")
    counts.started("w1")
    counts.started("w1")
    assert counts.unreported("w1", reported=2) == 1
    # A report that missed open dispatches (still on their way) counts them anyway.
    assert counts.unreported("w1", reported=1) == 2
    counts.ended("w1")
    counts.ended("w1")
    counts.ended("w1")
    assert counts.unreported("w1", reported=2) == -2  # the report over-counts by two
    counts.heartbeat("w1")
    assert counts.unreported("w1") == counts.unreported("w2") == 0


def assert_shed(exc: RpcError) -> None:
    assert exc.code == StatusCode.RESOURCE_EXHAUSTED, exc
    assert "capacity" in exc.message
    assert retry_after_s(exc.details) == 1 and RETRY_AFTER_MS in exc.details


#: Overload scenarios: each runs here in virtual time and in ``tests/integration`` on
#: real Hyperswarm connections in real time.
Scenario = Callable[[Fleet], Awaitable[None]]
SCENARIOS: list[Scenario] = []


def scenario(fn: Scenario) -> Scenario:
    SCENARIOS.append(fn)
    return fn


@scenario
async def a_full_pool_is_overloaded_not_missing(f: Fleet) -> None:
    """64 concurrent requests against one worker with room for 4: 4 run, 60 are shed
    with RESOURCE_EXHAUSTED and a retry hint, before and after its heartbeat says it is
    full; none is UNAVAILABLE, none is dead-lettered, and none is even admitted: the
    orchestrator counts what it placed, so the worker never has to shed one."""
    engine = ScriptedEngine([(MODEL, "1.0")])
    engine.gate = trio.Event()
    await f.add_worker("w1", engine=engine, slots=2, queue_limit=2)
    await f.discovery.wait_for(lambda s: len(s) == 1)
    gw = await f.gateway()
    token = f.token("acme")
    outcomes: dict[str, list[str]] = {}

    async def one(i: int) -> None:
        cid = f"job-{i}"
        try:
            await collect(gw, request(cid), token)
            outcomes.setdefault("ok", []).append(cid)
        except RpcError as exc:
            if exc.code == StatusCode.RESOURCE_EXHAUSTED:
                assert_shed(exc)
            outcomes.setdefault(exc.code.name, []).append(cid)

    def full(snapshot: list) -> bool:
        cap = snapshot[0].presence.capacity
        return (cap.in_use, cap.queue_depth) == (2, 2)

    async with trio.open_nursery() as nursery:
        for i in range(64):
            nursery.start_soon(one, i)
        await f.discovery.wait_for(full)  # a heartbeat now reports the worker full
        with pytest.raises(RpcError) as info:
            await collect(gw, request("late"), token)
        assert_shed(info.value)  # not "no healthy worker"
        engine.gate.set()
    assert sorted(outcomes) == ["RESOURCE_EXHAUSTED", "ok"]
    assert len(outcomes["ok"]) == 4 and len(outcomes["RESOURCE_EXHAUSTED"]) == 60
    assert f.store.dead_letters() == []
    assert engine.started == 4
    for cid in [*outcomes["RESOURCE_EXHAUSTED"], "late"]:
        with pytest.raises(NotFound):
            f.store.get_job(cid)


@scenario
async def a_request_the_worker_sheds_is_unadmitted(f: Fleet) -> None:
    """A worker that sheds a request the orchestrator placed (here: its per-tenant
    limit) ends it with RESOURCE_EXHAUSTED and a hint; the quota charged is given back,
    the ids may be used again, and nothing is dead-lettered."""
    engine = ScriptedEngine([(MODEL, "1.0")])
    engine.gate = trio.Event()
    await f.add_worker("w1", engine=engine, slots=4, queue_limit=4, per_tenant=1)
    await f.discovery.wait_for(lambda s: len(s) == 1)
    f.store.set_quota("metered", limit_tokens=100, period_ms=3_600_000)
    gw = await f.gateway()
    token = f.token("metered")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect, gw, request("first", n=10), token)
        await engine.running.wait()
        with pytest.raises(RpcError) as info:
            await collect(gw, request("second", n=20), token)
        assert_shed(info.value)
        assert f.store.consume_quota("metered", 0) == 90  # "second" was given back
        await f.settled()  # outcomes are written behind the response
        job = f.store.get_job("second")
        assert job.state == jobs_pb2.JOB_STATE_FAILED
        assert job.error.code == StatusCode.RESOURCE_EXHAUSTED
        engine.gate.set()
    chunks = await collect(gw, request("second", n=20), token)  # same ids, now served
    assert chunks[-1].done
    await f.settled()  # outcomes are written behind the response
    assert f.store.get_job("second").state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert f.store.dead_letters() == []


@pytest.mark.parametrize("fn", SCENARIOS, ids=[f.__name__ for f in SCENARIOS])
def test_overload_scenario_on_the_local_network(fn: Scenario, tmp_path: Path) -> None:
    run(fn, tmp_path)


def _texts() -> infer_pb2.Infer.Request:
    req = infer_pb2.Infer.Request(model_id=MODEL, correlation_id="bad")
    req.input.texts.CopyFrom(tensor_pb2.TextBatch(texts=["a text"]))
    return req


def _params(**params: float) -> infer_pb2.Infer.Request:
    req = request("bad")
    for name, value in params.items():
        setattr(req.params, name, value)
    return req


@pytest.mark.parametrize(
    ("req", "words"),
    [
        (_params(max_tokens=100_000), "max_tokens 100000 is over the limit"),
        (_params(top_p=5.0), "top_p"),
        (_params(max_tokens=8, min_tokens=9), "min_tokens 9 is over max_tokens 8"),
        (request("bad", prompt="word " * 300), "takes at most 256"),
        (_texts(), "text_generation model: send input.text"),
        (request("bad id!"), "correlation id"),
    ],
    ids=["max_tokens", "top_p", "min_tokens", "prompt_length", "task", "correlation_id"],
)
def test_client_errors_are_refused_before_admission(
    tmp_path: Path, req: infer_pb2.Infer.Request, words: str
) -> None:
    """Sent straight to the orchestrator (the gateway checks what it can without the
    model): INVALID_ARGUMENT, and nothing dispatched, charged, reserved or dead-lettered."""

    async def body(f: Fleet) -> None:
        engine = ScriptedEngine([(MODEL, "1.0")])
        await f.add_worker("w1", engine=engine)
        await f.discovery.wait_for(lambda s: len(s) == 1)
        f.store.set_quota("acme", limit_tokens=100, period_ms=3_600_000)
        orchestrator = await f.orchestrator()
        req.tenant_id = "acme"
        with pytest.raises(RpcError) as info:
            async with orchestrator.Submit(req) as chunks:
                [c async for c in chunks]
        assert info.value.code == StatusCode.INVALID_ARGUMENT
        assert words in info.value.message
        assert engine.started == 0
        assert f.store.consume_quota("acme", 0) == 100
        with pytest.raises(NotFound):
            f.store.get_job(req.correlation_id)
        assert f.store.dead_letters() == []

    run(body, tmp_path)


def test_an_engine_refusal_after_admission_is_not_dead_lettered(tmp_path: Path) -> None:
    """What only the engine can tell (the exact token count of a prompt) is still the
    client's error: INVALID_ARGUMENT, the quota given back, no dead letter."""

    async def body(f: Fleet) -> None:
        engine = ScriptedEngine([(MODEL, "1.0")])
        engine.fail_with = InvalidArgument("prompt is 300 tokens, tiny-lm takes at most 256")
        await f.add_worker("w1", engine=engine)
        await f.discovery.wait_for(lambda s: len(s) == 1)
        f.store.set_quota("acme", limit_tokens=100, period_ms=3_600_000)
        gw = await f.gateway()
        with pytest.raises(RpcError) as info:
            await collect(gw, request("job-e", n=10), f.token("acme"))
        assert info.value.code == StatusCode.INVALID_ARGUMENT
        assert engine.started == 1
        assert f.store.consume_quota("acme", 0) == 100
        assert f.store.get_job("job-e").state == jobs_pb2.JOB_STATE_FAILED
        assert f.store.dead_letters() == []

    run(body, tmp_path)



def test_a_grpc_client_gets_the_retry_hint_in_trailers(tmp_path: Path) -> None:
    """The gRPC edge sends an error's details as ``tether-detail-*`` trailers: a shed
    request carries its retry hint there (real clock: gRPC runs its own threads)."""

    def call(port: int, token: str) -> tuple[grpc.StatusCode, dict[str, str]]:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = services_pb2_grpc.GatewayStub(channel)
            try:
                list(stub.Infer(request(n=2), metadata=[("authorization", f"Bearer {token}")],
                                timeout=30))
            except grpc.RpcError as exc:
                return exc.code(), dict(exc.trailing_metadata() or ())
        raise AssertionError("not shed")

    async def main() -> None:
        async with fleet(tmp_path, clock_ms=wall_ms) as f:
            engine = ScriptedEngine([(MODEL, "1.0")])
            engine.gate = trio.Event()
            await f.add_worker("w1", engine=engine, slots=1, queue_limit=0)
            await f.discovery.wait_for(lambda s: len(s) == 1)
            token = f.store.issue_token("acme")
            gw = await f.gateway()
            async with trio.open_nursery() as nursery:
                port = await nursery.start(GrpcEdge(f.gateway_service, "127.0.0.1", 0).run)
                async with trio.open_nursery() as busy:
                    busy.start_soon(collect, gw, request("busy"), f.token("acme"))
                    await engine.running.wait()
                    code, trailers = await trio.to_thread.run_sync(call, port, token)
                    engine.gate.set()
                nursery.cancel_scope.cancel()
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert trailers[f"tether-detail-{RETRY_AFTER_MS}"] == "1000"

    with blocking.inline():
        trio.run(main)
