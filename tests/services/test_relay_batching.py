"""Chunks relayed in batches through the real gateway and orchestrator.

When the client reads slowly, chunks wait at each hop (within its flow-control
window); the orchestrator and the gateway then forward what is waiting in one frame
(``tether.resume.ChunkBatch``). These scenarios make chunks wait, and check that
batches formed and that ordering, resumption after a lost worker and cancellation
hold as for single chunks. In-memory network, virtual time (``tests.services.harness``);
not request-path scenarios, which also run on real Hyperswarm, where how many chunks
wait depends on timing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from tests.services.harness import MODEL, Fleet, ScriptedEngine, fleet
from tether import blocking
from tether.rpc.connection import RpcConnection
from tether.v1 import infer_pb2, jobs_pb2

SUBMIT = "/tether.v1.Orchestrator/Submit"
GATEWAY_INFER = "/tether.v1.Gateway/Infer"


@pytest.fixture
def batch_sizes(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[int]]:
    """How many responses each streamed send carried, by method."""
    sizes: dict[str, list[int]] = {SUBMIT: [], GATEWAY_INFER: []}
    send = RpcConnection._send_responses

    async def recording(self: RpcConnection, scall: object, payloads: list[bytes]) -> None:
        method = scall.open.method  # type: ignore[attr-defined]
        if method in sizes:
            sizes[method].append(len(payloads))
        await send(self, scall, payloads)  # type: ignore[arg-type]

    monkeypatch.setattr(RpcConnection, "_send_responses", recording)
    return sizes


def run(tmp_path: Path, scenario: Callable[[Fleet], Awaitable[None]]) -> None:
    async def main() -> None:
        async with fleet(tmp_path) as f:
            await scenario(f)

    with blocking.inline():
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def request(n: int, correlation_id: str) -> infer_pb2.Infer.Request:
    req = infer_pb2.Infer.Request(model_id=MODEL, correlation_id=correlation_id)
    req.input.text = "hello"
    req.params.max_tokens = n
    return req


def test_waiting_chunks_are_batched_in_order_and_resume_after_a_lost_worker(
    tmp_path: Path, batch_sizes: dict[str, list[int]]
) -> None:
    n = 200

    async def scenario(f: Fleet) -> None:
        for worker_id in ("w1", "w2"):
            await f.add_worker(worker_id, engine=ScriptedEngine([(MODEL, "1.0")], step_s=0.01))
        await f.discovery.wait_for(lambda s: len(s) == 2)
        gw = await f.gateway()
        got: list[infer_pb2.Infer.Chunk] = []
        with trio.fail_after(120):
            async with gw.Infer(request(n, "job-b"), metadata=f.token("acme")) as chunks:
                async for c in chunks:
                    got.append(c)
                    if len(got) == 3:
                        # The client stalls: chunks pile up at every hop, up to its
                        # window, and go on in batches once it reads again ...
                        await trio.sleep(30)
                    if len(got) == 120:
                        f.kill_worker(c.worker_id)  # ... until the worker is lost
        assert "".join(c.payload.text for c in got) == "".join(f" w{i}" for i in range(n))
        assert [c.seq for c in got] == list(range(n))
        lost, other = got[0].worker_id, got[-1].worker_id
        assert other != lost and got[-1].done and got[-1].usage.output_tokens == n
        await f.settled()  # outcomes are written behind the response
        job = f.store.get_job("job-b")
        assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED and job.attempts == 2

    run(tmp_path, scenario)
    # Both relays forwarded what had waited as batches, and every chunk once.
    assert max(batch_sizes[SUBMIT]) > 1 and max(batch_sizes[GATEWAY_INFER]) > 1
    assert sum(batch_sizes[GATEWAY_INFER]) == n


def test_a_client_leaving_mid_batch_cancels_the_job_on_every_hop(
    tmp_path: Path, batch_sizes: dict[str, list[int]]
) -> None:
    async def scenario(f: Fleet) -> None:
        engine = ScriptedEngine([(MODEL, "1.0")], step_s=0.01)
        await f.add_worker("w1", engine=engine)
        await f.discovery.wait_for(lambda s: len(s) == 1)
        gw = await f.gateway()
        with trio.fail_after(120):
            async with gw.Infer(request(500, "job-c"), metadata=f.token("acme")) as chunks:
                await chunks.__anext__()
                await trio.sleep(30)  # batches wait at every hop
                async for c in chunks:
                    if c.seq == 40:
                        break  # leaves in the middle of a batch
            await engine.idle.wait()  # the worker stopped generating
        await trio.sleep(1)  # the orchestrator records the cancellation
        assert f.store.get_job("job-c").state == jobs_pb2.JOB_STATE_CANCELLED
        assert engine.steps < 500

    run(tmp_path, scenario)
    assert max(batch_sizes[GATEWAY_INFER]) > 1
