"""Orchestrators that die or stop: nothing they accepted is lost, and the cause is true.

Real service code on the in-memory network double in virtual time (see ``harness``);
``Fleet.kill_orchestrator`` stands in for SIGKILL (the orchestrator records nothing more
and its connections drop). The same faults between real processes are in
``tests/integration/test_orchestrator_failover.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from gateway.orchestrators import HEARTBEAT_S, PROBE_S
from orchestrator.service import LEASE_RENEW_S, LEASE_S
from tests.services.harness import MODEL, Fleet, ScriptedEngine, fleet
from tether import blocking, topics
from tether.errors import AlreadyExists
from tether.net import dial, peers_on
from tether.resume import LOST_ORCHESTRATOR
from tether.rpc import RpcError, StatusCode
from tether.v1 import infer_pb2, jobs_pb2, services_rpc, status_pb2

TENANT = "acme"


def run(test, tmp_path: Path) -> None:
    with blocking.inline():
        trio.run(test, tmp_path, clock=trio.testing.MockClock(autojump_threshold=0))


def request(cid: str, n: int = 8, token: str = "first") -> infer_pb2.Infer.Request:
    req = infer_pb2.Infer.Request(model_id=MODEL, correlation_id=cid, retry_token=token,
                                  tenant_id=TENANT)
    req.input.text = "hello"
    req.params.max_tokens = n
    return req


async def submit_to(f: Fleet, key: bytes, req, metadata=None, *, into=None, kill_after=0):
    """Submit straight to one orchestrator (as an operator may); the chunks it streams."""
    with trio.fail_after(30):
        peer = await dial(f.operator_net, key)
    got = [] if into is None else into
    async with services_rpc.OrchestratorStub(peer.rpc).Submit(req, metadata=metadata) as cs:
        async for c in cs:
            got.append(c)
            if kill_after and len(got) == kill_after:
                f.kill_orchestrator(key)
    return got


async def streams_cut_by_a_kill(f: Fleet, key: bytes, cids: list[str]) -> None:
    """Stream each request from ``key``, killing it once every one has two chunks."""
    errors: list[RpcError] = []
    waiting = len(cids)
    all_streaming = trio.Event()

    async def one(cid: str) -> None:
        nonlocal waiting
        with trio.fail_after(30):
            peer = await dial(f.operator_net, key)
        try:
            async with services_rpc.OrchestratorStub(peer.rpc).Submit(request(cid, 50)) as cs:
                n = 0
                async for _ in cs:
                    n += 1
                    if n == 2:
                        waiting -= 1
                        if not waiting:
                            all_streaming.set()
        except RpcError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        for cid in cids:
            nursery.start_soon(one, cid)
        with trio.fail_after(30):
            await all_streaming.wait()
        f.kill_orchestrator(key)
    assert [e.code for e in errors] == [StatusCode.UNAVAILABLE] * len(cids)


def test_a_restarted_orchestrator_fails_what_it_left_running(tmp_path: Path) -> None:
    async def main(tmp_path: Path) -> None:
        async with fleet(tmp_path) as f:
            await f.add_worker("w1", engine=ScriptedEngine([(MODEL, "1.0")], step_s=1.0),
                               slots=8)
            await f.discovery.wait_for(lambda s: len(s) == 1)
            f.store.set_quota(TENANT, limit_tokens=1000, period_ms=3_600_000)
            first = f.orchestrators[f.orchestrator_key]
            cids = [f"k-{i}" for i in range(4)]
            await streams_cut_by_a_kill(f, first.key, cids)
            # A killed orchestrator wrote nothing: its jobs look alive and hold quota.
            assert {f.store.get_job(c).state for c in cids} == {jobs_pb2.JOB_STATE_DISPATCHED}
            assert f.store.dead_letters() == []
            assert f.store.consume_quota(TENANT, 0) == 1000 - 4 * 50
            # Its restart (same key) fails them with itself as the cause, before serving.
            again = await f.add_orchestrator(first.keypair)
            for cid in cids:
                job = f.store.get_job(cid)
                assert job.state == jobs_pb2.JOB_STATE_FAILED
                assert job.error.code == StatusCode.UNAVAILABLE
                assert job.error.message.startswith(
                    f"orchestrator {first.key.hex()[:16]} stopped before the job finished")
            letters = f.store.dead_letters()
            assert sorted(d.correlation_id for d in letters) == cids
            assert {d.worker_id for d in letters} == {"w1"}
            assert f.store.consume_quota(TENANT, 0) == 1000  # given back
            # A retry with the same token gets the outcome, not a bare ALREADY_EXISTS.
            await again.discovery.wait_for(lambda s: len(s) == 1)
            with pytest.raises(RpcError) as info:
                await submit_to(f, again.key, request("k-0"))
            assert info.value.code == StatusCode.ALREADY_EXISTS
            assert "already ran: FAILED (UNAVAILABLE: orchestrator" in info.value.message
            # A new retry token runs it again.
            chunks = await submit_to(f, again.key, request("k-0", n=3, token="second"))
            assert chunks[-1].done
            await f.settled()  # outcomes are written behind the response
            assert f.store.get_job("k-0").state == jobs_pb2.JOB_STATE_SUCCEEDED

    run(main, tmp_path)


def test_a_peer_fails_the_jobs_of_an_orchestrator_whose_lease_ran_out(tmp_path: Path) -> None:
    async def main(tmp_path: Path) -> None:
        async with fleet(tmp_path, orchestrators=2) as f:
            await f.add_worker("w1", engine=ScriptedEngine([(MODEL, "1.0")], step_s=1.0),
                               slots=8)
            a, b = f.orchestrators.values()
            for o in (a, b):
                await o.discovery.wait_for(lambda s: len(s) == 1)
            await streams_cut_by_a_kill(f, a.key, ["p-1", "p-2"])
            killed_at = trio.current_time()
            while f.store.get_job("p-1").state == jobs_pb2.JOB_STATE_DISPATCHED:
                await trio.sleep(0.5)
                assert trio.current_time() - killed_at <= LEASE_S + LEASE_RENEW_S + 1
            for cid in ("p-1", "p-2"):
                job = f.store.get_job(cid)
                assert job.state == jobs_pb2.JOB_STATE_FAILED
                assert f"orchestrator {a.key.hex()[:16]} stopped" in job.error.message
                assert "lease ran out" in job.error.message
            assert len(f.store.dead_letters()) == 2
            assert f.store.job_record("p-1").owner == a.key.hex()  # b failed it, as a's

    run(main, tmp_path)


def test_a_retry_reattaches_to_a_job_whose_orchestrator_was_lost(tmp_path: Path) -> None:
    async def main(tmp_path: Path) -> None:
        async with fleet(tmp_path, orchestrators=2) as f:
            engine = ScriptedEngine([(MODEL, "1.0")], step_s=0.2)
            await f.add_worker("w1", engine=engine)
            a, b = f.orchestrators.values()
            for o in (a, b):
                await o.discovery.wait_for(lambda s: len(s) == 1)
            req = request("r-1", n=10)
            # While its owner lives, a repeat is refused (never run twice).
            async with trio.open_nursery() as nursery:
                nursery.start_soon(submit_to, f, a.key, req)
                await engine.running.wait()
                with pytest.raises(RpcError) as info:
                    await submit_to(f, b.key, req)
                assert info.value.code == StatusCode.ALREADY_EXISTS
                assert "is running" in info.value.message
            got: list = []
            with pytest.raises(RpcError):
                await submit_to(f, a.key, request("r-2", n=10), into=got, kill_after=3)
            assert len(got) == 3
            # The gateway's retry names the orchestrator it lost: b takes the job over
            # at once and runs the stored request (its pinned seed) again.
            lost = {LOST_ORCHESTRATOR: a.key.hex()}
            again = await submit_to(f, b.key, request("r-2", n=10), lost)
            assert [c.payload.text for c in again] == [f" w{i}" for i in range(10)]
            seeds = {r.params.seed for r in engine.requests if r.correlation_id == "r-2"}
            assert len(seeds) == 1 and seeds != {0}
            await f.settled()  # outcomes are written behind the response
            job = f.store.get_job("r-2")
            assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED and job.attempts == 2
            assert f.store.job_record("r-2").owner == b.key.hex()
            with pytest.raises(AlreadyExists) as outcome:  # and now the outcome
                await submit_to(f, b.key, request("r-2", n=10), lost)
            assert outcome.value.details["state"] == "JOB_STATE_SUCCEEDED"
            assert f.store.dead_letters() == []

    run(main, tmp_path)


def test_a_job_is_taken_over_when_its_owner_is_any_of_the_orchestrators_lost(
    tmp_path: Path,
) -> None:
    """A gateway that loses the owner, resubmits to another orchestrator that is dead too
    (a whole region down), then to a live one, names both: the owner is the first."""
    async def main(tmp_path: Path) -> None:
        async with fleet(tmp_path, orchestrators=3) as f:
            engine = ScriptedEngine([(MODEL, "1.0")], step_s=0.2)
            await f.add_worker("w1", engine=engine)
            a, b, c = f.orchestrators.values()
            for o in (a, b, c):
                await o.discovery.wait_for(lambda s: len(s) == 1)
            got: list = []
            with pytest.raises(RpcError):
                await submit_to(f, a.key, request("r-3", n=10), into=got, kill_after=3)
            f.kill_orchestrator(b.key)
            lost = {LOST_ORCHESTRATOR: f"{a.key.hex()},{b.key.hex()}"}
            again = await submit_to(f, c.key, request("r-3", n=10), lost)
            assert [ch.payload.text for ch in again] == [f" w{i}" for i in range(10)]
            assert f.store.job_record("r-3").owner == c.key.hex()
            await f.settled()
            assert f.store.get_job("r-3").state == jobs_pb2.JOB_STATE_SUCCEEDED

    run(main, tmp_path)


def test_a_drain_finishes_what_it_can_and_names_itself_for_the_rest(tmp_path: Path) -> None:
    async def main(tmp_path: Path) -> None:
        async with fleet(tmp_path) as f:
            await f.add_worker("w1", engine=ScriptedEngine([(MODEL, "1.0")], step_s=1.0),
                               slots=8)
            await f.discovery.wait_for(lambda s: len(s) == 1)
            o = f.orchestrators[f.orchestrator_key]
            outcomes: dict[str, object] = {}

            async def one(cid: str, n: int) -> None:
                try:
                    outcomes[cid] = len(await submit_to(f, o.key, request(cid, n=n)))
                except RpcError as exc:
                    outcomes[cid] = exc

            async with trio.open_nursery() as nursery:
                nursery.start_soon(one, "short", 3)
                nursery.start_soon(one, "long", 100)
                await trio.sleep(0.5)
                drained_at = trio.current_time()
                nursery.start_soon(o.service.drain, 10.0)
                await trio.sleep(0.1)
                with pytest.raises(RpcError) as info:  # no new work, at once
                    await submit_to(f, o.key, request("new"))
                assert info.value.code == StatusCode.UNAVAILABLE
                assert "is draining" in info.value.message
            assert trio.current_time() - drained_at <= 10.0 + 1
            assert outcomes["short"] == 3
            err = outcomes["long"]
            assert isinstance(err, RpcError) and err.code == StatusCode.UNAVAILABLE
            cause = f"orchestrator {o.key.hex()[:16]} stopped before the job finished"
            assert err.message.startswith(cause) and "w1" not in err.message
            await f.settled()  # outcomes are written behind the response
            job = f.store.get_job("long")
            assert job.state == jobs_pb2.JOB_STATE_FAILED and job.error.message.startswith(cause)
            [letter] = f.store.dead_letters()
            assert letter.correlation_id == "long" and letter.error_message.startswith(cause)
            assert f.store.get_job("short").state == jobs_pb2.JOB_STATE_SUCCEEDED
            assert not f.store.owner_alive(o.key.hex())

    run(main, tmp_path)


async def two_orchestrators_and_a_gateway(f: Fleet) -> tuple[ScriptedEngine, list[bytes]]:
    engine = ScriptedEngine([(MODEL, "1.0")], step_s=0.2)
    await f.add_worker("w1", engine=engine, slots=8)
    for o in f.orchestrators.values():
        await o.discovery.wait_for(lambda s: len(s) == 1)
    with trio.fail_after(30):
        while len(peers_on(f.gateway_net, topics.control(f.region))) < 2:
            await f.gateway_net.refresh(topics.control(f.region))
    return engine, list(f.orchestrators)


def owner_of(f: Fleet, cid: str) -> bytes:
    return bytes.fromhex(f.store.job_record(cid).owner)


def test_the_gateway_spreads_requests_over_its_orchestrators(tmp_path: Path) -> None:
    async def main(tmp_path: Path) -> None:
        async with fleet(tmp_path, orchestrators=2) as f:
            _, keys = await two_orchestrators_and_a_gateway(f)
            gw = await f.gateway()
            token = f.token(TENANT)
            for i in range(4):
                req = request(f"s-{i}", n=2)
                async with gw.Infer(req, metadata=token) as cs:
                    assert len([c async for c in cs]) == 2
            owners = [owner_of(f, f"s-{i}") for i in range(4)]
            assert sorted(owners) == sorted(keys * 2)

    run(main, tmp_path)


async def stream_through_gateway(f: Fleet, req, got: list, on_chunk) -> None:
    gw = await f.gateway()
    with trio.fail_after(60):
        async with gw.Infer(req, metadata=f.token(TENANT)) as cs:
            async for c in cs:
                got.append(c)
                on_chunk(len(got))


@pytest.mark.parametrize("how", ["killed", "frozen"])
def test_a_stream_whose_orchestrator_dies_continues_through_another(
    tmp_path: Path, how: str
) -> None:
    """Killed: its connections close. Frozen: they stay open but nothing arrives (SIGKILL
    over UDP); the gateway's probes find it out within HEARTBEAT_S + PROBE_S."""

    async def main(tmp_path: Path) -> None:
        async with fleet(tmp_path, orchestrators=2) as f:
            engine, _ = await two_orchestrators_and_a_gateway(f)
            got: list[infer_pb2.Infer.Chunk] = []
            died_at: list[float] = []

            def kill_after_three(n: int) -> None:
                if n == 3:
                    died_at.append(trio.current_time())
                    dead = owner_of(f, "d-1")
                    if how == "killed":
                        f.kill_orchestrator(dead)
                    else:
                        f.freeze_orchestrator(dead)

            await stream_through_gateway(f, request("d-1", n=12), got, kill_after_three)
            # Every chunk exactly once, in order; the replay ran the gateway's pinned seed.
            assert [c.payload.text for c in got] == [f" w{i}" for i in range(12)]
            assert got[-1].done and got[-1].usage.output_tokens == 12
            seeds = {r.params.seed for r in engine.requests}
            assert len(engine.requests) == 2 and len(seeds) == 1 and seeds != {0}
            [alive] = f.orchestrators
            await f.settled()  # outcomes are written behind the response
            job = f.store.get_job("d-1")
            assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED and job.attempts == 2
            assert owner_of(f, "d-1") == alive
            assert f.store.dead_letters() == []
            # The pause the client saw: at once when the connection closed, else the
            # probe's bound; the whole replay of 12 chunks is 2.4 s.
            pause = {"killed": 0.0, "frozen": HEARTBEAT_S + PROBE_S}[how]
            assert trio.current_time() - died_at[0] <= pause + 12 * 0.2 + 1
            # A new request goes to the live orchestrator at once.
            asked_at = trio.current_time()
            await stream_through_gateway(f, request("d-2", n=1), [], lambda n: None)
            assert trio.current_time() - asked_at <= 0.2 + 0.5
            assert owner_of(f, "d-2") == alive

    run(main, tmp_path)


