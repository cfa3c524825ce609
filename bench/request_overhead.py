"""Per-request overhead: a 1-token completion through the whole path, minus the model.

The services run as separate processes, as ``tether up`` starts them (a loopback DHT,
then the registry, orchestrator, gateway and one CPU worker serving ``kjv-textgen``),
on a SQLite metadata store in the data folder or, with ``--store postgres``, on the
PostgreSQL server at ``TETHER_TEST_POSTGRES_URL`` (``tools/postgres.sh``; a fresh
database per run). Requests go one at a time:

* ``hyperswarm``  the Python client (``tether.client``) -> gateway -> orchestrator ->
  worker, over Hyperswarm RPC;
* ``http``        an HTTP client (httpx, keep-alive) -> the gateway's OpenAI-style
  ``/v1/completions`` -> the same path.

Each request asks for its hop stamps (``Infer.Request.timing``, over HTTP the
``x-tether-timing`` header; see ``tether.timing``), so each gets the model's own time
(its runtime calls on the worker) and when it passed each hop. The overhead of a request
is its time at the client (until it has the final chunk, the whole answer) minus the
model's time; its p50 is the figure. The per-hop breakdown gives the p50 of each span
between consecutive stamps. The disk's fsync time (a durable SQLite commit's floor) and the
load average are printed before and after the runs: on a shared machine they move.

In the same run, Ray Serve's overhead for a no-op deployment (a ``serve.deployment`` that
returns a constant) through a handle and through its HTTP proxy, one request at a time
(in a child process; ``pip install 'tether[bench]'`` brings Ray). Without Ray the bench
says so and prints Tether's figures alone.

``--profile`` records the orchestrator, gateway and worker with py-spy during the
Hyperswarm run and prints where their time goes (share of samples by function, inclusive
and own).

    python bench/request_overhead.py [--requests 300] [--store sqlite|postgres] [--profile]

The last line is JSON with every figure and the ratios to Ray Serve's.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from p2p_transport.cenc import SocketAddress  # noqa: E402
from registry.catalog import Catalog  # noqa: E402
from registry.publish import ModelPackage, publish_package  # noqa: E402
from tether.artifacts import ArtifactStore, LocalDirectoryStore  # noqa: E402
from tether.client import connect_gateway  # noqa: E402
from tether.keys import KeyPair  # noqa: E402
from tether.metadata.store import MetadataStore, sqlite_url  # noqa: E402
from tether.net.swarm import parse_address  # noqa: E402
from tether.rpc import RpcError, StatusCode  # noqa: E402
from tether.timing import stamps  # noqa: E402
from tether.v1 import infer_pb2  # noqa: E402

MODEL = "kjv-textgen"
PROMPT = "and the lord spake unto moses, saying"
TENANT = "bench"
READY_S = 180.0
#: The hops, in the order a request passes them; a span is named by where it ends.
HOPS = (
    ("client.send", "http.in", "client -> http edge"),
    ("http.in", "gateway.in", "http edge -> gateway"),
    ("client.send", "gateway.in", "client -> gateway"),
    ("gateway.in", "gateway.forward", "gateway in (auth, checks)"),
    ("gateway.forward", "orchestrator.in", "gateway -> orchestrator"),
    ("orchestrator.in", "orchestrator.placed", "orchestrator resolve, place"),
    ("orchestrator.placed", "orchestrator.admitted", "orchestrator admission (commit)"),
    ("orchestrator.admitted", "orchestrator.dispatch", "orchestrator dispatch"),
    ("orchestrator.dispatch", "worker.in", "orchestrator -> worker"),
    ("worker.in", "worker.model_start", "worker queue"),
    ("worker.model_start", "worker.model_end", "model (stream, incl. its own time)"),
    ("worker.model_end", "worker.out", "worker out"),
    ("worker.out", "orchestrator.worker_done", "worker -> orchestrator"),
    ("orchestrator.worker_done", "orchestrator.out", "orchestrator out"),
    ("orchestrator.out", "gateway.out", "orchestrator -> gateway"),
    ("gateway.out", "http.out", "gateway -> http edge"),
    ("http.out", "client.recv", "http edge -> client"),
    ("gateway.out", "client.recv", "gateway -> client"),
)


def _ms(ns: float) -> float:
    return round(ns / 1e6, 3)


# ------------------------------------------------------------------ services


def _env(store_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("TETHER_METRICS_PORT", "TETHER_METRICS_HOST")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env["TETHER_METADATA_URL"] = store_url
    env["TETHER_LOG_LEVEL"] = "WARNING"
    return env


async def _start(nursery: trio.Nursery, argv: list[str], env: dict[str, str],
                 log: Path, procs: list[trio.Process]) -> dict[str, Any]:
    with log.open("ab") as err:
        proc: trio.Process = await nursery.start(functools.partial(
            trio.run_process, argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
            stderr=err, cwd=str(REPO), env=env, check=False))
    procs.append(proc)
    assert proc.stdout is not None
    buf = b""
    with trio.fail_after(READY_S):
        while b"\n" not in buf:
            got = await proc.stdout.receive_some(4096)
            if not got:
                raise SystemExit(f"{argv[2]} exited before it was ready (see {log})")
            buf += got
    return dict(json.loads(buf.split(b"\n", 1)[0]))


def _publish(data_dir: Path, store_url: str) -> str:
    """Publish the one model the bench uses; issue a tenant token."""
    store = MetadataStore(store_url)
    try:
        store.migrate()
        publisher = KeyPair.load_or_generate(data_dir / "keys" / "publisher.key")
        publisher.save_public(data_dir / "keys" / "publisher.pub")
        replicas = [LocalDirectoryStore(data_dir / "artifacts" / f"r{i}") for i in range(3)]
        artifacts = ArtifactStore(replicas, trusted_keys={publisher.public_key})
        publish_package(ModelPackage.load(REPO / "worker" / "models" / MODEL),
                        Catalog(store), artifacts, publisher)
        return store.issue_token(TENANT, label="bench")
    finally:
        store.close()


def _postgres_url() -> str:
    """A fresh database on the server at TETHER_TEST_POSTGRES_URL."""
    base = os.environ.get("TETHER_TEST_POSTGRES_URL")
    if not base:
        raise SystemExit("--store postgres needs TETHER_TEST_POSTGRES_URL "
                         "(tools/postgres.sh start; export it from tools/postgres.sh url)")
    import psycopg

    name = f"bench_{uuid.uuid4().hex[:12]}"
    plain = base.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return base.rsplit("/", 1)[0] + "/" + name


# ------------------------------------------------------------------ measuring


def _summary(samples: list[dict[str, int]]) -> dict[str, Any]:
    """p50s of the overhead and of each hop, from each request's stamps (ns)."""
    over = sorted(s["client.recv"] - s["client.send"] - s["model_ns"] for s in samples)
    total = sorted(s["client.recv"] - s["client.send"] for s in samples)
    model = [s["model_ns"] for s in samples]
    hops: dict[str, float] = {}
    for start, end, name in HOPS:
        spans = [s[end] - s[start] for s in samples if start in s and end in s]
        if spans:
            hops[name] = _ms(statistics.median(spans))
    return {
        "requests": len(samples),
        "overhead_p50_ms": _ms(statistics.median(over)),
        "overhead_p95_ms": _ms(over[int(0.95 * (len(over) - 1))]),
        "total_p50_ms": _ms(statistics.median(total)),
        "model_p50_ms": _ms(statistics.median(model)),
        "hops_p50_ms": hops,
    }


