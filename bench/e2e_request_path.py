"""End-to-end overhead of the request path, side by side with its references.

One run, one machine, the same model (``kjv-textgen``), prompt and greedy decoding
(``--tokens`` tokens per request), three ways:

* ``ort``      ONNX Runtime alone: a plain loop of ``session.run`` calls in this process;
* ``worker``   a client calling ``Worker.Infer`` directly over Hyperswarm RPC;
* ``gateway``  the whole path: client -> gateway -> orchestrator -> worker -> client.

The registry, orchestrator, gateway and worker run as separate processes, as ``tether up``
starts them (``python -m <service>.main``), on a loopback DHT (the Python testnet,
``python -m p2p_transport testnet``). For each path and each concurrency (1 and 16) it
reports request latency p50/p95 (time to the last chunk), time to first chunk p50,
tokens/s, and the CPU time each process spent per token (``cpu_us_per_token``: user+system
time from ``/proc`` over the point, divided by the tokens it streamed; ``client`` is this
process). Ratios: path p50 over ONNX Runtime p50 at concurrency 1, and gateway tokens/s
over worker-direct tokens/s at each concurrency (the relay's cost): the paths run back to
back, ``--rounds`` times, and the ratio is the median of the rounds' (each under the
same load: on a shared machine the load drifts between points). The last line printed
is JSON with every figure.

``--profile DIR`` runs the gateway and the orchestrator under cProfile, timed by CPU time
(not wall time, which a shared machine's other work inflates), and leaves
``DIR/<service>.prof`` (read with ``python -m pstats``).

    python bench/e2e_request_path.py [--requests 32] [--rounds 3] [--tokens 32]
                                     [--profile DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import trio

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from app.localnet import issue_token, publish_shipped_models, python_testnet  # noqa: E402
from tether.client import GatewayClient, connect_gateway  # noqa: E402
from tether.keys import KeyPair  # noqa: E402
from tether.net.swarm import SwarmNetwork  # noqa: E402
from tether.rpc import RpcError, StatusCode  # noqa: E402
from tether.v1 import infer_pb2, services_rpc  # noqa: E402
from worker.engine.tokenizers import WordTokenizer  # noqa: E402

MODEL = "kjv-textgen"
PROMPT = "and the lord spake unto moses, saying"


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


@dataclass
class Point:
    """One path at one concurrency, over every round."""

    lat: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    produced: int = 0
    wall: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, object]:
        lat = sorted(self.lat)
        return {
            "p50_ms": round(statistics.median(lat) * 1e3, 2),
            "p95_ms": round(lat[int(0.95 * (len(lat) - 1))] * 1e3, 2),
            "ttft_p50_ms": round(statistics.median(self.ttft) * 1e3, 2),
            "tokens_per_s": round(self.produced / self.wall, 1),
            "cpu_us_per_token": {
                s: round(t / self.produced * 1e6, 1) for s, t in self.cpu.items()
            },
        }


async def run_path(
    call: object, tokens: int, requests: int, concurrency: int, offset: int, *, point: Point
) -> float:
    """Run ``requests`` requests into ``point``; their tokens/s."""
    produced = 0
    counter = iter(range(offset, offset + requests))

    async def client() -> None:
        nonlocal produced
        for i in counter:
            total, first, n = await call(request(tokens, i))  # type: ignore[operator]
            if n != tokens:
                raise SystemExit(f"a request produced {n} tokens, not {tokens}: not comparable")
            point.lat.append(total)
            point.ttft.append(first)
            produced += n

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(client)
    wall = time.perf_counter() - t0
    point.produced += produced
    point.wall += wall
    return produced / wall


_TICK_S = 1 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * _TICK_S  # utime, stime


#: Runs a module under cProfile timed by process CPU time: argv is OUT MODULE ARGS...
_PROFILED = """
import cProfile, runpy, sys, time
out, module = sys.argv[1], sys.argv[2]
sys.argv = [module, *sys.argv[3:]]
profiler = cProfile.Profile(time.process_time)
profiler.enable()
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
except SystemExit:
    pass
finally:
    profiler.disable()
    profiler.dump_stats(out)