def test_a_draining_orchestrator_sends_new_requests_elsewhere_at_once(tmp_path: Path) -> None:
    async def main(tmp_path: Path) -> None:
        async with fleet(tmp_path, orchestrators=2) as f:
            await two_orchestrators_and_a_gateway(f)
            a, b = f.orchestrators.values()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(a.service.drain, 30.0)
                await trio.sleep(0.1)
                for i in range(3):
                    asked_at = trio.current_time()
                    await stream_through_gateway(f, request(f"n-{i}", n=1), [], lambda n: None)
                    assert trio.current_time() - asked_at <= 0.2 + 0.5
                    assert owner_of(f, f"n-{i}") == b.key

    run(main, tmp_path)


def test_new_requests_stop_going_to_an_orchestrator_that_stopped_answering(
    tmp_path: Path,
) -> None:
    async def main(tmp_path: Path) -> None:
        async with fleet(tmp_path, orchestrators=2) as f:
            await two_orchestrators_and_a_gateway(f)
            a, b = f.orchestrators.values()
            await trio.sleep(5 * HEARTBEAT_S)  # idle, and answering probes: kept
            assert len(peers_on(f.gateway_net, topics.control(f.region))) == 2
            f.freeze_orchestrator(a.key)  # no request in flight to notice it
            await trio.sleep(HEARTBEAT_S + PROBE_S + 0.1)
            for i in range(4):
                asked_at = trio.current_time()
                await stream_through_gateway(f, request(f"f-{i}", n=1), [], lambda n: None)
                assert trio.current_time() - asked_at <= 0.2 + 0.5
                assert owner_of(f, f"f-{i}") == b.key

    run(main, tmp_path)


