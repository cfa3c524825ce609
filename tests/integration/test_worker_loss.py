"""A worker process killed for real (SIGKILL) on real Hyperswarm: the orchestrator treats
the lost connection as a lost worker at once. A stream it was serving resumes on another
worker with every chunk exactly once and no long pause, and a request placed right after
an idle worker died does not wait for the transport's retransmission timeouts."""

from __future__ import annotations

import math
import signal
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
import trio

from p2p_transport.cenc import SocketAddress
from tests.integration.processes import service_process
from tests.integration.testnet import node_testnet
from tests.services.harness import Fleet, fleet, swarm_networks, wall_ms
from tests.services.test_request_path import collect, request
from tether.keys import KeyPair
from tether.v1 import jobs_pb2

pytestmark = [pytest.mark.interop, pytest.mark.slow]
#: Longest acceptable pause when a worker dies (the transport's own timeouts took 11 s).
PROMPT_S = 3.0


def worker_process(
    bootstrap: list[SocketAddress], f: Fleet, worker_id: str, *, step_s: float, tmp_path: Path
) -> AbstractAsyncContextManager[trio.Process]:
    """A worker in its own process (see ``worker_process.py``), under a key the fleet's
    store admits (orchestrators place work only on admitted workers)."""
    key_file = tmp_path / f"{worker_id}.key"
    f.store.admit_worker(KeyPair.load_or_generate(key_file).public_key, worker_id)
    return service_process(
        "tests.integration.worker_process", bootstrap, "--worker-id", worker_id,
        "--orchestrator-key", f.orchestrator_key.hex(), "--step-s", str(step_s),
        "--key-file", str(key_file),
    )


def test_a_worker_killed_mid_stream_is_resumed_at_once(tmp_path: Path) -> None:
    async def main() -> None:
        with trio.fail_after(120):
            async with (
                node_testnet(3) as bootstrap,
                fleet(tmp_path, networks=swarm_networks(bootstrap), clock_ms=wall_ms) as f,
                worker_process(bootstrap, f, "w1", step_s=0.05, tmp_path=tmp_path) as w1,
                worker_process(bootstrap, f, "w2", step_s=0.05, tmp_path=tmp_path) as w2,
            ):
                procs = {"w1": w1, "w2": w2}
                await f.discovery.wait_for(lambda s: len(s) == 2)
                gw = await f.gateway()
                seqs: list[int] = []
                killed_at = math.inf
                pause = 0.0
                async with gw.Infer(
                    request(n=60, correlation_id="job-kill"), metadata=f.token("acme")
                ) as chunks:
                    async for c in chunks:
                        now = trio.current_time()
                        if now > killed_at and not pause:
                            pause = now - killed_at
                        seqs.append(c.seq)
                        if len(seqs) == 10:
                            procs[c.worker_id].send_signal(signal.SIGKILL)
                            killed_at = trio.current_time()
                            lost = c.worker_id
                assert seqs == list(range(60))
                await f.settled()  # the outcome is written behind the response
                assert f.store.get_job("job-kill").state == jobs_pb2.JOB_STATE_SUCCEEDED
                assert [e.worker_id for e in f.discovery.snapshot()] != [lost]
                print(f"pause after the kill: {pause:.2f} s")
                assert pause < PROMPT_S

    trio.run(main)


def test_a_request_right_after_an_idle_worker_died_does_not_wait(tmp_path: Path) -> None:
    async def main() -> None:
        with trio.fail_after(120):
            async with (
                node_testnet(3) as bootstrap,
                fleet(tmp_path, networks=swarm_networks(bootstrap), clock_ms=wall_ms) as f,
                worker_process(bootstrap, f, "w1", step_s=0.01, tmp_path=tmp_path) as w1,
                worker_process(bootstrap, f, "w2", step_s=0.01, tmp_path=tmp_path) as w2,
            ):
                procs = {"w1": w1, "w2": w2}
                await f.discovery.wait_for(lambda s: len(s) == 2)
                gw = await f.gateway()
                first = await collect(gw, request(n=5, correlation_id="warm-up"), f.token("acme"))
                # Kill the worker that served (the scheduler's favourite), idle now.
                victim = first[0].worker_id
                procs[victim].send_signal(signal.SIGKILL)
                await trio.sleep(0.05)
                durations = []
                for n in range(3):
                    started = trio.current_time()
                    chunks = await collect(
                        gw, request(n=5, correlation_id=f"after-{n}"), f.token("acme")
                    )
                    durations.append(trio.current_time() - started)
                    assert chunks[-1].done and {c.worker_id for c in chunks} != {victim}
                print("requests after the kill took", [f"{d:.2f}" for d in durations])
                assert max(durations) < PROMPT_S
                # The lost worker also left placement at once.
                assert victim not in {e.worker_id for e in f.discovery.snapshot()}

    trio.run(main)

