"""Orchestrators under fire, between real processes: what a client sees when one is killed
(SIGKILL) or stopped (SIGTERM) during 16 streams, and what the store is left holding.

Every service is its own ``python -m <service>.main`` process on a loopback DHT (the
Python testnet), sharing one SQLite metadata store; one CPU worker serves the shipped
``kjv-textgen`` with greedy decoding (so a replay is identical); 16 clients each stream
``--tokens`` tokens through the gateway. Once every stream has ``--after`` chunks, the
orchestrator running the most streams gets the fault. Scenarios:

* ``kill``       one orchestrator, SIGKILL; then it is started again (same key);
* ``kill-peer``  two orchestrators, SIGKILL one;
* ``term``       two orchestrators, SIGTERM one.

Figures: requests affected (ended with an error), the longest pause between two chunks
of one stream, how long the next request took to its first chunk (or error), and jobs
left unfinished (RESERVED/DISPATCHED/STREAMING) once the streams ended and again after
the restart. ``--tree`` runs another checkout's services (e.g. an older commit, for the
figures before a change). The last line printed is JSON with every figure.

    python bench/orchestrator_failover.py kill-peer [--tree DIR] [--tokens 512]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tether.client import GREEDY_TEMPERATURE, GatewayClient, connect_gateway  # noqa: E402
from tether.net.swarm import parse_address  # noqa: E402
from tether.rpc import RpcError  # noqa: E402
from tether.v1 import infer_pb2  # noqa: E402

MODEL = "kjv-textgen"
PROMPT = "and the lord spake unto moses, saying"
STREAMS = 16
READY_S = 180.0
ACTIVE_STATES = (1, 2, 3)  # JOB_STATE_RESERVED, DISPATCHED, STREAMING

_PUBLISH = """
import sys
from pathlib import Path
from registry.catalog import Catalog
from registry.publish import REPO_ROOT, ModelPackage, publish_package
from tether.artifacts import ArtifactStore, LocalDirectoryStore
from tether.keys import KeyPair
from tether.metadata.store import MetadataStore, sqlite_url
data = Path(sys.argv[1])
store = MetadataStore(sqlite_url(data / "metadata.db"))
store.migrate()
publisher = KeyPair.load_or_generate(data / "keys" / "publisher.key")
replicas = [LocalDirectoryStore(data / "artifacts" / f"r{i}") for i in range(3)]
artifacts = ArtifactStore(replicas, trusted_keys={publisher.public_key})
package = ModelPackage.load(REPO_ROOT / "worker" / "models" / "kjv-textgen")
publish_package(package, Catalog(store), artifacts, publisher)
print(store.issue_token("bench"))
"""


@dataclass
class Service:
    name: str
    argv: list[str]
    process: trio.Process | None = None
    ready: dict[str, Any] = field(default_factory=dict)

    def cpu_s(self) -> float:
        """User + system CPU seconds so far (Linux /proc), to find the busiest one."""
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Net:
    tree: Path
    data_dir: Path
    nursery: trio.Nursery
    services: dict[str, Service] = field(default_factory=dict)
    token: str = ""
    bootstrap: list = field(default_factory=list)
    logs: list = field(default_factory=list)

    def env(self) -> dict[str, str]:
        env = dict(os.environ, PYTHONPATH=str(self.tree), PYTHONUNBUFFERED="1")
        env.pop("TETHER_CONFIG", None)
        return env

    async def start(self, service: Service) -> Service:
        log = open(self.data_dir / f"{service.name}.log", "ab")  # noqa: ASYNC230, SIM115
        self.logs.append(log)
        service.process = await self.nursery.start(partial(
            trio.run_process, service.argv, stdout=subprocess.PIPE, stderr=log,
            stdin=subprocess.DEVNULL, cwd=str(self.tree), env=self.env(), check=False))
        self.services[service.name] = service
        assert service.process.stdout is not None
        buf = b""
        with trio.fail_after(READY_S):
            while b"\n" not in buf:
                chunk = await service.process.stdout.receive_some(4096)
                if not chunk:
                    raise RuntimeError(f"{service.name} exited; see {log.name}")
                buf += chunk
        service.ready = json.loads(buf.split(b"\n", 1)[0])
        return service

    def owners(self) -> int | None:
        """Orchestrators that own jobs so far (None: a tree whose jobs record no owner)."""
        with sqlite3.connect(self.data_dir / "metadata.db") as db:
            try:
                row = db.execute("SELECT count(DISTINCT owner) FROM jobs WHERE owner != ''")
            except sqlite3.OperationalError:
                return None
            return int(row.fetchone()[0])

    def jobs(self) -> dict[str, int]:
        """Jobs per state, unfinished ones summed, and dead letters."""
        with sqlite3.connect(self.data_dir / "metadata.db") as db:
            rows = dict(db.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall())
            letters = db.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
        return {"unfinished": sum(rows.get(s, 0) for s in ACTIVE_STATES),
                "succeeded": rows.get(4, 0), "failed": rows.get(5, 0),
                "cancelled": rows.get(6, 0), "dead_letters": letters}


async def open_net(net: Net, orchestrators: int, drain_s: float | None) -> None:
    data_dir, tree = net.data_dir, net.tree
    py = sys.executable
    done = await trio.run_process([py, "-c", _PUBLISH, str(data_dir)], capture_stdout=True,
                                  cwd=str(tree), env=net.env())
    net.token = done.stdout.decode().strip().splitlines()[-1]
    dht = await net.start(Service("dht", [py, "-m", "p2p_transport", "testnet",
                                         "--host", "127.0.0.1"]))
    net.bootstrap = [parse_address(b) for b in dht.ready["bootstrap"]]
    common = ["--region", "local", "--data-dir", str(data_dir), "--log-level", "INFO",
              "--bootstrap", ",".join(dht.ready["bootstrap"])]
    await net.start(Service("registry", [py, "-m", "registry.main", *common]))
    for i in range(orchestrators):
        extra = ["--key-file", str(data_dir / "keys" / f"orchestrator-{i}.key")]
        if drain_s is not None:
            extra += ["--drain-timeout-s", str(drain_s)]
        await net.start(Service(f"orchestrator-{i}", [py, "-m", "orchestrator.main",
                                                      *common, *extra]))
    await net.start(Service("gateway", [py, "-m", "gateway.main", *common]))
    await net.start(Service("worker", [py, "-m", "worker.main", *common, "--worker-id", "w1",
                                       "--model", MODEL, "--slots", "40", "--max-batch", "40",
                                       "--queue-limit", "64", "--cpu"]))


def request(cid: str, tokens: int) -> infer_pb2.Infer.Request:
    req = infer_pb2.Infer.Request(model_id=MODEL, correlation_id=cid, retry_token="t1")
    req.input.text = PROMPT
    req.params.max_tokens = req.params.min_tokens = tokens
    req.params.temperature = GREEDY_TEMPERATURE
    return req


@dataclass
class Stream:
    cid: str
    times: list[float] = field(default_factory=list)
    error: str = ""
    texts: list[str] = field(default_factory=list)


async def warm_up(net: Net, client: GatewayClient, orchestrators: int) -> None:
    """Wait until a request goes through (the worker's first heartbeat) and, where the
    jobs record their owner, until the gateway has sent work to every orchestrator (so a
    fault does not find it still discovering the survivor)."""
    with trio.fail_after(READY_S):
        while True:
            try:
                [c async for c in client.infer(request(f"warm-{time.time_ns()}", 2))]
            except RpcError as exc:
                if "no healthy worker" not in exc.message and "nothing reachable" not in \
                        exc.message:
                    raise
                await trio.sleep(1)
                continue
            if net.owners() in (None, orchestrators):
                return
            await trio.sleep(0.2)


async def run_scenario(scenario: str, tree: Path, tokens: int, after: int,
                       drain_s: float | None) -> dict[str, Any]:
    orchestrators = 1 if scenario == "kill" else 2
    with tempfile.TemporaryDirectory(prefix="tether-failover-") as tmp:
        logs: list = []
        try:
            async with trio.open_nursery() as nursery:
                net = Net(tree, Path(tmp), nursery, logs=logs)
                try:
                    await open_net(net, orchestrators, drain_s)
                    return await _measure(net, scenario, tokens, after)
                finally:
                    for s in reversed(list(net.services.values())):
                        if s.process is not None and s.process.returncode is None:
                            s.process.kill()
                    nursery.cancel_scope.cancel()
        finally:
            for log in logs:
                log.close()
            keep = os.environ.get("TETHER_BENCH_LOGS")  # a folder to keep the logs in
            if keep:
                shutil.copytree(tmp, keep, dirs_exist_ok=True,
                                ignore=lambda _d, names: [n for n in names
                                                          if not n.endswith(".log")])


async def _measure(net: Net, scenario: str, tokens: int, after: int) -> dict[str, Any]:
    figures: dict[str, Any] = {"scenario": scenario, "tree": str(net.tree), "streams": STREAMS,
                               "tokens": tokens}
    async with connect_gateway(net.bootstrap, net.token,
                               gateway_key=bytes.fromhex(net.services["gateway"]
                                                         .ready["public_key"])) as client:
        await warm_up(net, client, 1 if scenario == "kill" else 2)
        streams = [Stream(f"{scenario}-{i}") for i in range(STREAMS)]
        enough = trio.Event()
        faulted_at: list[float] = []

        async def one(s: Stream) -> None:
            try:
                async for chunk in client.infer(request(s.cid, tokens)):
                    s.times.append(time.monotonic())
                    s.texts.append(chunk.payload.text)
                    if all(x.error or len(x.times) >= after for x in streams):
                        enough.set()
            except RpcError as exc:
                s.error = f"{exc.code.name}: {exc.message}"
                s.times.append(time.monotonic())
            if all(x.error or len(x.times) >= after for x in streams):
                enough.set()

        orchestrators = [s for s in net.services.values() if s.name.startswith("orchestrator")]
        async with trio.open_nursery() as nursery:
            for s in streams:
                nursery.start_soon(one, s)
            await enough.wait()
            victim = max(orchestrators, key=Service.cpu_s)
            assert victim.process is not None
            faulted_at.append(time.monotonic())
            victim.process.send_signal(signal.SIGKILL if scenario.startswith("kill")
                                       else signal.SIGTERM)
            figures["fault"] = f"{'SIGKILL' if scenario.startswith('kill') else 'SIGTERM'} " \
                               f"{victim.name}"
            # A new request while the fault is fresh.
            await trio.sleep(0.5)
            asked = time.monotonic()
            try:
                async with contextlib.aclosing(client.infer(request(f"{scenario}-next", 4))) as cs:
                    async for _ in cs:
                        break
                figures["next_request"] = {"ok": True, "s": round(time.monotonic() - asked, 2)}
            except RpcError as exc:
                figures["next_request"] = {"ok": False, "s": round(time.monotonic() - asked, 2),
                                           "error": f"{exc.code.name}: {exc.message}"[:300]}
        t0 = faulted_at[0]
        failed = [s for s in streams if s.error]
        figures["affected"] = len(failed)
        figures["errors"] = sorted({s.error[:300] for s in failed})
        figures["ended_after_fault_s"] = round(max(s.times[-1] for s in streams) - t0, 2)
        gaps = [b - a for s in streams for a, b in zip(s.times, s.times[1:], strict=False)
                if b >= t0]
        figures["longest_pause_s"] = round(max(gaps, default=0.0), 2)
        figures["chunks_at_fault"] = sorted({sum(1 for t in s.times if t < t0)
                                             for s in streams})[:3]
        complete = [s for s in streams if not s.error]
        figures["complete_and_identical"] = (
            len({"".join(s.texts) for s in complete}) <= 1
            and all(len([t for t in s.texts if t]) == tokens for s in complete))
        if victim.process.returncode is None and scenario == "term":
            with trio.move_on_after(60):
                await victim.process.wait()
        if scenario == "term":
            figures["stopped_after_s"] = round(time.monotonic() - t0, 2)
        # Outcomes are written behind the responses (the orchestrator's --write-behind-s,
        # 0.05 s): read them once that has passed.
        await trio.sleep(1.0)
        figures["jobs_after"] = net.jobs()
        if scenario == "kill":
            await trio.sleep(20)
            figures["jobs_20s_later"] = net.jobs()
            await net.start(Service(victim.name, victim.argv))  # the same key
            await trio.sleep(2)
            figures["jobs_after_restart"] = net.jobs()
            try:
                [c async for c in client.infer(request(streams[0].cid, tokens))]
                figures["retry_same_token"] = "ran"
            except RpcError as exc:
                figures["retry_same_token"] = f"{exc.code.name}: {exc.message}"[:300]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=["kill", "kill-peer", "term"])
    parser.add_argument("--tree", type=Path, default=REPO,
                        help="checkout whose services run (default: this one)")
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--after", type=int, default=40,
                        help="chunks every stream has when the fault comes")
    parser.add_argument("--drain-timeout-s", type=float, default=None)
    args = parser.parse_args()
    figures = trio.run(run_scenario, args.scenario, args.tree.resolve(), args.tokens,
                       args.after, args.drain_timeout_s)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