def _request(i: int) -> infer_pb2.Infer.Request:
    req = infer_pb2.Infer.Request(model_id=MODEL, correlation_id=f"o-{uuid.uuid4().hex}-{i}",
                                  timing=True)
    req.input.text = PROMPT
    req.params.max_tokens = 1
    req.params.temperature_value = 0
    return req


async def _hyperswarm(bootstrap: list[SocketAddress], token: str, gateway_key: bytes,
                      requests: int, warmup: int) -> list[dict[str, int]]:
    out: list[dict[str, int]] = []
    async with connect_gateway(bootstrap, token, gateway_key=gateway_key) as gw:
        with trio.fail_after(READY_S):  # until the orchestrator has met the worker
            while True:
                try:
                    async with gw.stub.Infer(_request(-1), metadata=gw.metadata) as chunks:
                        async for _ in chunks:
                            pass
                    break
                except RpcError as exc:
                    if exc.code != StatusCode.UNAVAILABLE:
                        raise
                    await trio.sleep(0.5)
        for i in range(warmup + requests):
            req = _request(i)
            sent = time.time_ns()
            last = None
            async for chunk in gw.infer(req):  # to the final chunk, as the client reads
                last = chunk
            got = time.time_ns()
            assert last is not None and last.done
            if i >= warmup:
                out.append({**stamps(last.timing), "client.send": sent, "client.recv": got,
                            "model_ns": last.timing.model_ns})
    return out


