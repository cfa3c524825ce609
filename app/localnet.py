"""A whole Tether network on one machine, as separate processes.

``LocalNet`` starts, in order: a loopback DHT testnet (a Python bootstrap node
and storage nodes), publishes the shipped models (signed, three local
replicas, registered in the SQLite metadata store), then the registry,
orchestrator, gateway and one CPU worker, each as its own ``tether <service>``
process; it waits for each one's ready line, issues a tenant token, and stops
everything (SIGTERM, then SIGKILL after a grace period) on exit.

Each service's logs (its stderr) go to ``<data-dir>/logs/<service>.log`` (``LocalNet.log_dir``)
unless ``verbose``, when they come to this process's stderr instead; ``progress`` is told
each long step (publishing, each service starting) in words.

With ``Metrics`` each service serves Prometheus metrics and its probes on a port of its
own (consecutive from a base port, or any free ones), named in ``LocalNet.metrics``. The
children never inherit ``TETHER_METRICS_PORT``/``TETHER_METRICS_HOST``: one port for
every process could only be bound by the first.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio

from p2p_transport.cenc import SocketAddress
from registry.catalog import Catalog
from registry.publish import REPO_ROOT, ModelPackage, publish_package
from tether import process
from tether.artifacts import ArtifactStore, LocalDirectoryStore
from tether.keys import KeyPair
from tether.metadata.store import MetadataStore, sqlite_url
from tether.net.swarm import parse_address

log = logging.getLogger("tether.up")

SHIPPED_MODELS = [REPO_ROOT / "worker" / "models" / n
                  for n in ("kjv-textgen", "all-minilm-l6-v2", "smollm2-135m-instruct")]
READY_TIMEOUT_S = 120.0
STOP_GRACE_S = 15.0
DEMO_TENANT = "demo"
#: The services of a local network, in start order (each with its metrics port, base+i).
SERVICES = ("registry", "orchestrator", "gateway", "worker")
#: What a child process never inherits from ``tether up``'s environment (given as flags).
NOT_INHERITED = ("TETHER_METRICS_PORT", "TETHER_METRICS_HOST")


@dataclass(frozen=True)
class Metrics:
    """Metrics and probes for every service: on ``host``, ports ``base``, ``base+1``, ...
    in ``SERVICES`` order (``base`` 0: any free port for each)."""

    host: str = "127.0.0.1"
    base: int = 0

    def flags(self, service: str) -> list[str]:
        port = self.base + SERVICES.index(service) if self.base else 0
        return ["--metrics-host", self.host, "--metrics-port", str(port)]


@dataclass
class ServiceProcess:
    name: str
    process: trio.Process
    ready: dict[str, Any] = field(default_factory=dict)
    #: Where its stderr goes (None: this process's stderr).
    log_file: Path | None = None


@dataclass
class LocalNet:
    data_dir: Path
    region: str = "local"
    bootstrap: list[SocketAddress] = field(default_factory=list)
    processes: list[ServiceProcess] = field(default_factory=list)
    published: list[str] = field(default_factory=list)
    token: str = ""
    #: Where the services' logs go (None: this process's stderr).
    log_dir: Path | None = None

    def _gateway_ready(self) -> dict[str, Any]:
        """The gateway's ready line (its key and the addresses of its edges)."""
        for p in self.processes:
            if p.name == "gateway":
                return p.ready
        raise LookupError("no gateway running")

    @property
    def gateway_key(self) -> str:
        return str(self._gateway_ready()["public_key"])

    @property
    def http_url(self) -> str:
        """The gateway's OpenAI-style HTTP API."""
        return str(self._gateway_ready().get("http", ""))

    @property
    def grpc_address(self) -> str:
        """The gateway's gRPC endpoint (HOST:PORT)."""
        return str(self._gateway_ready().get("grpc", ""))

    @property
    def metrics(self) -> dict[str, str]:
        """Each service's metrics and probes (``http://HOST:PORT``), when it serves them."""
        return {p.name: str(p.ready["metrics"]) for p in self.processes if "metrics" in p.ready}

    @property
    def bootstrap_text(self) -> str:
        return ",".join(f"{a.host}:{a.port}" for a in self.bootstrap)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


async def _read_json_line(
    proc: trio.Process, name: str, log_file: Path | None = None
) -> dict[str, Any]:
    assert proc.stdout is not None
    buf = b""
    where = f"its log: {log_file}" if log_file is not None else "its log above"
    with trio.fail_after(READY_TIMEOUT_S):
        while b"\n" not in buf:
            chunk = await proc.stdout.receive_some(4096)
            if not chunk:
                raise RuntimeError(f"{name} exited before it was ready (see {where})")
            buf += chunk
    return dict(json.loads(buf.split(b"\n", 1)[0]))


async def _start(
    nursery: trio.Nursery, net: LocalNet, name: str, argv: list[str]
) -> ServiceProcess:
    log.info("starting %s", name)
    log_file = net.log_dir / f"{name}.log" if net.log_dir is not None else None
    stderr = None
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        stderr = log_file.open("ab")
    try:
        proc: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                argv,
                stdout=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                stderr=stderr,
                cwd=str(REPO_ROOT),
                env=_env(),
                check=False,
            )
        )
    finally:
        if stderr is not None:
            stderr.close()  # the child has its own copy
    sp = ServiceProcess(name, proc, log_file=log_file)
    net.processes.append(sp)
    sp.ready = await _read_json_line(proc, name, log_file)
    log.info("%s ready: %s", name, sp.ready)
    return sp