def test_through_the_gateway_a_drain_that_runs_out_blames_the_orchestrator(
    tmp_path: Path,
) -> None:
    async def main(tmp_path: Path) -> None:
        async with fleet(tmp_path, orchestrators=2) as f:
            await two_orchestrators_and_a_gateway(f)
            got: list = []
            drained: list[bytes] = []

            def drain_after_three(n: int) -> None:
                if n == 3:
                    key = owner_of(f, "t-1")
                    drained.append(key)
                    f.nursery.start_soon(f.orchestrators[key].service.drain, 1.0)

            with pytest.raises(RpcError) as info:
                await stream_through_gateway(f, request("t-1", n=50), got, drain_after_three)
            cause = f"orchestrator {drained[0].hex()[:16]} stopped before the job finished"
            assert info.value.code == StatusCode.UNAVAILABLE
            assert info.value.message.startswith(cause) and "worker" not in info.value.message
            [letter] = f.store.dead_letters()
            assert letter.error_message.startswith(cause)

    run(main, tmp_path)


def test_a_new_request_passes_over_an_orchestrator_whose_streams_went_quiet(
    tmp_path: Path,
) -> None:
    async def main(tmp_path: Path) -> None:
        async with fleet(tmp_path, orchestrators=2) as f:
            await two_orchestrators_and_a_gateway(f)
            # Three long streams: two on one orchestrator, one on the other.
            placed: dict[bytes, int] = {}
            async with trio.open_nursery() as nursery:
                for i in range(3):
                    got: list = []
                    ready = trio.Event()

                    def first_chunk(n: int, ready: trio.Event = ready) -> None:
                        if n == 1:
                            ready.set()

                    nursery.start_soon(stream_through_gateway, f, request(f"q-{i}", n=40),
                                       got, first_chunk)
                    await ready.wait()
                    owner = owner_of(f, f"q-{i}")
                    placed[owner] = placed.get(owner, 0) + 1
                await trio.sleep(0.5)
                busiest = max(placed, key=lambda k: placed[k])
                quiet = min(placed, key=lambda k: placed[k])
                assert sorted(placed.values()) == [1, 2]
                # The less loaded one, which would take the next request, stops answering.
                f.freeze_orchestrator(quiet)
                await trio.sleep(1.1)  # its stream is quiet; no probe has failed yet
                asked_at = trio.current_time()
                await stream_through_gateway(f, request("q-new", n=1), [], lambda n: None)
                assert trio.current_time() - asked_at <= 0.2 + 0.5
                assert owner_of(f, "q-new") == busiest

    run(main, tmp_path)