def _http(url: str, token: str, requests: int, warmup: int) -> list[dict[str, int]]:
    import httpx2

    out: list[dict[str, int]] = []
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 1, "temperature": 0}
    headers = {"authorization": f"Bearer {token}", "x-tether-timing": "1"}
    with httpx2.Client(base_url=url, timeout=60) as client:
        for i in range(warmup + requests):
            sent = time.time_ns()
            r = client.post("/v1/completions", json=body, headers=headers)
            got = time.time_ns()
            r.raise_for_status()
            timing = json.loads(r.headers["x-tether-timing"])
            if i >= warmup:
                out.append({**timing["stamps"], "client.send": sent, "client.recv": got,
                            "model_ns": int(timing["model_ns"])})
    return out


def fsync_p50_ms(folder: Path, n: int = 50) -> float:
    """What one durable commit costs at least on this disk: fsync of a 4 KiB write."""
    times = []
    fd = os.open(folder / "fsync.probe", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _ in range(n):
            os.write(fd, b"x" * 4096)
            t0 = time.perf_counter_ns()
            os.fsync(fd)
            times.append(time.perf_counter_ns() - t0)
    finally:
        os.close(fd)
    return _ms(statistics.median(times))


# ------------------------------------------------------------------ profile


def _py_spy() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return found if Path(found).exists() else None


def _profile_report(raw: Path, top: int = 25) -> dict[str, Any]:
    """Inclusive share of samples per function from py-spy's collapsed stacks."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        for f in set(frames):
            inclusive[_frame(f)] += n
        own[_frame(frames[-1])] += n
    if not total:
        return {"samples": 0}
    return {
        "samples": total,
        "inclusive_pct": {k: round(100 * v / total, 1) for k, v in inclusive.most_common(top)},
        "self_pct": {k: round(100 * v / total, 1) for k, v in own.most_common(top)},
    }


def _frame(f: str) -> str:
    # "function (path/to/file.py:123)" -> "function (file.py)"
    name, _, where = f.partition(" (")
    return f"{name} ({Path(where.rstrip(')').rsplit(':', 1)[0]).name})"


# ------------------------------------------------------------------ Ray Serve


RAY_CHILD = "--ray-child"
#: The services ``--profile`` records during the Hyperswarm run.
PROFILED = ("orchestrator", "gateway", "worker")


def _ray_child(requests: int, warmup: int) -> None:
    """Runs in a child process: Ray Serve's overhead for a no-op deployment."""
    import httpx2
    import ray
    from ray import serve

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR,
             log_to_driver=False)
    port = 18_000 + os.getpid() % 1000

    class Noop:
        async def __call__(self, request: Any) -> str:
            return "ok"

    serve.start(http_options={"host": "127.0.0.1", "port": port})
    handle = serve.run(serve.deployment(num_replicas=1)(Noop).bind(),
                       route_prefix="/noop")
    via_handle: list[float] = []
    for i in range(warmup + requests):
        t0 = time.perf_counter_ns()
        handle.remote(None).result()
        if i >= warmup:
            via_handle.append(time.perf_counter_ns() - t0)
    via_http: list[float] = []
    with httpx2.Client(timeout=60) as client:
        for i in range(warmup + requests):
            t0 = time.perf_counter_ns()
            client.post(f"http://127.0.0.1:{port}/noop", json={"x": 1}).raise_for_status()
            if i >= warmup:
                via_http.append(time.perf_counter_ns() - t0)
    print(json.dumps({"ray": ray.__version__,
                      "handle_p50_ms": _ms(statistics.median(via_handle)),
                      "http_p50_ms": _ms(statistics.median(via_http))}), flush=True)
    serve.shutdown()
    ray.shutdown()


