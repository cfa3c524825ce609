"""Probes: ``grpc.health.v1.Health`` and reflection on the gRPC edge (driven by grpcio's
stock client stubs), ``/healthz`` and ``/readyz`` on the HTTP edge and beside the
metrics port, the gateway's readiness checks, and a draining worker turning not-ready.
"""

from __future__ import annotations

import json
import os
import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
import trio
import trio.testing
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gateway.grpc_edge import GrpcEdge
from gateway.http import HttpApi
from gateway.ratelimit import TokenBuckets
from gateway.service import GatewayService
from tests.services.harness import Fleet, fleet, wall_ms
from tests.services.test_http_edge import exchange, raw_request
from tether import blocking, health
from tether.health import Readiness

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def grpc_probe(port: int, readiness: Readiness) -> dict[str, Any]:
    """What grpcio's stock health and reflection clients see (runs in a thread); halfway
    through, the gateway drains."""
    out: dict[str, Any] = {}
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ("", "tether.v1.Gateway"):
            out[name] = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=10).status
        try:
            stub.Check(health_pb2.HealthCheckRequest(service="no.Such"), timeout=10)
        except grpc.RpcError as exc:
            out["unknown"] = exc.code()
        watch = stub.Watch(health_pb2.HealthCheckRequest(service="tether.v1.Gateway"),
                           timeout=30)
        out["watched"] = [next(watch).status]
        trio.from_thread.run_sync(readiness.drain)
        out["watched"].append(next(watch).status)
        watch.cancel()
        out["after"] = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status

        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        asks = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="tether.v1.Gateway"),
        ]
        listed, described = list(reflect.ServerReflectionInfo(iter(asks), timeout=10))
        out["services"] = sorted(s.name for s in listed.list_services_response.service)
        out["files"] = len(described.file_descriptor_response.file_descriptor_proto)
    return out


def test_grpc_health_follows_readiness_and_reflection_lists_the_gateway(tmp_path: Path) -> None:
    async def main() -> None:
        async with fleet(tmp_path, clock_ms=wall_ms) as f:
            readiness = Readiness()
            edge = GrpcEdge(f.gateway_service, "127.0.0.1", 0, readiness=readiness)
            async with trio.open_nursery() as nursery:
                port = await nursery.start(edge.run)
                got = await trio.to_thread.run_sync(grpc_probe, port, readiness)
                nursery.cancel_scope.cancel()
        assert got[""] == SERVING and got["tether.v1.Gateway"] == SERVING
        assert got["unknown"] == grpc.StatusCode.NOT_FOUND
        assert got["watched"] == [SERVING, NOT_SERVING]
        assert got["after"] == NOT_SERVING
        assert {"tether.v1.Gateway", "grpc.health.v1.Health",
                "grpc.reflection.v1alpha.ServerReflection"} <= set(got["services"])
        assert got["files"] >= 1  # the descriptor of services.proto (and its imports)

    with blocking.inline():
        trio.run(main)


def run(test: Any) -> None:
    with blocking.inline():
        trio.run(test, clock=trio.testing.MockClock(autojump_threshold=0))


class UnreadableStore:
    """A test double for the Metadata Store whose reads fail (a lost database)."""

    def verify_token(self, token: str) -> str:
        raise OSError("database is gone")


def test_gateway_readiness_checks_and_readyz(tmp_path: Path) -> None:
    async def main() -> None:
        async with fleet(tmp_path) as f:
            service = f.gateway_service
            api = HttpApi(service)
            (before,) = await exchange(api, raw_request("GET", "/readyz"))
            assert await service.check_ready()
            alive, ready = await exchange(api, raw_request("GET", "/healthz"),
                                          raw_request("GET", "/readyz"))
            store = service.store
            service.store = UnreadableStore()  # type: ignore[assignment]
            assert not await service.check_ready()
            (broken,) = await exchange(api, raw_request("GET", "/readyz"))
            service.store = store
            lonely = await lonely_gateway(f)
        assert before.status == 200  # a service without checks is ready
        assert alive.status == 200 and alive.json() == {"status": "ok"}
        assert ready.status == 200 and ready.json() == {"status": "ready", "failing": {}}
        assert broken.status == 503
        assert list(broken.json()["failing"]) == ["token_store"]
        assert "database is gone" in broken.json()["failing"]["token_store"]
        assert set(lonely) == {"orchestrator", "registry"}
        assert "tether/control/nowhere" in lonely["orchestrator"]

    run(main)


