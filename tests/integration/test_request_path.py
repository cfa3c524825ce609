"""The whole request path on real Hyperswarm connections over a loopback testnet.

Registry, orchestrator, gateway and a CPU worker run their real ``serve()``
functions (the code behind ``tether <service>``) with the real ONNX models
published (signed, three replicas); a client streams through the gateway.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import trio

from app.localnet import issue_token, publish_shipped_models
from gateway import main as gateway_main
from orchestrator import main as orchestrator_main
from p2p_transport.cenc import SocketAddress
from registry import main as registry_main
from tests.integration.testnet import node_testnet
from tether.client import connect_gateway
from tether.keys import KeyPair
from tether.metadata.store import MetadataStore, sqlite_url
from tether.process import ServiceConfig
from tether.rpc import RpcError, StatusCode
from tether.v1 import infer_pb2, services_pb2_grpc, status_pb2
from worker import main as worker_main

pytestmark = [pytest.mark.interop, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Network:
    bootstrap: list[SocketAddress]
    gateway_key: bytes
    token: str
    data_dir: Path


def config(service: str, data_dir: Path, bootstrap: list[SocketAddress]) -> ServiceConfig:
    return ServiceConfig.local(service, data_dir, bootstrap)


def worker_args(worker_id: str) -> argparse.Namespace:
    return worker_main.build_parser().parse_args(
        ["--bootstrap", "127.0.0.1:1", "--worker-id", worker_id]
    )


@asynccontextmanager
async def tether_network(tmp_path: Path) -> AsyncIterator[Network]:
    data_dir = tmp_path / "tether"
    await trio.to_thread.run_sync(publish_shipped_models, data_dir)
    token = await trio.to_thread.run_sync(issue_token, data_dir, "acme")
    gateway_key = KeyPair.load_or_generate(data_dir / "keys" / "gateway.key").public_key
    async with node_testnet(3) as bootstrap, trio.open_nursery() as nursery:
        runs: list[Callable[[], Awaitable[None]]] = [
            lambda: registry_main.serve(config("registry", data_dir, bootstrap)),
            lambda: orchestrator_main.serve(config("orchestrator", data_dir, bootstrap), []),
            lambda: gateway_main.serve(
                config("gateway", data_dir, bootstrap), 50.0, 100, http_port=0, grpc_port=0
            ),
            lambda: worker_main.serve(
                config("worker", data_dir, bootstrap), worker_args("worker-1")
            ),
        ]
        for run in runs:
            nursery.start_soon(run)
        try:
            yield Network(bootstrap, gateway_key, token, data_dir)
        finally:
            nursery.cancel_scope.cancel()


async def generate(net: Network, prompt: str, *, max_tokens: int) -> tuple[str, list]:
    async with connect_gateway(net.bootstrap, net.token, gateway_key=net.gateway_key) as client:
        chunks = []
        for _attempt in range(30):
            try:
                chunks = [c async for c in client.generate(
                    "kjv-textgen", prompt, max_tokens=max_tokens, greedy=True
                )]
                break
            except RpcError as exc:
                # The first requests may race the worker's first heartbeat.
                if exc.code != StatusCode.UNAVAILABLE or "no healthy worker" not in exc.message:
                    raise
                await trio.sleep(1)
        return "".join(c.payload.text for c in chunks), chunks


def test_both_shipped_models_stream_through_the_network(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def main() -> None:
        with trio.fail_after(240):
            async with tether_network(tmp_path) as net:
                text, chunks = await generate(net, "And God said", max_tokens=12)
                assert chunks[-1].done
                assert chunks[-1].usage.output_tokens == 12
                words = text.split()
                assert len(words) >= 6, text
                assert {c.worker_id for c in chunks} == {"worker-1"}
                async with connect_gateway(
                    net.bootstrap, net.token, gateway_key=net.gateway_key
                ) as client:
                    embeddings = [
                        c.payload.embedding
                        async for c in client.embed(
                            "all-minilm-l6-v2", ["a cat sat", "a cat was sitting", "stock prices"]
                        )
                        if c.payload.HasField("embedding")
                    ]
                assert [e.index for e in embeddings] == [0, 1, 2]
                assert all(len(e.values) == 384 for e in embeddings)

                def cos(a: list[float], b: list[float]) -> float:
                    return sum(x * y for x, y in zip(a, b, strict=True))

                v = [list(e.values) for e in embeddings]
                assert cos(v[0], v[1]) > cos(v[0], v[2]) + 0.2

                # The same through the OpenAI-style HTTP API, on the address the gateway
                # announced, with a plain HTTP client.
                [ready] = [json.loads(line) for line in capsys.readouterr().out.splitlines()
                           if '"http"' in line]
                url = ready["http"]
                ask = {"model": "kjv-textgen", "prompt": "And God said", "max_tokens": 12,
                       "temperature": 0}
                status, answer = await trio.to_thread.run_sync(
                    post, f"{url}/v1/completions", ask, net.token)
                assert status == 200 and answer["choices"][0]["text"] == text  # greedy: same
                assert answer["usage"]["completion_tokens"] == 12
                status, events = await trio.to_thread.run_sync(
                    post, f"{url}/v1/completions", {**ask, "stream": True}, net.token)
                assert status == 200 and events[-1] == "[DONE]"
                pieces = [json.loads(e)["choices"][0]["text"] for e in events[:-1]]
                assert "".join(pieces) == text and len([p for p in pieces if p]) == 12
                status, answer = await trio.to_thread.run_sync(
                    post, f"{url}/v1/embeddings",
                    {"model": "all-minilm-l6-v2", "input": ["a cat sat"]}, net.token)
                assert status == 200
                got = answer["data"][0]["embedding"]
                assert max(abs(a - b) for a, b in zip(got, v[0], strict=True)) < 1e-6
                status, answer = await trio.to_thread.run_sync(
                    post, f"{url}/v1/completions", ask, "tk_wrong")
                assert status == 401 and answer["error"]["code"] == "UNAUTHENTICATED"

                # And over gRPC, with grpcio's generated client.
                grpc_text = await trio.to_thread.run_sync(
                    grpc_generate, ready["grpc"], net.token, "And God said", 12)
                assert grpc_text == text

                # The operator replays a failed job with `tether dlq replay`: a separate
                # process, known to the orchestrator by the operator.pub it writes.
                letter_id = await trio.to_thread.run_sync(dead_letter, net.data_dir, 12)
                replayed = await trio.run_process(
                    [sys.executable, "-m", "app.cli", "dlq", "replay", str(letter_id),
                     "--bootstrap", f"{net.bootstrap[0].host}:{net.bootstrap[0].port}",
                     "--data-dir", str(net.data_dir)],
                    capture_stdout=True, capture_stderr=True, check=False, cwd=ROOT,
                )
                assert replayed.returncode == 0, replayed.stderr.decode()[-3000:]
                assert replayed.stdout.decode().strip() == text.strip()  # greedy: the same
                assert (net.data_dir / "keys" / "operator.pub").exists()

                # Control messages from the operator's command line: a rollout, then a
                # drain that takes the only worker out of placement.
                boot = f"{net.bootstrap[0].host}:{net.bootstrap[0].port}"

                async def tether(*argv: str) -> tuple[int, str]:
                    done = await trio.run_process(
                        [sys.executable, "-m", "app.cli", *argv, "--bootstrap", boot,
                         "--data-dir", str(net.data_dir)],
                        capture_stdout=True, capture_stderr=True, check=False, cwd=ROOT)
                    return done.returncode, (done.stdout + done.stderr).decode()

                code, out = await tether("fleet")
                [worker] = [json.loads(line) for line in out.splitlines() if '"worker"' in line]
                assert code == 0 and worker["worker"] == "worker-1", out
                assert "kjv-textgen@1.0" in worker["models"] and worker["slots"] >= 1
                code, out = await tether("rollout", "kjv-textgen", "1.0=100")
                assert code == 0 and '"accepted": true' in out and "1.0=100%" in out, out
                # One screen of the running network, from the orchestrator process.
                code, out = await tether("status")
                assert code == 0, out
                assert "registry up" in out and "workers 1" in out, out
                assert "worker-1" in out and "kjv-textgen@1.0" in out, out
                assert "kjv-textgen: 1.0=100%" in out and "breakers   all closed" in out, out
                code, out = await tether("rollout", "kjv-textgen", "1.0=60", "1.1")
                assert code == 2 and "'1.1' is not VERSION=PERCENT" in out, out  # usage: status 2
                code, out = await tether("drain", "worker-1")
                assert code == 0 and "draining worker-1" in out, out
                with pytest.RaisesGroup(
                    pytest.RaisesExc(RpcError, match="UNAVAILABLE: every worker .* is draining"),
                    flatten_subgroups=True,
                ):
                    await generate(net, "And God said", max_tokens=4)

    trio.run(main)


def post(url: str, body: dict, token: str) -> tuple[int, Any]:
    """POST JSON with urllib (a client that knows nothing of Tether): (status, JSON body,
    or the ``data:`` payloads of an event stream)."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST",
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            raw = response.read().decode()
            if response.headers["content-type"] == "text/event-stream":
                return response.status, [e.removeprefix("data: ") for e in raw.split("\n\n") if e]
            return response.status, json.loads(raw)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def grpc_generate(address: str, token: str, prompt: str, max_tokens: int) -> str:
    request = infer_pb2.Infer.Request(model_id="kjv-textgen")
    request.input.text = prompt
    request.params.max_tokens = max_tokens
    request.params.temperature_value = 0  # greedy
    with grpc.insecure_channel(address) as channel:
        stub = services_pb2_grpc.GatewayStub(channel)
        chunks = stub.Infer(request, metadata=[("authorization", f"Bearer {token}")], timeout=60)
        return "".join(c.payload.text for c in chunks)


def dead_letter(data_dir: Path, max_tokens: int) -> int:
    """A failed greedy 'And God said' job, as the orchestrator leaves one in the DLQ."""
    store = MetadataStore(sqlite_url(data_dir / "metadata.db"))
    try:
        store.admit_job("job-dlq", "first", "acme", model_id="kjv-textgen", version="1.0",
                        worker_id="worker-1", quota_tokens=max_tokens)
        request = infer_pb2.Infer.Request(
            correlation_id="job-dlq", retry_token="first", tenant_id="acme",
            model_id="kjv-textgen", version="1.0")
        request.input.text = "And God said"
        request.params.max_tokens = max_tokens
        request.params.temperature_value = 0  # greedy
        store.dead_letter(request, status_pb2.Error(
            code=status_pb2.STATUS_CODE_UNAVAILABLE, message="worker-1 was lost mid-stream"))
        [letter] = store.dead_letters()
        assert letter.id is not None
        return letter.id
    finally:
        store.close()