async def _ray(requests: int, warmup: int) -> dict[str, Any]:
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError:
        return {"missing": "Ray Serve is not installed (pip install 'tether[bench]'); "
                           "Tether's figures alone"}
    done = await trio.run_process(
        [sys.executable, __file__, RAY_CHILD, "--requests", str(requests),
         "--warmup", str(warmup)],
        capture_stdout=True, capture_stderr=True, check=False, cwd=str(REPO))
    lines = [ln for ln in done.stdout.decode().splitlines() if ln.startswith("{")]
    if done.returncode or not lines:
        tail = done.stderr.decode()[-2000:]
        return {"failed": f"Ray Serve run exited {done.returncode}: {tail}"}
    return dict(json.loads(lines[-1]))


# ------------------------------------------------------------------ the run


@dataclass
class Services:
    """The services of one run, each a process of its own (``services``)."""

    data_dir: Path
    store_url: str
    env: dict[str, str]
    nursery: trio.Nursery
    bootstrap: list[SocketAddress] = field(default_factory=list)
    token: str = ""
    procs: dict[str, trio.Process] = field(default_factory=dict)
    ready: dict[str, dict[str, Any]] = field(default_factory=dict)
    args: dict[str, list[str]] = field(default_factory=dict)

    @property
    def gateway_key(self) -> bytes:
        return bytes.fromhex(self.ready["gateway"]["public_key"])

    async def start(self, name: str) -> None:
        """Start service ``name`` (again, after it was killed: same data folder, same key)."""
        module = ["-m", "p2p_transport", "testnet", "--host", "127.0.0.1"] if name == "dht" \
            else ["-m", f"{name}.main", *self.args[name]]
        log = self.data_dir / "logs" / f"{name}.log"
        procs: list[trio.Process] = []
        self.ready[name] = await _start(self.nursery, [sys.executable, *module], self.env,
                                        log, procs)
        self.procs[name] = procs[0]


