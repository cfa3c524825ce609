"""A finished job's outcome is written behind its response, and is never lost on a crash:
between real processes (``bench/request_overhead.py``'s services: a loopback DHT, the
registry, orchestrator, gateway and a CPU worker, SQLite store), the orchestrator is
killed (SIGKILL) the moment its last response arrives, before that job's outcome was
flushed; the store then shows the job running under the dead orchestrator, and the
orchestrator's restart fails it naming itself. Every admitted job has an outcome."""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path

import pytest
import trio

from tether.client import connect_gateway
from tether.metadata.store import MetadataStore, sqlite_url
from tether.rpc import RpcError, StatusCode
from tether.v1 import jobs_pb2

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "request_overhead_bench", ROOT / "bench" / "request_overhead.py"
)
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench  # dataclasses look their module up there
_spec.loader.exec_module(bench)

REQUESTS = 5


async def scenario(data_dir: Path) -> dict[str, object]:
    url = sqlite_url(data_dir / "metadata.db")
    # A long write-behind: each finished job's outcome waits for the next admission.
    async with bench.services(data_dir, url, orchestrator_args=("--write-behind-s", "30")) as net:
        cids = []
        async with connect_gateway(net.bootstrap, net.token, gateway_key=net.gateway_key) as gw:
            with trio.fail_after(120):  # until the orchestrator has met the worker
                while True:
                    try:
                        async for _ in gw.infer(bench._request(-1)):
                            pass
                        break
                    except RpcError as exc:
                        if exc.code != StatusCode.UNAVAILABLE:
                            raise
                        await trio.sleep(0.5)
            for i in range(REQUESTS):
                request = bench._request(i)
                cids.append(request.correlation_id)
                try:
                    async with gw.stub.Infer(request, metadata=gw.metadata) as chunks:
                        async for chunk in chunks:
                            if chunk.done and i == REQUESTS - 1:
                                net.procs["orchestrator"].kill()  # SIGKILL, at once
                except RpcError:
                    assert i == REQUESTS - 1  # the stream of the last one was cut
            await net.procs["orchestrator"].wait()
            store = MetadataStore(url)
            try:
                killed = {cid: store.get_job(cid).state for cid in cids}
                usage_killed = store.usage_totals(bench.TENANT)
                await net.start("orchestrator")  # it fails what it left before it is ready
                after = {cid: store.get_job(cid) for cid in cids}
                usage_after = store.usage_totals(bench.TENANT)
                letters = store.dead_letters()
            finally:
                store.close()
    return {"cids": cids, "killed": killed, "after": after, "usage_killed": usage_killed,
            "usage_after": usage_after, "letters": letters}


def test_a_crash_before_the_write_behind_flush_leaves_every_job_with_an_outcome() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        f = trio.run(scenario, Path(tmp))
    cids, killed, after = f["cids"], f["killed"], f["after"]
    assert isinstance(cids, list) and isinstance(killed, dict) and isinstance(after, dict)
    last = cids[-1]
    # Each finished job's outcome rode with the next admission; the last one's was still
    # waiting when the orchestrator was killed: its job runs on under a dead owner.
    assert [killed[c] for c in cids[:-1]] == [jobs_pb2.JOB_STATE_SUCCEEDED] * (REQUESTS - 1)
    assert killed[last] == jobs_pb2.JOB_STATE_DISPATCHED
    # One token each: the first request's (which waited for the worker) and all but the
    # last one's; the last one is not charged.
    assert f["usage_killed"][1] == REQUESTS  # type: ignore[index]
    # The restart failed it, naming the orchestrator: no job is left without an outcome.
    assert [after[c].state for c in cids[:-1]] == [jobs_pb2.JOB_STATE_SUCCEEDED] * (REQUESTS - 1)
    job = after[last]
    assert job.state == jobs_pb2.JOB_STATE_FAILED
    assert job.error.code == StatusCode.UNAVAILABLE
    assert "stopped before the job finished (found running when it started again)" in \
        job.error.message
    assert [letter.correlation_id for letter in f["letters"]] == [last]  # type: ignore[attr-defined]
    assert f["usage_after"] == f["usage_killed"]