def test_a_drain_cut_short_still_names_the_orchestrator(tmp_path: Path) -> None:
    async def main(tmp_path: Path) -> None:
        async with fleet(tmp_path) as f:
            await f.add_worker("w1", engine=ScriptedEngine([(MODEL, "1.0")], step_s=1.0))
            await f.discovery.wait_for(lambda s: len(s) == 1)
            o = f.orchestrators[f.orchestrator_key]
            async def cut_off() -> None:
                with pytest.raises(RpcError):
                    await submit_to(f, o.key, request("cut", n=100))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(cut_off)
                await trio.sleep(2.5)
                with trio.move_on_after(1.0):  # a second signal cuts the drain short
                    await o.service.drain(30.0)
                o.scope.cancel()  # and the process stops
            job = f.store.get_job("cut")
            assert job.state == jobs_pb2.JOB_STATE_FAILED
            assert job.error.message == (
                f"orchestrator {o.key.hex()[:16]} stopped before the job finished "
                "(it was stopped before its drain ended)")
            assert len(f.store.dead_letters()) == 1

    run(main, tmp_path)


def test_a_job_cancelled_as_a_gateway_dropped_its_orchestrator_is_taken_over(
    tmp_path: Path,
) -> None:
    """A gateway that drops an orchestrator which stopped answering (but lives on) makes
    it see its caller's connection close, and it marks the job CANCELLED: the gateway's
    resubmission naming it still takes the job over. Without that name it is an outcome."""

    async def main(tmp_path: Path) -> None:
        async with fleet(tmp_path, orchestrators=2) as f:
            await f.add_worker("w1")
            a, b = f.orchestrators.values()
            await b.discovery.wait_for(lambda s: len(s) == 1)
            req = request("c-1", n=3)
            f.store.admit_job("c-1", "first", TENANT, model_id=MODEL, version="1.0",
                              worker_id="w1", quota_tokens=3, owner=a.key.hex(), request=req)
            f.store.update_job("c-1", jobs_pb2.JOB_STATE_CANCELLED, owner=a.key.hex())
            with pytest.raises(AlreadyExists) as ran:  # a typed outcome, not its text
                await submit_to(f, b.key, req)
            assert ran.value.details["state"] == "JOB_STATE_CANCELLED"
            chunks = await submit_to(f, b.key, req, {LOST_ORCHESTRATOR: a.key.hex()})
            assert chunks[-1].done
            await f.settled()  # outcomes are written behind the response
            job = f.store.get_job("c-1")
            assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED and job.attempts == 2

    run(main, tmp_path)


def test_a_lost_orchestrator_that_failed_the_job_first_passes_that_failure_on(
    tmp_path: Path,
) -> None:
    """A drain that ran out fails its jobs, then the process exits, and its last
    trailers may be lost with the connection: the gateway's resubmission then finds the
    job FAILED and gives the client that failure, not ALREADY_EXISTS."""

    async def main(tmp_path: Path) -> None:
        async with fleet(tmp_path, orchestrators=2) as f:
            await two_orchestrators_and_a_gateway(f)
            cause = status_pb2.Error(code=status_pb2.STATUS_CODE_UNAVAILABLE,
                                     message="orchestrator x stopped before the job finished")

            def fail_then_die(n: int) -> None:
                if n == 3:
                    owner = owner_of(f, "g-1")
                    assert f.store.fail_job("g-1", cause, owner=owner.hex())
                    f.kill_orchestrator(owner)

            with pytest.raises(RpcError) as info:
                await stream_through_gateway(f, request("g-1", n=20), [], fail_then_die)
            assert info.value.code == StatusCode.UNAVAILABLE
            assert info.value.message == cause.message

    run(main, tmp_path)
