"""End-to-end overhead of the request path, side by side with its references.

One run, one machine, the same model (``kjv-textgen``), prompt and greedy decoding
(``--tokens`` tokens per request), three ways:

* ``ort``      ONNX Runtime alone: a plain loop of ``session.run`` calls in this process;
* ``worker``   a client calling ``Worker.Infer`` directly over Hyperswarm RPC;
* ``gateway``  the whole path: client -> gateway -> orchestrator -> worker -> client.

The registry, orchestrator, gateway and worker run their real ``serve()`` code in this
process on a loopback DHT (the Python testnet, ``python -m p2p_transport testnet``).
For each path and each concurrency (1 and 16) it reports request latency p50/p95 (time to
the last chunk), time to first chunk p50, and tokens/s; overhead ratios are path p50 over
ONNX Runtime p50 at concurrency 1. The last line printed is JSON with every figure.

    python bench/e2e_request_path.py [--requests 40] [--tokens 32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import trio

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from app.localnet import issue_token, publish_shipped_models, python_testnet  # noqa: E402
from gateway import main as gateway_main  # noqa: E402
from orchestrator import main as orchestrator_main  # noqa: E402
from p2p_transport.cenc import SocketAddress  # noqa: E402
from registry import main as registry_main  # noqa: E402
from tether.client import GatewayClient, connect_gateway  # noqa: E402
from tether.keys import KeyPair  # noqa: E402
from tether.net.swarm import SwarmNetwork  # noqa: E402
from tether.process import ServiceConfig  # noqa: E402
from tether.rpc import RpcError, StatusCode  # noqa: E402
from tether.v1 import infer_pb2, services_rpc  # noqa: E402
from worker import main as worker_main  # noqa: E402
from worker.engine.tokenizers import WordTokenizer  # noqa: E402

MODEL = "kjv-textgen"
PROMPT = "and the lord spake unto moses, saying"


def config(service: str, data_dir: Path, bootstrap: list[SocketAddress]) -> ServiceConfig:
    return ServiceConfig.local(service, data_dir, bootstrap, log_level="WARNING")


def ort_generate(tokens: int) -> tuple[float, float]:
    """(seconds, seconds to first token) for greedy generation with plain session.run."""
    import onnxruntime as ort

    folder = REPO / "worker" / "models" / MODEL
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(folder / "model.onnx"), opts)
    tok = WordTokenizer(json.loads((folder / "tokenizer.json").read_text()))
    state_shape = next(i.shape for i in session.get_inputs() if i.name == "state")

    def once() -> tuple[float, float]:
        t0 = time.perf_counter()
        ids = np.asarray([[tok.eos_id, *tok.encode(PROMPT)]], dtype=np.int64)
        state = np.zeros(state_shape, dtype=np.float32)
        first = 0.0
        for n in range(tokens):
            logits, state = session.run(["logits", "state_out"], {"input_ids": ids, "state": state})
            token = int(np.argmax(logits[0]))
            tok.decode_piece(token, first=n == 0)
            if n == 0:
                first = time.perf_counter() - t0
            ids = np.asarray([[token]], dtype=np.int64)
        return time.perf_counter() - t0, first

    once()
    return once()


def request(tokens: int, i: int) -> infer_pb2.Infer.Request:
    req = infer_pb2.Infer.Request(model_id=MODEL, tenant_id="bench", correlation_id=f"b-{i}")
    req.input.text = PROMPT
    req.params.max_tokens = tokens
    req.params.min_tokens = tokens  # every path makes exactly `tokens` (as ORT's loop does)
    req.params.temperature_value = 0  # greedy (unset would mean the model's default)
    return req


async def timed(chunks: object) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    first = 0.0
    n = 0
    async for chunk in chunks:  # type: ignore[attr-defined]
        if chunk.payload.text:
            if n == 0:
                first = time.perf_counter() - t0
            n += 1
    return time.perf_counter() - t0, first, n


async def run_path(
    call: object, tokens: int, requests: int, concurrency: int, offset: int
) -> dict[str, float]:
    lat: list[float] = []
    ttft: list[float] = []
    produced = 0
    counter = iter(range(offset, offset + requests))

    async def client() -> None:
        nonlocal produced
        for i in counter:
            total, first, n = await call(request(tokens, i))  # type: ignore[operator]
            if n != tokens:
                raise SystemExit(f"a request produced {n} tokens, not {tokens}: not comparable")
            lat.append(total)
            ttft.append(first)
            produced += n

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(client)
    wall = time.perf_counter() - t0
    lat.sort()
    return {
        "p50_ms": round(statistics.median(lat) * 1e3, 2),
        "p95_ms": round(lat[int(0.95 * (len(lat) - 1))] * 1e3, 2),
        "ttft_p50_ms": round(statistics.median(ttft) * 1e3, 2),
        "tokens_per_s": round(produced / wall, 1),
    }


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    ort_total, ort_first = ort_generate(args.tokens)
    result: dict[str, object] = {
        "bench": "e2e_request_path",
        "model": MODEL,
        "tokens_per_request": args.tokens,
        "requests_per_point": args.requests,
        "ort": {"p50_ms": round(ort_total * 1e3, 2), "ttft_ms": round(ort_first * 1e3, 2)},
    }
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        await trio.to_thread.run_sync(publish_shipped_models, data_dir)
        token = await trio.to_thread.run_sync(issue_token, data_dir, "bench")
        gateway_key = KeyPair.load_or_generate(data_dir / "keys" / "gateway.key").public_key
        worker_key = KeyPair.load_or_generate(data_dir / "keys" / "worker.key").public_key
        worker_args = worker_main.build_parser().parse_args(
            ["--bootstrap", "127.0.0.1:1", "--worker-id", "bench-worker", "--slots", "16",
             "--queue-limit", "64", "--model", MODEL]
        )
        async with python_testnet() as bootstrap, trio.open_nursery() as services:
            services.start_soon(registry_main.serve, config("registry", data_dir, bootstrap))
            services.start_soon(
                orchestrator_main.serve, config("orchestrator", data_dir, bootstrap), []
            )
            services.start_soon(
                gateway_main.serve, config("gateway", data_dir, bootstrap), 1e6, 1_000_000
            )
            services.start_soon(
                worker_main.serve, config("worker", data_dir, bootstrap), worker_args
            )
            async with connect_gateway(bootstrap, token, gateway_key=gateway_key) as gw:
                await _wait_ready(gw)
                # The worker takes work only from known peers: this client is made one.
                direct_key = KeyPair.generate()
                direct_key.save_public(data_dir / "keys" / "bench-client.pub")
                direct_net = SwarmNetwork(direct_key, {}, bootstrap=bootstrap)
                async with direct_net.running():
                    peer = await direct_net.connect(worker_key)
                    worker = services_rpc.WorkerStub(peer.rpc)

                    async def via_worker(req: infer_pb2.Infer.Request) -> tuple[float, float, int]:
                        async with worker.Infer(req) as chunks:
                            return await timed(chunks)

                    async def via_gateway(req: infer_pb2.Infer.Request) -> tuple[float, float, int]:
                        async with gw.stub.Infer(req, metadata=gw.metadata) as chunks:
                            return await timed(chunks)

                    offset = 0
                    for name, call in (("worker", via_worker), ("gateway", via_gateway)):
                        for conc in (1, 16):
                            await run_path(call, args.tokens, 4, conc, offset + 100_000)
                            result[f"{name}_c{conc}"] = await run_path(
                                call, args.tokens, args.requests, conc, offset
                            )
                            offset += 1_000
            services.cancel_scope.cancel()
    ort_ms = float(result["ort"]["p50_ms"])  # type: ignore[index]
    for name in ("worker", "gateway"):
        p50 = float(result[f"{name}_c1"]["p50_ms"])  # type: ignore[index]
        result[f"{name}_over_ort_p50_ratio"] = round(p50 / ort_ms, 3)
    gw_p50 = float(result["gateway_c1"]["p50_ms"])  # type: ignore[index]
    wk_p50 = float(result["worker_c1"]["p50_ms"])  # type: ignore[index]
    result["gateway_over_worker_p50_ratio"] = round(gw_p50 / wk_p50, 3)
    return result


async def _wait_ready(gw: GatewayClient) -> None:
    """Until the orchestrator has seen the worker's first heartbeat."""
    with trio.fail_after(120):
        while True:
            try:
                async for _ in gw.generate(MODEL, PROMPT, max_tokens=1):
                    pass
                return
            except RpcError as exc:
                if exc.code != StatusCode.UNAVAILABLE:
                    raise
                await trio.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    result = trio.run(main_async, args)
    for key, value in result.items():
        print(f"{key:32} {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