@asynccontextmanager
async def services(data_dir: Path, store_url: str, *,
                   orchestrator_args: tuple[str, ...] = ()) -> AsyncIterator[Services]:
    """A loopback DHT, then the registry, orchestrator, gateway and a CPU worker serving
    ``MODEL``, as ``tether up`` starts them; stopped (SIGTERM, then SIGKILL) at the end."""
    (data_dir / "logs").mkdir(exist_ok=True)
    async with trio.open_nursery() as nursery:
        net = Services(data_dir, store_url, _env(store_url), nursery)
        try:
            await net.start("dht")
            net.bootstrap = [parse_address(b) for b in net.ready["dht"]["bootstrap"]]
            net.token = await trio.to_thread.run_sync(_publish, data_dir, store_url)
            common = ["--region", "local", "--data-dir", str(data_dir), "--bootstrap",
                      ",".join(f"{a.host}:{a.port}" for a in net.bootstrap)]
            net.args = {
                "registry": common,
                "orchestrator": [*common, *orchestrator_args],
                "gateway": [*common, "--http-port", "0", "--grpc-port", "0",
                            "--rate", "100000", "--burst", "100000"],
                "worker": [*common, "--worker-id", "worker-1", "--model", MODEL],
            }
            for name in ("registry", "orchestrator", "gateway", "worker"):
                await net.start(name)
            yield net
        finally:
            procs = list(net.procs.values())
            for proc in reversed(procs):
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(20), trio.CancelScope(shield=True):
                for proc in procs:
                    await proc.wait()
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
            nursery.cancel_scope.cancel()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"bench": "request_overhead", "model": MODEL,
                              "store": args.store, "requests": args.requests,
                              "cpus": os.cpu_count(),
                              "load_avg_1m": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        # The floor of a durable commit on SQLite (one WAL fsync, synchronous=FULL).
        result["fsync_p50_ms"] = fsync_p50_ms(data_dir)
        store_url = _postgres_url() if args.store == "postgres" else sqlite_url(
            data_dir / "metadata.db")
        async with services(data_dir, store_url) as net:
            spies: dict[str, trio.Process] = {}
            tool = _py_spy()
            if args.profile and tool is None:
                result["profile"] = {"missing": "py-spy is not installed"}
            for name in PROFILED if args.profile else ():
                if tool is None:
                    break
                spies[name] = await trio.lowlevel.open_process(
                    [tool, "record", "--pid", str(net.procs[name].pid), "--format", "raw",
                     "--rate", "500", "--nonblocking", "-o", str(data_dir / f"{name}.prof")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            swarm = await _hyperswarm(net.bootstrap, net.token, net.gateway_key,
                                      args.requests, args.warmup)
            for name, spy in spies.items():
                spy.send_signal(signal.SIGINT)
                await spy.wait()
                if (data_dir / f"{name}.prof").exists():
                    result[f"profile_{name}"] = _profile_report(data_dir / f"{name}.prof")
            result["hyperswarm"] = _summary(swarm)
            edge = None
            if spies and tool is not None:  # the HTTP edge, in the gateway's process
                edge = await trio.lowlevel.open_process(
                    [tool, "record", "--pid", str(net.procs["gateway"].pid), "--format", "raw",
                     "--rate", "500", "--nonblocking", "-o", str(data_dir / "http.prof")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            http = await trio.to_thread.run_sync(
                _http, net.ready["gateway"]["http"], net.token, args.requests, args.warmup)
            if edge is not None:
                edge.send_signal(signal.SIGINT)
                await edge.wait()
                if (data_dir / "http.prof").exists():
                    result["profile_gateway_http"] = _profile_report(data_dir / "http.prof")
            result["http"] = _summary(http)
            # The disk is shared: its fsync time again, after the runs.
            result["fsync_p50_ms_after"] = fsync_p50_ms(data_dir)
            result["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
    if args.no_ray:
        result["ray_serve"] = {"skipped": "--no-ray"}
    else:
        result["ray_serve"] = await _ray(args.requests, args.warmup)
    ray_fig = result["ray_serve"]
    over_swarm = result["hyperswarm"]["overhead_p50_ms"]
    over_http = result["http"]["overhead_p50_ms"]
    result["bar_hyperswarm_ms"], result["bar_http_ms"] = 2.5, 3.0
    result["bar_hyperswarm_met"] = over_swarm <= 2.5
    result["bar_http_met"] = over_http <= 3.0
    if "handle_p50_ms" in ray_fig:
        result["hyperswarm_over_ray_handle_ratio"] = round(
            over_swarm / ray_fig["handle_p50_ms"], 3)
        result["http_over_ray_http_ratio"] = round(over_http / ray_fig["http_p50_ms"], 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--profile", action="store_true",
                        help="record the services with py-spy during the Hyperswarm run")
    parser.add_argument("--no-ray", action="store_true", help="skip Ray Serve's figures")
    parser.add_argument(RAY_CHILD, action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ray_child:
        _ray_child(args.requests, args.warmup)
        return
    result = trio.run(run, args)
    for key, value in result.items():
        print(f"{key:34} {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
