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

from orchestrator.service import LEASE_RENEW_S, LEASE_S, LOST_ORCHESTRATOR
from tests.services.harness import MODEL, Fleet, ScriptedEngine, fleet
from tether import blocking
from tether.net import dial
from tether.rpc import RpcError, StatusCode
from tether.v1 import infer_pb2, jobs_pb2, services_rpc

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
            job = f.store.get_job("r-2")
            assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED and job.attempts == 2
            assert f.store.job_record("r-2").owner == b.key.hex()
            with pytest.raises(RpcError) as info:  # and now the outcome
                await submit_to(f, b.key, request("r-2", n=10), lost)
            assert "already ran: SUCCEEDED" in info.value.message
            assert f.store.dead_letters() == []

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
            job = f.store.get_job("long")
            assert job.state == jobs_pb2.JOB_STATE_FAILED and job.error.message.startswith(cause)
            [letter] = f.store.dead_letters()
            assert letter.correlation_id == "long" and letter.error_message.startswith(cause)
            assert f.store.get_job("short").state == jobs_pb2.JOB_STATE_SUCCEEDED
            assert not f.store.owner_alive(o.key.hex())

    run(main, tmp_path)
