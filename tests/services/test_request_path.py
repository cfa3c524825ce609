"""The request path through real service code on the in-memory network double.

Gateway -> Orchestrator -> Worker with a real SQLite metadata store, real
signed heartbeats and the real scheduler; only the network (``LocalNetwork``)
and the engine (``ScriptedEngine``) are test doubles. Virtual time throughout.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
import trio
import trio.testing
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.http import HttpApi, serve_connection
from registry.catalog import Catalog
from tests.services.harness import MODEL, Fleet, ScriptedEngine, fleet, model_record
from tether import blocking, operator, telemetry
from tether.errors import FailedPrecondition, Internal, NotFound
from tether.keys import KeyPair
from tether.net import dial
from tether.rpc import RpcError, StatusCode
from tether.v1 import control_pb2, infer_pb2, jobs_pb2, presence_pb2, services_pb2, services_rpc

OpenFleet = Callable[..., AbstractAsyncContextManager[Fleet]]
Scenario = Callable[[OpenFleet], Awaitable[None]]
SCENARIOS: list[Scenario] = []


def scenario(fn: Scenario) -> Scenario:
    """A request-path scenario; it runs here on the in-memory network in virtual time,
    and in ``tests/integration`` on real Hyperswarm connections in real time."""
    SCENARIOS.append(fn)
    return fn




def request(
    prompt: str = "hello", n: int = 4, correlation_id: str = "", region: str = "",
    version: str = "",
) -> infer_pb2.Infer.Request:
    req = infer_pb2.Infer.Request(
        model_id=MODEL, correlation_id=correlation_id, region=region, version=version
    )
    req.input.text = prompt
    req.params.max_tokens = n
    return req


async def collect(stub, req, metadata) -> list[infer_pb2.Infer.Chunk]:
    async with stub.Infer(req, metadata=metadata) as chunks:
        return [c async for c in chunks]


@scenario
async def a_request_streams_through_gateway_orchestrator_and_worker(
    open_fleet: OpenFleet,
) -> None:
    async with open_fleet() as f:
        await f.add_worker("w1")
        await f.discovery.wait_for(lambda s: len(s) == 1)
        gw = await f.gateway()
        chunks = await collect(gw, request(n=5, correlation_id="job-1"), f.token("acme"))
        assert "".join(c.payload.text for c in chunks) == " w0 w1 w2 w3 w4"
        assert [c.seq for c in chunks] == [0, 1, 2, 3, 4]
        assert chunks[-1].done and chunks[-1].usage.output_tokens == 5
        assert {c.worker_id for c in chunks} == {"w1"}
        await f.settled()  # outcomes are written behind the response
        job = f.store.get_job("job-1")
        assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED
        assert job.worker_id == "w1"
        assert f.store.usage_totals("acme") == (0, 5)
        # The same (correlationId, retryToken) is never run twice.
        with pytest.raises(RpcError) as info:
            await collect(gw, request(correlation_id="job-1"), f.token("acme"))
        assert info.value.code == StatusCode.ALREADY_EXISTS


@scenario
async def placement_prefers_the_worker_in_the_request_region(open_fleet: OpenFleet) -> None:
    async with open_fleet(watch_regions=("us-east",)) as f:
        await f.add_worker("far", region="us-east")
        await f.add_worker("near", region="eu-west")
        await f.discovery.wait_for(lambda s: len(s) == 2)
        gw = await f.gateway()
        token = f.token("acme")
        chunks = await collect(gw, request(), token)
        assert chunks[0].worker_id == "near"
        chunks = await collect(gw, request(region="us-east"), token)
        assert chunks[0].worker_id == "far"


@scenario
async def a_silent_worker_leaves_placement_within_15_seconds(open_fleet: OpenFleet) -> None:
    async with open_fleet() as f:
        service = await f.add_worker("w1")
        await f.discovery.wait_for(lambda s: len(s) == 1)
        # The worker keeps its connection but stops heartbeating.
        service.stop_announcing()
        silent_since = trio.current_time()
        await f.discovery.wait_for(lambda s: len(s) == 0)
        assert trio.current_time() - silent_since <= 15 + 5
        gw = await f.gateway()
        with pytest.raises(RpcError) as info:
            await collect(gw, request(), f.token("acme"))
        assert info.value.code == StatusCode.UNAVAILABLE
        assert "no healthy worker" in info.value.message


@scenario
async def a_worker_killed_mid_stream_ends_the_request_clearly(open_fleet: OpenFleet) -> None:
    async with open_fleet() as f:
        await f.add_worker("w1", engine=ScriptedEngine([(MODEL, "1.0")], step_s=1.0))
        await f.discovery.wait_for(lambda s: len(s) == 1)
        gw = await f.gateway()
        got = []
        with pytest.raises(RpcError) as info, trio.fail_after(60):
            async with gw.Infer(request(n=50, correlation_id="job-k"), metadata=f.token("a")) as cs:
                async for c in cs:
                    got.append(c)
                    if len(got) == 3:
                        f.kill_worker("w1")
        assert info.value.code == StatusCode.UNAVAILABLE
        assert "w1" in info.value.message
        assert len(got) == 3
        assert f.store.get_job("job-k").state == jobs_pb2.JOB_STATE_FAILED


async def _stream_and_kill_the_server(
    f: Fleet, req: infer_pb2.Infer.Request, after: int, got: list[infer_pb2.Infer.Chunk]
) -> None:
    """Stream ``req`` into ``got``, killing whichever worker serves it after ``after`` chunks."""
    gw = await f.gateway()
    with trio.fail_after(60):
        async with gw.Infer(req, metadata=f.token("acme")) as chunks:
            async for c in chunks:
                got.append(c)
                if len(got) == after:
                    f.kill_worker(c.worker_id)


@scenario
async def a_conversation_runs_as_text_generation_with_a_pinned_seed(
    open_fleet: OpenFleet,
) -> None:
    async with open_fleet() as f:
        engine = ScriptedEngine([(MODEL, "1.0")])
        await f.add_worker("w1", engine=engine)
        await f.discovery.wait_for(lambda s: len(s) == 1)
        gw = await f.gateway()
        req = infer_pb2.Infer.Request(model_id=MODEL, correlation_id="job-chat")
        req.input.messages.messages.add(role="user", content="hello")
        req.params.max_tokens = 3
        chunks = await collect(gw, req, f.token("acme"))
        assert chunks[-1].done and chunks[-1].usage.output_tokens == 3
        # Pinned like a prompt's, so a replay elsewhere samples the same answer.
        (ran,) = engine.requests
        assert ran.input.messages.messages[0].content == "hello" and ran.params.seed != 0


@scenario
async def a_worker_lost_mid_stream_is_resumed_on_another(open_fleet: OpenFleet) -> None:
    async with open_fleet() as f:
        engines = {w: ScriptedEngine([(MODEL, "1.0")], step_s=0.2) for w in ("w1", "w2")}
        for worker_id, engine in engines.items():
            await f.add_worker(worker_id, engine=engine)
        await f.discovery.wait_for(lambda s: len(s) == 2)
        got: list[infer_pb2.Infer.Chunk] = []
        await _stream_and_kill_the_server(f, request(n=12, correlation_id="job-r"), 3, got)
        # Every chunk exactly once, in order, the last ones from the other worker.
        assert "".join(c.payload.text for c in got) == "".join(f" w{i}" for i in range(12))
        assert [c.seq for c in got] == list(range(12))
        lost, other = got[0].worker_id, got[-1].worker_id
        assert {c.worker_id for c in got[:3]} == {lost}
        assert {c.worker_id for c in got[3:]} == {other}
        assert other != lost and got[-1].done and got[-1].usage.output_tokens == 12
        # Both attempts ran the same pinned seed: a sampled answer replays identically.
        seeds = {e.requests[0].params.seed for e in engines.values()}
        assert len(seeds) == 1 and seeds != {0}
        await f.settled()  # outcomes are written behind the response
        job = f.store.get_job("job-r")
        assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED
        assert job.worker_id == other and job.attempts == 2
        assert f.store.dead_letters() == []


@scenario
async def calls_cancelled_mid_stream_end_alone(open_fleet: OpenFleet) -> None:
    """A client deadline that expires mid-stream, or a client that leaves mid-stream (an RPC
    client, or an HTTP client that hangs up), ends that call alone on every hop: the other
    tenants' streams on the same connections complete, nothing is dead-lettered or held
    against the pool, and the worker stops generating for the cancelled calls."""
    async with open_fleet() as f:
        # Fast streams (a small model's pace): cancels land while chunks are being sent.
        engine = ScriptedEngine([(MODEL, "1.0")], step_s=0.0005)
        await f.add_worker("w1", engine=engine, slots=32, queue_limit=32)
        await f.discovery.wait_for(lambda s: len(s) == 1)
        gw = await f.gateway()
        survivors = ("acme", "globex", "initech")
        done: dict[str, list[int]] = {}
        codes: list[StatusCode] = []

        async def survivor(tenant: str) -> None:
            req = request(n=1000, correlation_id=f"keep-{tenant}")
            done[tenant] = [c.seq for c in await collect(gw, req, f.token(tenant))]

        async def times_out(i: int) -> None:
            req = request(n=1024, correlation_id=f"late-{i}")
            try:
                async with gw.Infer(req, metadata=f.token("hasty"), timeout=0.06) as chunks:
                    async for _ in chunks:
                        pass
            except RpcError as exc:
                codes.append(exc.code)

        async def leaves(i: int) -> None:
            req = request(n=1024, correlation_id=f"gone-{i}")
            async with gw.Infer(req, metadata=f.token("fickle")) as chunks:
                async for c in chunks:
                    if c.seq == 20:
                        break

        async def hangs_up(token: str) -> None:  # an HTTP client of the gateway's edge
            ask = {"model": MODEL, "prompt": "hi", "max_tokens": 1024, "stream": True}
            body = json.dumps(ask).encode()
            head = (f"POST /v1/completions HTTP/1.1\r\nhost: tether\r\n"
                    f"content-length: {len(body)}\r\nauthorization: Bearer {token}\r\n\r\n")
            client, server = trio.testing.memory_stream_pair()

            async def serve() -> None:
                # The hang-up is absorbed, as serve_http does for every connection.
                with contextlib.suppress(trio.BrokenResourceError):
                    await serve_connection(server, HttpApi(f.gateway_service))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve)
                await client.send_all(head.encode() + body)
                received = b""
                while received.count(b"data:") < 20:
                    received += await client.receive_some()
                await client.aclose()  # gone mid-stream

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for tenant in survivors:
                    nursery.start_soon(survivor, tenant)
                http_token = f.store.issue_token("restless")
                for i in range(10):
                    nursery.start_soon(times_out, i)
                    nursery.start_soon(leaves, i)
                    nursery.start_soon(hangs_up, http_token)
                    await trio.sleep(0.03)
        assert done == {t: list(range(1000)) for t in survivors}
        assert set(codes) == {StatusCode.DEADLINE_EXCEEDED}
        assert f.store.dead_letters() == []
        # A cancelled call's job is CANCELLED (a deadline may also expire before admission).
        states = set()
        for i in range(10):
            for cid in (f"late-{i}", f"gone-{i}"):
                with contextlib.suppress(NotFound):
                    states.add(f.store.get_job(cid).state)
        assert states <= {jobs_pb2.JOB_STATE_CANCELLED}
        with trio.fail_after(5):
            await engine.idle.wait()
        # Nothing was held against the pool: the next requests are served.
        for n in range(4):
            chunks = await collect(gw, request(n=2, correlation_id=f"after-{n}"), f.token("acme"))
            assert chunks[-1].done


@scenario
async def resolution_survives_a_registry_outage(open_fleet: OpenFleet) -> None:
    """With every registry replica down, a model already resolved still resolves (to its
    last good answer, counted); one never resolved fails clearly."""
    async with open_fleet() as f:
        await f.add_worker("w1")
        await f.discovery.wait_for(lambda s: len(s) == 1)
        gw = await f.gateway()
        await collect(gw, request(correlation_id="warm"), f.token("acme"))
        assert f.registry_key is not None
        f.stop_registry(f.registry_key)
        await trio.sleep(6)  # past the 5 s resolution cache
        started = trio.current_time()
        chunks = await collect(gw, request(correlation_id="outage"), f.token("acme"))
        assert chunks[-1].done
        assert trio.current_time() - started < 5
        assert f.orchestrator_service.stale_resolutions == 1
        with pytest.raises(RpcError) as info:
            await collect(gw, request(correlation_id="unknown"), f.token("globex"))
        assert info.value.code == StatusCode.UNAVAILABLE
        assert "registry" in info.value.message


@scenario
async def two_registry_replicas_serve_the_same_records(open_fleet: OpenFleet) -> None:
    """Two replicas announce on the registry topic and serve one catalog: with either one
    stopped, the other resolves."""
    async with open_fleet() as f:
        second = await f.add_registry()
        await f.add_worker("w1")
        await f.discovery.wait_for(lambda s: len(s) == 1)
        gw = await f.gateway()
        assert f.registry_key is not None
        for stopped, tenant in ((f.registry_key, "acme"), (second, "globex")):
            f.stop_registry(stopped)
            with trio.fail_after(15):
                chunks = await collect(gw, request(correlation_id=tenant), f.token(tenant))
            assert chunks[-1].done
            await f.add_registry(stopped)
        assert f.orchestrator_service.stale_resolutions == 0


@scenario
async def a_replay_that_differs_is_not_spliced(open_fleet: OpenFleet) -> None:
    async with open_fleet() as f:
        # Two workers that answer differently (say, two backends): neither can finish
        # what the other started.
        for worker_id, word in (("w1", "a"), ("w2", "b")):
            await f.add_worker(worker_id, engine=ScriptedEngine([(MODEL, "1.0")], step_s=0.2,
                                                                word=word))
        await f.discovery.wait_for(lambda s: len(s) == 2)
        got: list[infer_pb2.Infer.Chunk] = []
        with pytest.raises(RpcError) as info:
            await _stream_and_kill_the_server(f, request(n=12, correlation_id="job-d"), 3, got)
        assert info.value.code == StatusCode.UNAVAILABLE
        assert f"worker {got[0].worker_id} was lost mid-stream after 3 chunks" in info.value.message
        assert "differs from the 3 chunks already sent" in info.value.message
        assert len(got) == 3
        assert f.store.get_job("job-d").state == jobs_pb2.JOB_STATE_FAILED
        [letter] = f.store.dead_letters()
        assert letter.error_code == StatusCode.UNAVAILABLE and letter.attempts == 2


@scenario
async def bad_tokens_are_refused(open_fleet: OpenFleet) -> None:
    async with open_fleet() as f:
        await f.add_worker("w1")
        gw = await f.gateway()
        for metadata in ({}, {"authorization": "Bearer nope"}, {"authorization": "Basic x"}):
            with pytest.raises(RpcError) as info:
                await collect(gw, request(), metadata)
            assert info.value.code == StatusCode.UNAUTHENTICATED


@scenario
async def only_the_gateway_submits_and_only_the_orchestrator_dispatches(
    open_fleet: OpenFleet,
) -> None:
    async with open_fleet() as f:
        engine = ScriptedEngine([(MODEL, "1.0")])
        await f.add_worker("w1", engine=engine)
        await f.discovery.wait_for(lambda s: len(s) == 1)
        # A peer that skips the gateway (no token, any tenant it likes) is refused by the
        # orchestrator, and a peer that skips the orchestrator is refused by the worker.
        spoofed = request(correlation_id="job-x")
        spoofed.tenant_id = "acme"
        with trio.fail_after(30):
            orchestrator = await dial(f.client_net, f.orchestrator_key)
            worker = await dial(f.client_net, f.workers["w1"].keypair.public_key)
        for stub in (
            services_rpc.OrchestratorStub(orchestrator.rpc).Submit,
            services_rpc.WorkerStub(worker.rpc).Infer,
        ):
            with pytest.raises(RpcError) as info:
                async with stub(spoofed) as chunks:
                    [c async for c in chunks]
            assert info.value.code == StatusCode.PERMISSION_DENIED
            assert f.client_net.public_key.hex() in info.value.message
        with pytest.raises(RpcError) as info:
            await services_rpc.OrchestratorStub(orchestrator.rpc).GetFleet(
                services_pb2.GetFleetRequest()
            )
        assert info.value.code == StatusCode.PERMISSION_DENIED
        assert engine.started == 0
        with pytest.raises(NotFound):  # nothing was admitted
            f.store.get_job("job-x")
        # The gateway's own path still works.
        gw = await f.gateway()
        assert len(await collect(gw, request(), f.token("acme"))) == 4


@scenario
async def invalid_requests_are_refused_before_any_work(open_fleet: OpenFleet) -> None:
    async with open_fleet() as f:
        engine = ScriptedEngine([(MODEL, "1.0")])
        await f.add_worker("w1", engine=engine)
        gw = await f.gateway()
        token = f.token("acme")
        bad = [
            infer_pb2.Infer.Request(model_id=MODEL),  # no input
            request(n=5000),
            request(prompt="x" * 20000),
            infer_pb2.Infer.Request(model_id="Bad Model!", input=infer_pb2.Input(text="x")),
            infer_pb2.Infer.Request(model_id=MODEL, input=infer_pb2.Input(
                messages=infer_pb2.ChatMessages(messages=[
                    infer_pb2.ChatMessage(role="user", content="x" * 20000)]))),
            infer_pb2.Infer.Request(model_id=MODEL, input=infer_pb2.Input(
                messages=infer_pb2.ChatMessages(messages=[infer_pb2.ChatMessage(content="x")]))),
            infer_pb2.Infer.Request(model_id=MODEL, input=infer_pb2.Input(
                messages=infer_pb2.ChatMessages())),
            infer_pb2.Infer.Request(model_id=MODEL, input=infer_pb2.Input(text="x"),
                                    params=infer_pb2.GenerationParams(stop=["s"] * 17)),
        ]
        for req in bad:
            with pytest.raises(RpcError) as info:
                await collect(gw, req, token)
            assert info.value.code == StatusCode.INVALID_ARGUMENT
        with pytest.raises(RpcError) as info:
            await collect(gw, infer_pb2.Infer.Request(model_id="unknown-model",
                                                       input=infer_pb2.Input(text="x")), token)
        assert info.value.code == StatusCode.NOT_FOUND
        assert engine.started == 0


@scenario
async def a_burst_past_the_bucket_is_shed_while_other_tenants_are_served(
    open_fleet: OpenFleet,
) -> None:
    async with open_fleet(rate=0.01, burst=3) as f:
        await f.add_worker("w1", slots=8, queue_limit=32)
        await f.discovery.wait_for(lambda s: len(s) == 1)
        gw = await f.gateway()
        noisy, quiet = f.token("noisy"), f.token("quiet")
        outcomes: list[str] = []

        async def one(metadata: dict[str, str], label: str) -> None:
            try:
                await collect(gw, request(n=2), metadata)
                outcomes.append(f"{label}:ok")
            except RpcError as exc:
                outcomes.append(f"{label}:{exc.code.name}")

        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(one, noisy, "noisy")
            nursery.start_soon(one, quiet, "quiet")
        assert outcomes.count("noisy:ok") == 3
        assert outcomes.count("noisy:RESOURCE_EXHAUSTED") == 3
        assert "quiet:ok" in outcomes


@scenario
async def a_full_worker_sheds_and_the_orchestrator_places_elsewhere(open_fleet: OpenFleet) -> None:
    async with open_fleet() as f:
        busy_engine = ScriptedEngine([(MODEL, "1.0")])
        busy_engine.gate = trio.Event()
        await f.add_worker("busy", engine=busy_engine, slots=1, queue_limit=0)
        await f.discovery.wait_for(lambda s: len(s) == 1)
        gw = await f.gateway()
        token = f.token("acme")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, gw, request(), token)
            await busy_engine.running.wait()
            # busy now holds its only slot; a second request is shed...
            with pytest.raises(RpcError) as info:
                await collect(gw, request(), token)
            assert info.value.code == StatusCode.RESOURCE_EXHAUSTED
            # ...until another worker joins, which takes it.
            await f.add_worker("spare")
            await f.discovery.wait_for(lambda s: len(s) == 2)
            chunks = await collect(gw, request(), token)
            assert chunks[0].worker_id == "spare"
            busy_engine.gate.set()


@scenario
async def one_trace_spans_gateway_orchestrator_and_worker(open_fleet: OpenFleet) -> None:
    exporter = InMemorySpanExporter()
    telemetry.setup("tests", exporter=exporter)
    async with open_fleet() as f:
        await f.add_worker("w1")
        await f.discovery.wait_for(lambda s: len(s) == 1)
        gw = await f.gateway()
        caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
        metadata = {**f.token("acme"), "traceparent": f"00-{caller_trace}-00f067aa0ba902b7-01"}
        await collect(gw, request(correlation_id="traced"), metadata)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert {"gateway.infer", "orchestrator.submit", "worker.infer"} <= spans.keys()
    trace_ids = {format(spans[n].context.trace_id, "032x") for n in spans}
    assert trace_ids == {caller_trace}
    def parent_of(name: str) -> int | None:
        parent = spans[name].parent
        return None if parent is None else parent.span_id

    assert parent_of("orchestrator.submit") == spans["gateway.infer"].context.span_id
    assert parent_of("worker.infer") == spans["orchestrator.submit"].context.span_id


@scenario
async def a_tenant_past_its_quota_is_refused_before_dispatch(open_fleet: OpenFleet) -> None:
    async with open_fleet() as f:
        engine = ScriptedEngine([(MODEL, "1.0")])
        await f.add_worker("w1", engine=engine)
        await f.discovery.wait_for(lambda s: len(s) == 1)
        f.store.set_quota("metered", limit_tokens=10, period_ms=3_600_000)
        gw = await f.gateway()
        token = f.token("metered")
        await collect(gw, request(n=6), token)
        with pytest.raises(RpcError) as info:
            await collect(gw, request(n=6), token)
        assert info.value.code == StatusCode.RESOURCE_EXHAUSTED
        assert "quota" in info.value.message
        assert engine.started == 1
        await collect(gw, request(n=4), token)  # what is left still fits


@scenario
async def a_failing_pool_trips_its_breaker_and_recovers(open_fleet: OpenFleet) -> None:
    async with open_fleet(breaker_open_s=2.0) as f:
        engine = ScriptedEngine([(MODEL, "1.0")])
        engine.fail_with = Internal("engine crashed")
        await f.add_worker("w1", engine=engine)
        await f.discovery.wait_for(lambda s: len(s) == 1)
        gw = await f.gateway()
        token = f.token("acme")
        for _ in range(3):
            with pytest.raises(RpcError) as info:
                await collect(gw, request(), token)
            assert info.value.code == StatusCode.INTERNAL
        # Open: refused at once, the failing pool is not called.
        with pytest.raises(RpcError) as info:
            await collect(gw, request(), token)
        assert info.value.code == StatusCode.UNAVAILABLE
        assert "circuit open" in info.value.message
        assert engine.started == 3
        # The three failed jobs and their requests wait in the dead-letter queue.
        letters = f.store.dead_letters()
        assert [(d.error_code, d.worker_id, d.model_id) for d in letters] == [
            (StatusCode.INTERNAL, "w1", MODEL)
        ] * 3
        assert infer_pb2.Infer.Request.FromString(letters[0].request).input.text == "hello"
        # After the open period one probe goes through; its success closes the breaker.
        engine.fail_with = None
        await trio.sleep(2.5)
        assert len(await collect(gw, request(), token)) == 4
        assert len(await collect(gw, request(), token)) == 4


@scenario
async def a_slow_pool_trips_its_breaker_and_requests_go_elsewhere(open_fleet: OpenFleet) -> None:
    async with open_fleet(watch_regions=("us-east",), slow_first_chunk_s=0.5) as f:
        await f.add_worker("near", engine=ScriptedEngine([(MODEL, "1.0")], step_s=1.0))
        await f.add_worker(
            "far", region="us-east", engine=ScriptedEngine([(MODEL, "1.0")], step_s=0.01)
        )
        await f.discovery.wait_for(lambda s: len(s) == 2)
        gw = await f.gateway()
        token = f.token("acme")
        # The score prefers the near pool, until three first chunks over the 0.5 s
        # budget open its breaker; then the far pool serves.
        for _ in range(3):
            assert (await collect(gw, request(n=1), token))[0].worker_id == "near"
        assert (await collect(gw, request(n=1), token))[0].worker_id == "far"


@scenario
async def a_canary_past_its_error_budget_is_halted_and_drains_move_work(
    open_fleet: OpenFleet,
) -> None:
    def publish_canary(catalog: Catalog, publisher: KeyPair) -> None:
        catalog.publish(model_record(publisher, version="1.1"))

    async with open_fleet(extra=publish_canary) as f:
        canary = ScriptedEngine([(MODEL, "1.1")], word="c")
        canary.fail_with = Internal("canary crashed")
        await f.add_worker("stable", engine=ScriptedEngine([(MODEL, "1.0")]))
        await f.add_worker("canary", engine=canary)
        await f.discovery.wait_for(lambda s: len(s) == 2)
        control = await f.control()
        split = control_pb2.ControlMessage(id=1, rollout=control_pb2.Rollout(
            model_id=MODEL, max_error_rate=0.2, weights=[
                control_pb2.CanaryWeight(model=presence_pb2.ModelKey(model_id=MODEL, version=v),
                                         weight_bps=5000)
                for v in ("1.0", "1.1")]))
        ack = await control.Apply(split)
        assert ack.accepted and ack.message.startswith(f"rollout {MODEL}: 1.0=50%, 1.1=50%")
        again = await control.Apply(split)  # the same id again changes nothing
        assert not again.accepted and "not after 1" in again.message
        gw = await f.gateway()
        token = f.token("acme")
        outcomes: list[object] = []
        for i in range(30):
            try:
                chunks = await collect(gw, request(n=1, correlation_id=f"c-{i}"), token)
                outcomes.append(chunks[0].worker_id)
            except RpcError as exc:
                outcomes.append(exc.code)
        # The canary's requests failed (then failed fast, its breaker open) until five had
        # spent its budget; then the stable version took all the traffic.
        assert StatusCode.INTERNAL in outcomes and "canary" not in outcomes
        assert outcomes[-10:] == ["stable"] * 10
        assert 3 <= canary.started <= 5
        # A drain takes the stable worker out of placement.
        ack = await control.Apply(control_pb2.ControlMessage(
            id=2, drain=control_pb2.Drain(worker_ids=["stable"])))
        assert ack.accepted and ack.message == "draining stable"
        with pytest.raises(RpcError) as info:
            await collect(gw, request(n=1, version="1.0"), token)
        assert info.value.code == StatusCode.UNAVAILABLE and "draining" in info.value.message


@scenario
async def a_dead_letter_is_replayed_once_its_pool_recovers(open_fleet: OpenFleet) -> None:
    async with open_fleet() as f:
        engine = ScriptedEngine([(MODEL, "1.0")])
        engine.fail_with = Internal("engine crashed")
        await f.add_worker("w1", engine=engine)
        await f.discovery.wait_for(lambda s: len(s) == 1)
        gw = await f.gateway()
        with pytest.raises(RpcError) as info:
            await collect(gw, request(n=3, correlation_id="job-q"), f.token("acme"))
        assert info.value.code == StatusCode.INTERNAL
        [letter] = f.store.dead_letters()
        letter_id = letter.id
        assert letter_id is not None
        engine.fail_with = None
        orchestrator = await f.orchestrator()
        chunks = [c async for c in operator.replay(f.store, orchestrator, letter_id)]
        assert "".join(c.payload.text for c in chunks) == " w0 w1 w2" and chunks[-1].done
        await f.settled()  # outcomes are written behind the response
        job = f.store.get_job("job-q")
        assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED and job.attempts == 2
        # The replay ran the request as first dispatched (tenant, pinned seed), under a
        # new retry token recorded on the letter; it runs once unless asked again.
        first, again = engine.requests
        assert again.tenant_id == "acme" and again.params.seed == first.params.seed != 0
        [letter] = f.store.dead_letters()
        assert again.retry_token == letter.replayed_as
        assert letter.replayed_as.startswith(f"replay-{letter_id}-")
        with pytest.raises(FailedPrecondition, match="replayed already"):
            [c async for c in operator.replay(f.store, orchestrator, letter_id)]
        assert len(engine.requests) == 2
        more = [c async for c in operator.replay(f.store, orchestrator, letter_id, again=True)]
        assert len(more) == 3 and f.store.get_job("job-q").attempts == 3


@scenario
async def a_client_leaving_as_it_gets_the_last_chunk_leaves_the_job_succeeded(
    open_fleet: OpenFleet,
) -> None:
    async with open_fleet() as f:
        await f.add_worker("w1")
        await f.discovery.wait_for(lambda s: len(s) == 1)
        gw = await f.gateway()
        async with gw.Infer(request(n=3, correlation_id="job-l"),
                            metadata=f.token("acme")) as chunks:
            async for chunk in chunks:
                if chunk.done:
                    break  # and the stream is closed at once, before its end arrives
        await trio.sleep(1.0)
        await f.settled()
        job = f.store.get_job("job-l")
        assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED, jobs_pb2.JobState.Name(job.state)
        assert f.store.usage_totals("acme") == (0, 3)


@scenario
async def a_request_that_asks_gets_when_it_passed_each_hop(open_fleet: OpenFleet) -> None:
    async with open_fleet() as f:
        await f.add_worker("w1")
        await f.discovery.wait_for(lambda s: len(s) == 1)
        gw = await f.gateway()
        timed = request(n=3, correlation_id="job-t")
        timed.timing = True
        chunks = await collect(gw, timed, f.token("acme"))
        assert [c.HasField("timing") for c in chunks] == [False, False, True]  # the last only
        stamps = [(s.at, s.unix_ns) for s in chunks[-1].timing.stamps]
        assert [at for at, _ in sorted(stamps, key=lambda s: s[1])] == [
            "gateway.in", "gateway.forward", "orchestrator.in", "orchestrator.placed",
            "orchestrator.admitted",
            "orchestrator.dispatch", "worker.in", "worker.model_start", "worker.model_end",
            "worker.out", "orchestrator.worker_done", "orchestrator.out", "gateway.out"]
        plain = await collect(gw, request(n=3, correlation_id="job-u"), f.token("acme"))
        assert not any(c.HasField("timing") for c in plain)  # off unless asked


@pytest.mark.parametrize("fn", SCENARIOS, ids=[f.__name__ for f in SCENARIOS])
def test_scenario_on_the_local_network(fn: Scenario, tmp_path: Path) -> None:
    async def main() -> None:
        await fn(functools.partial(fleet, tmp_path))

    with blocking.inline():
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