"""


class Services:
    """The services as child processes: their pids, and their CPU time now."""

    def __init__(self) -> None:
        self.pids: dict[str, int] = {"client": os.getpid()}
        self.ready: dict[str, dict[str, object]] = {}
        self.processes: list[trio.Process] = []

    def cpu(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    async def start(
        self, nursery: trio.Nursery, name: str, argv: list[str], log_dir: Path,
        profile: Path | None,
    ) -> None:
        command = [sys.executable, "-m", f"{name}.main", *argv]
        if profile is not None:  # CPU time, not wall time: the machine may be shared
            command = [sys.executable, "-c", _PROFILED, str(profile / f"{name}.prof"),
                       f"{name}.main", *argv]
        path = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
        env = {**os.environ, "PYTHONPATH": path}
        with (log_dir / f"{name}.log").open("ab") as stderr:
            proc: trio.Process = await nursery.start(partial(
                trio.run_process, command,
                stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, stderr=stderr,
                cwd=str(REPO), env=env, check=False,
            ))
        assert proc.stdout is not None
        buf = b""
        with trio.fail_after(120):
            while b"\n" not in buf:
                chunk = await proc.stdout.receive_some(4096)
                if not chunk:
                    raise SystemExit(f"{name} exited before it was ready (see {log_dir})")
                buf += chunk
        self.ready[name] = json.loads(buf.split(b"\n", 1)[0])
        self.pids[name] = proc.pid
        self.processes.append(proc)


@asynccontextmanager
async def services_running(
    data_dir: Path, bootstrap: str, profile: Path | None
) -> AsyncIterator[Services]:
    services = Services()
    common = ["--data-dir", str(data_dir), "--bootstrap", bootstrap, "--log-level", "WARNING"]
    argv = {
        "registry": [],
        "orchestrator": [],
        "gateway": ["--rate", "1000000", "--burst", "1000000"],
        "worker": ["--worker-id", "bench-worker", "--slots", "16", "--queue-limit", "64",
                   "--model", MODEL],
    }
    log_dir = data_dir / "logs"
    log_dir.mkdir()
    async with trio.open_nursery() as nursery:
        try:
            for name, extra in argv.items():
                await services.start(nursery, name, [*common, *extra], log_dir,
                                     profile if name in ("orchestrator", "gateway") else None)
            yield services
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(30):
                for proc in reversed(services.processes):
                    proc.send_signal(signal.SIGTERM)  # a clean stop (cProfile writes its file)
                    await proc.wait()
            nursery.cancel_scope.cancel()


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    ort_total, ort_first = ort_generate(args.tokens)
    result: dict[str, object] = {
        "bench": "e2e_request_path",
        "model": MODEL,
        "tokens_per_request": args.tokens,
        "requests_per_point": args.requests * args.rounds,
        "rounds": args.rounds,
        "processes": "separate (python -m <service>.main)",
        "ort": {"p50_ms": round(ort_total * 1e3, 2), "ttft_ms": round(ort_first * 1e3, 2)},
    }
    profile: Path | None = args.profile
    if profile is not None:
        await trio.to_thread.run_sync(partial(profile.mkdir, parents=True, exist_ok=True))
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        await trio.to_thread.run_sync(publish_shipped_models, data_dir)
        token = await trio.to_thread.run_sync(issue_token, data_dir, "bench")
        # The worker takes work only from known peers: this client is made one.
        direct_key = KeyPair.generate()
        direct_key.save_public(data_dir / "keys" / "bench-client.pub")
        async with python_testnet() as bootstrap:
            boot = ",".join(f"{a.host}:{a.port}" for a in bootstrap)
            async with services_running(data_dir, boot, profile) as services:
                gateway_key = bytes.fromhex(str(services.ready["gateway"]["public_key"]))
                worker_key = bytes.fromhex(str(services.ready["worker"]["public_key"]))
                async with connect_gateway(bootstrap, token, gateway_key=gateway_key) as gw:
                    await _wait_ready(gw)
                    direct_net = SwarmNetwork(direct_key, {}, bootstrap=bootstrap)
                    async with direct_net.running():
                        peer = await direct_net.connect(worker_key)
                        worker = services_rpc.WorkerStub(peer.rpc)

                        async def via_worker(
                            req: infer_pb2.Infer.Request,
                        ) -> tuple[float, float, int]:
                            async with worker.Infer(req) as chunks:
                                return await timed(chunks)

                        async def via_gateway(
                            req: infer_pb2.Infer.Request,
                        ) -> tuple[float, float, int]:
                            async with gw.stub.Infer(req, metadata=gw.metadata) as chunks:
                                return await timed(chunks)

                        paths = (("worker", via_worker), ("gateway", via_gateway))
                        points = {(n, c): Point() for n, _ in paths for c in (1, 16)}
                        ratios: dict[int, list[float]] = {1: [], 16: []}
                        offset = 0
                        for _ in range(args.rounds):
                            # Both paths back to back, round after round: a ratio per
                            # round, under the same load (this machine is shared).
                            for conc in (1, 16):
                                tps = {}
                                for name, call in paths:
                                    point = points[name, conc]
                                    if not point.produced:  # warm-up
                                        await run_path(call, args.tokens, 4, conc,
                                                       offset + 100_000, point=Point())
                                    before = services.cpu()
                                    tps[name] = await run_path(
                                        call, args.tokens, args.requests, conc, offset,
                                        point=point,
                                    )
                                    after = services.cpu()
                                    for s in ("client", "gateway", "orchestrator", "worker"):
                                        point.cpu[s] = point.cpu.get(s, 0.0) + (
                                            after[s] - before[s]
                                        )
                                    offset += 1_000
                                ratios[conc].append(tps["gateway"] / tps["worker"])
                        for (name, conc), point in points.items():
                            result[f"{name}_c{conc}"] = point.summary()
    ort_ms = float(result["ort"]["p50_ms"])  # type: ignore[index]
    for name in ("worker", "gateway"):
        p50 = float(result[f"{name}_c1"]["p50_ms"])  # type: ignore[index]
        result[f"{name}_over_ort_p50_ratio"] = round(p50 / ort_ms, 3)
    gw_p50 = float(result["gateway_c1"]["p50_ms"])  # type: ignore[index]
    wk_p50 = float(result["worker_c1"]["p50_ms"])  # type: ignore[index]
    result["gateway_over_worker_p50_ratio"] = round(gw_p50 / wk_p50, 3)
    for conc in (1, 16):
        result[f"gateway_over_worker_c{conc}_tps_ratio"] = round(
            statistics.median(ratios[conc]), 3
        )
        result[f"gateway_over_worker_c{conc}_tps_ratio_rounds"] = [
            round(r, 3) for r in ratios[conc]
        ]
    relay = result["gateway_c16"]["cpu_us_per_token"]  # type: ignore[index]
    result["relay_cpu_us_per_token_c16"] = round(relay["gateway"] + relay["orchestrator"], 1)
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
    parser.add_argument("--requests", type=int, default=32, help="per point and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--profile", metavar="DIR", type=lambda p: Path(p).resolve(),
                        help="run the gateway and orchestrator under cProfile into DIR")
    args = parser.parse_args()
    result = trio.run(main_async, args)
    for key, value in result.items():
        print(f"{key:32} {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