def publish_shipped_models(data_dir: Path) -> list[str]:
    """Sign, replicate (3 local replicas) and register the shipped models."""
    store = MetadataStore(sqlite_url(data_dir / "metadata.db"))
    try:
        store.migrate()
        publisher = KeyPair.load_or_generate(data_dir / "keys" / "publisher.key")
        publisher.save_public(data_dir / "keys" / "publisher.pub")
        replicas = [LocalDirectoryStore(data_dir / "artifacts" / f"r{i}") for i in range(3)]
        artifacts = ArtifactStore(replicas, trusted_keys={publisher.public_key})
        catalog = Catalog(store)
        names = []
        for folder in SHIPPED_MODELS:
            record = publish_package(ModelPackage.load(folder), catalog, artifacts, publisher)
            names.append(f"{record.model.model_id}@{record.model.version}")
        return names
    finally:
        store.close()


def issue_token(data_dir: Path, tenant: str) -> str:
    store = MetadataStore(sqlite_url(data_dir / "metadata.db"))
    try:
        store.migrate()
        return store.issue_token(tenant, label="tether up")
    finally:
        store.close()


@asynccontextmanager
async def python_testnet(nodes: int = 3) -> AsyncIterator[list[SocketAddress]]:
    """A loopback DHT (bootstrap + storage nodes) in a child process, until the block ends."""
    net = LocalNet(data_dir=Path("."))
    async with trio.open_nursery() as nursery:
        try:
            dht = await _start(
                nursery,
                net,
                "dht",
                [sys.executable, "-m", "p2p_transport", "testnet", "--host", "127.0.0.1",
                 "--nodes", str(nodes)],
            )
            yield [parse_address(b) for b in dht.ready["bootstrap"]]
        finally:
            with trio.CancelScope(shield=True):
                await _stop_all(net)
            nursery.cancel_scope.cancel()


def service_args(
    data_dir: Path, region: str, bootstrap: str, *, http_port: int = 0, grpc_port: int = 0,
    metrics: Metrics | None = None,
) -> dict[str, list[str]]:
    """Each service's module and arguments, in start order."""
    common = ["--region", region, "--data-dir", str(data_dir), "--bootstrap", bootstrap]
    extra = {
        "gateway": ["--http-port", str(http_port), "--grpc-port", str(grpc_port)],
        "worker": ["--worker-id", "worker-1"],
        # Its drain ends before the stop's grace period does.
        "orchestrator": ["--drain-timeout-s", str(STOP_GRACE_S - 5)],
    }
    return {
        f"{name}.main": [*common, *extra.get(name, []), *(metrics.flags(name) if metrics else [])]
        for name in SERVICES
    }


def check_config(
    data_dir: Path, *, region: str, http_port: int = 0, grpc_port: int = 0,
    metrics: Metrics | None = None,
) -> None:
    """Check everything ``local_network`` would start with (region, data dir, metadata
    store, each service's settings and ``TETHER_*`` values) before anything is published
    or started; a ``process.ConfigError`` for the first thing that is wrong."""
    process.region(region)
    process.data_dir_from(str(data_dir))
    process.check_store(sqlite_url(data_dir / "metadata.db"))
    placeholder = "127.0.0.1:1"  # the DHT's address is known only once it runs
    argv = service_args(data_dir, region, placeholder, http_port=http_port,
                        grpc_port=grpc_port, metrics=metrics)
    for module, args in argv.items():
        importlib.import_module(module).configure(args)


@asynccontextmanager
async def local_network(
    data_dir: Path,
    *,
    region: str = "local",
    http_port: int = 0,
    grpc_port: int = 0,
    metrics: Metrics | None = None,
    verbose: bool = True,
    progress: Callable[[str], None] = lambda step: None,
) -> AsyncIterator[LocalNet]:
    """The whole network as child processes; the gateway also serves HTTP and gRPC on
    127.0.0.1:``http_port`` and ``grpc_port`` (0: any free port; see ``LocalNet``);
    with ``metrics``, every service its metrics and probes. Unless ``verbose``, the
    services log to ``<data_dir>/logs/``; ``progress`` hears each step."""
    await trio.to_thread.run_sync(
        partial(check_config, data_dir, region=region, http_port=http_port,
                grpc_port=grpc_port, metrics=metrics)
    )
    net = LocalNet(data_dir=data_dir, region=region,
                   log_dir=None if verbose else data_dir / "logs")
    py = sys.executable
    async with trio.open_nursery() as nursery:
        try:
            progress("starting a loopback DHT")
            dht = await _start(
                nursery, net, "dht", [py, "-m", "p2p_transport", "testnet", "--host", "127.0.0.1"]
            )
            net.bootstrap = [parse_address(b) for b in dht.ready["bootstrap"]]
            progress(f"publishing {len(SHIPPED_MODELS)} models (signed, 3 replicas)")
            net.published = await trio.to_thread.run_sync(publish_shipped_models, data_dir)
            net.token = await trio.to_thread.run_sync(issue_token, data_dir, DEMO_TENANT)
            services = service_args(data_dir, region, net.bootstrap_text,
                                    http_port=http_port, grpc_port=grpc_port, metrics=metrics)
            for module, args in services.items():
                progress(f"starting the {module.split('.')[0]}")
                await _start(nursery, net, module.split(".")[0], [py, "-m", module, *args])
            yield net
        finally:
            with trio.CancelScope(shield=True):
                await _stop_all(net)
            nursery.cancel_scope.cancel()


async def _stop_all(net: LocalNet) -> None:
    """Stop services newest first, each with SIGTERM and a grace period before SIGKILL;
    the DHT goes last so that services can still unannounce themselves."""
    for sp in reversed(net.processes):
        if sp.process.returncode is None:
            sp.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(STOP_GRACE_S):
            await sp.process.wait()
        if sp.process.returncode is None:
            log.warning("%s did not stop in %s s; killing it", sp.name, STOP_GRACE_S)
            sp.process.kill()
            await sp.process.wait()