async def lonely_gateway(f: Fleet) -> dict[str, str]:
    """The failing checks of a gateway in a region with no orchestrator nor registry."""
    service = GatewayService(network=f.client_net, store=f.store, region="nowhere",
                             buckets=TokenBuckets(rate=1, burst=1), clock_ms=f.clock_ms)
    with trio.fail_after(60):
        assert not await service.check_ready()
    return service.readiness.failing()


def get(url: str) -> tuple[int, dict[str, Any] | str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            status, body = reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read().decode()
    try:
        return status, json.loads(body)
    except json.JSONDecodeError:
        return status, body


def test_probes_beside_the_metrics_port_and_a_draining_worker(tmp_path: Path) -> None:
    readiness = Readiness({health.STARTED: "the service is starting"})
    server = health.serve_metrics("127.0.0.1", 0, readiness)
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        assert get(base + "/healthz") == (200, {"status": "ok"})
        assert get(base + "/readyz") == (503, {"status": "not ready", "failing": {
            "started": "the service is starting"}})
        readiness.set(health.STARTED, True)
        assert get(base + "/readyz") == (200, {"status": "ready", "failing": {}})
        status, metrics = get(base + "/metrics")
        assert status == 200 and isinstance(metrics, str) and "# TYPE" in metrics

        async def main() -> None:
            async with fleet(tmp_path) as f:
                worker = await f.add_worker("w1")
                worker.readiness = readiness  # as worker.main gives it the process's
                assert readiness.ready
                assert await worker.drain(grace_s=1)

        run(main)
        assert get(base + "/readyz") == (503, {"status": "not ready", "failing": {
            "draining": "the service is draining"}})
        assert get(base + "/healthz")[0] == 200  # still alive while it drains
    finally:
        server.shutdown()
        server.server_close()


def test_readiness_listeners_hear_changes_only() -> None:
    readiness = Readiness()
    heard: list[bool] = []
    unsubscribe = readiness.subscribe(heard.append)
    readiness.set("a", True)
    readiness.set("a", False, "down")
    readiness.set("b", False, "down too")
    readiness.set("a", True)
    readiness.set("b", True)
    unsubscribe()
    readiness.set("c", False)
    assert heard == [False, True]
    assert readiness.failing() == {"c": "failing"}


@pytest.mark.parametrize("text", ["x", "-1", "70000"])
def test_a_bad_metrics_port_is_a_clear_error(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.main import build_parser

    monkeypatch.setenv("TETHER_METRICS_PORT", text)
    parser = build_parser()  # the environment is read once the flags are parsed
    with pytest.raises(SystemExit, match="TETHER_METRICS_PORT"):
        parser.parse_args(["--bootstrap", "127.0.0.1:1"])
    assert parser.parse_args(["--metrics-port", "9100"]).metrics_port == 9100  # a flag wins


def test_a_stop_signal_turns_the_process_not_ready_before_its_stop_hooks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tether import process

    readiness = Readiness({health.STARTED: "the service is starting"})
    monkeypatch.setattr(health, "PROCESS", readiness)
    runtime = process.Runtime()
    seen: list[dict[str, str]] = []

    async def hook() -> None:  # e.g. the worker's drain, the HTTP edge's graceful stop
        seen.append(readiness.failing())

    async def body() -> None:
        runtime.on_stop(hook)
        process.announce_ready("test", b"\x00" * 32)
        assert readiness.ready
        await trio.testing.wait_all_tasks_blocked()  # the signal watcher is listening
        os.kill(os.getpid(), signal.SIGTERM)
        await trio.sleep_forever()

    trio.run(runtime.run_until_signalled, body)
    assert seen == [{"draining": "the service is draining"}]
