"""The gateway's gRPC edge, called by grpcio's own client from another thread: the same
answers, statuses and cancellation as over Hyperswarm.

gRPC runs its own threads, so these tests use the real clock (the scripted engine's
steps are 5 ms); the rest of the fleet is the in-memory double.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import grpc
import pytest
import trio

from gateway.grpc_edge import GrpcEdge
from tests.services.harness import MODEL, ScriptedEngine, fleet, wall_ms
from tether import blocking
from tether.health import Readiness
from tether.v1 import infer_pb2, services_pb2, services_pb2_grpc


def request(n: int, model: str = MODEL) -> infer_pb2.Infer.Request:
    req = infer_pb2.Infer.Request(model_id=model)
    req.input.text = "hello"
    req.params.max_tokens = n
    return req


def client_calls(port: int, token: str) -> dict[str, Any]:
    """What a plain gRPC client sees (runs in a thread)."""
    out: dict[str, Any] = {}
    good = [("authorization", f"Bearer {token}")]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = services_pb2_grpc.GatewayStub(channel)
        out["chunks"] = list(stub.Infer(request(4), metadata=good, timeout=30))
        out["models"] = stub.ListModels(services_pb2.ListModelsRequest(), metadata=good,
                                        timeout=30)
        for name, req, metadata in (
            ("bad_token", request(2), [("authorization", "Bearer tt_nope")]),
            ("no_token", request(2), []),
            ("bad_model", request(2, "Not A Name"), good),
            ("unknown_model", request(2, "no-such-model"), good),
        ):
            try:
                list(stub.Infer(req, metadata=metadata, timeout=30))
            except grpc.RpcError as exc:
                out[name] = (exc.code(), exc.details(), dict(exc.trailing_metadata() or ()))
        # A client that leaves mid-stream.
        call = stub.Infer(request(1000), metadata=good, timeout=60)
        out["first"] = next(call)
        call.cancel()
        try:
            next(call)
        except grpc.RpcError as exc:
            out["cancelled"] = exc.code()
    return out


def test_grpc_clients_get_the_gateway_s_answers_and_errors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tether.gateway.grpc.access")
    tokens: list[str] = []

    async def main() -> None:
        async with fleet(tmp_path, clock_ms=wall_ms) as f:
            engine = ScriptedEngine([(MODEL, "1.0")], step_s=0.005)
            worker = await f.add_worker("w1", engine=engine)
            await f.discovery.wait_for(lambda s: len(s) == 1)
            token = f.store.issue_token("acme")
            tokens.append(token)
            async with trio.open_nursery() as nursery:
                port = await nursery.start(GrpcEdge(f.gateway_service, "127.0.0.1", 0).run)
                got = await trio.to_thread.run_sync(client_calls, port, token)
                # The client that left stopped the work upstream, down to the worker.
                with trio.fail_after(10):
                    await worker._idle.wait()
                nursery.cancel_scope.cancel()
        chunks = got["chunks"]
        assert "".join(c.payload.text for c in chunks) == " w0 w1 w2 w3"
        assert chunks[-1].done and chunks[-1].usage.output_tokens == 4
        assert [m.model.model_id for m in got["models"].models] == [MODEL]
        assert got["bad_token"][0] == grpc.StatusCode.UNAUTHENTICATED
        assert got["no_token"][:2] == (
            grpc.StatusCode.UNAUTHENTICATED,
            "missing tenant token: send metadata 'authorization: Bearer <token>'",
        )
        assert got["bad_model"][0] == grpc.StatusCode.INVALID_ARGUMENT
        code, message, trailers = got["unknown_model"]
        assert code == grpc.StatusCode.NOT_FOUND and "no-such-model" in message
        assert any(k.startswith("tether-detail-") for k in trailers), trailers
        assert got["first"].payload.text == " w0"
        assert got["cancelled"] == grpc.StatusCode.CANCELLED
        assert engine.started == 2  # the refused requests never reached the worker
        assert engine.steps < 4 + 900  # the one left behind stopped short of its 1000

    with blocking.inline():
        trio.run(main)
    # One access line per call, with its status; never the token.
    access = [r for r in caplog.records if r.name == "tether.gateway.grpc.access"]
    statuses = sorted(getattr(r, "status", "") for r in access)
    assert statuses == sorted(["OK", "OK", "UNAUTHENTICATED", "UNAUTHENTICATED",
                               "INVALID_ARGUMENT", "NOT_FOUND", "CANCELLED"]), statuses
    assert {getattr(r, "method", "") for r in access} == {
        "/tether.v1.Gateway/Infer", "/tether.v1.Gateway/ListModels"}
    assert all(getattr(r, "duration_ms", -1) >= 0 for r in access)
    assert tokens[0] not in caplog.text and "tt_nope" not in caplog.text


class _Context:
    """Test double of grpc.aio's servicer context: what ``GrpcEdge.call`` asks of it."""

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def time_remaining(self) -> None:
        return None

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"


def test_a_slow_grpc_reader_holds_a_bounded_number_of_chunks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The edge's hand-over queue is bounded: while the asyncio side does not take chunks
    (grpcio's flow control holds it back from a slow client), the trio side waits
    (backpressure upstream) instead of queueing the whole answer; nothing is lost."""
    import asyncio

    from gateway import grpc_edge

    monkeypatch.setattr(grpc_edge, "QUEUED_CHUNKS", 4)
    produced: list[int] = []
    got: list[int] = []
    behind: list[int] = []

    async def start(service: object, ctx: object):
        for i in range(50):
            produced.append(i)
            yield i

    async def slow_reader(edge: GrpcEdge) -> None:
        async for item in edge.call(_Context(), start, streaming=True):
            got.append(item)
            if len(got) == 1:
                await asyncio.sleep(0.3)  # the client is busy; the answer keeps coming
                behind.append(len(produced) - len(got))

    async def main() -> GrpcEdge:
        edge = GrpcEdge(None, "127.0.0.1", 0, readiness=Readiness())  # type: ignore[arg-type]
        async with trio.open_nursery() as nursery:
            edge._token, edge._nursery = trio.lowlevel.current_trio_token(), nursery
            await trio.to_thread.run_sync(asyncio.run, slow_reader(edge))
        return edge

    edge = trio.run(main)
    assert got == list(range(50))
    assert behind[0] <= 4 + 1, behind  # the producer waited for the reader
    assert 0 < edge.peak_queued <= 4 + 1
