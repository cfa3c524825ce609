"""A Tether network on hosts of the network lab, for the failover, region and churn tests and
``bench/lab_resilience.py``: every service a ``python -m <service>.main`` process on a lab
host of its own, the Metadata Store a PostgreSQL server on another (``Lab.postgres``), the
DHT a Python testnet on a third.

The services share one folder for keys and model artifacts, as a network shares its
configuration (services in one data folder trust each other's keys; the README's
``--allow-caller`` path across data folders is ``tests/lab/test_across_hosts.py``'s);
everything else crosses the lab's network: Hyperswarm between hosts, SQL to the store's host.
Clients run inside a lab host too (``tests/lab/stream_client.py``): the machine's own
namespace cannot reach lab addresses.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.lab_env import ROOT, netlab

MODEL = "kjv-textgen"
READY_S = 180.0
#: Job states (``tether.v1.JobState``) of jobs still running.
ACTIVE = {"1": "RESERVED", "2": "DISPATCHED", "3": "STREAMING"}
STATES = {**ACTIVE, "4": "SUCCEEDED", "5": "FAILED", "6": "CANCELLED"}

_PUBLISH = """
import sys
from pathlib import Path
from registry.catalog import Catalog
from registry.publish import REPO_ROOT, ModelPackage, publish_package
from tether.artifacts import ArtifactStore, LocalDirectoryStore
from tether.keys import KeyPair
from tether.metadata.store import MetadataStore
folder, url = Path(sys.argv[1]), sys.argv[2]
store = MetadataStore(url)
store.migrate()
publisher = KeyPair.load_or_generate(folder / "keys" / "publisher.key")
replicas = [LocalDirectoryStore(folder / "artifacts" / f"r{i}") for i in range(3)]
artifacts = ArtifactStore(replicas, trusted_keys={publisher.public_key})
package = ModelPackage.load(REPO_ROOT / "worker" / "models" / "kjv-textgen")
publish_package(package, Catalog(store), artifacts, publisher)
print(store.issue_token("lab"))
"""


@dataclass
class Service:
    name: str
    host: netlab.Host
    argv: list[str]
    process: subprocess.Popen[Any]
    ready: dict[str, Any]

    @property
    def key(self) -> str:
        return str(self.ready["public_key"])

    def kill(self) -> None:
        """SIGKILL: the process closes nothing, as a machine that dies."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)


@dataclass
class TetherNet:
    """Services on lab hosts; see the module doc."""

    lab: netlab.Lab
    folder: Path
    store: netlab.Postgres
    store_host: netlab.Host
    bootstrap: str = ""
    token: str = ""
    services: dict[str, Service] = field(default_factory=dict)

    @classmethod
    def open(cls, lab: netlab.Lab, folder: Path, *, store_host: str = "db",
             dht_host: str = "dht", bootstrap: str = "") -> TetherNet:
        """The store (PostgreSQL on ``store_host``, the model published, a token issued)
        and the DHT (a testnet on ``dht_host``, unless ``bootstrap`` names one)."""
        db = lab.hosts.get(store_host) or lab.add_host(store_host)
        net = cls(lab, folder, lab.postgres(db), db)
        (folder / "logs").mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            db.argv([sys.executable, "-c", _PUBLISH, str(folder), net.store.url]),
            cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=READY_S, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        net.token = done.stdout.strip().splitlines()[-1]
        if bootstrap:
            net.bootstrap = bootstrap
            return net
        dht = lab.hosts.get(dht_host) or lab.add_host(dht_host)
        proc = net._spawn("dht", dht, ["-m", "p2p_transport", "testnet", "--host", dht.address,
                                       "--nodes", "4"])
        net.bootstrap = ",".join(json.loads(netlab.read_line(proc, READY_S))["bootstrap"])
        return net

    def _spawn(self, name: str, host: netlab.Host, args: list[str]) -> subprocess.Popen[Any]:
        with open(self.folder / "logs" / f"{name}.log", "ab") as log:
            return self.lab.python(host, args, env=_env(), stdout=subprocess.PIPE, stderr=log,
                                   stdin=subprocess.DEVNULL)

    def common(self, host: netlab.Host, region: str) -> list[str]:
        return ["--region", region, "--bootstrap", self.bootstrap, "--host", host.address,
                "--data-dir", str(self.folder), "--metadata-url", self.store.url,
                "--log-level", "INFO"]

    def spawn(self, name: str, service: str, *, host: str | None = None,
              region: str = "us-east", extra: tuple[str, ...] = ()) -> Service:
        """``python -m <service>.main`` on lab host ``host`` (default: one named ``name``),
        its key ``<folder>/keys/<name>.key``; ``ready()`` waits for its ready line."""
        h = self.lab.hosts.get(host or name) or self.lab.add_host(host or name)
        args = ["-m", f"{service}.main", *self.common(h, region), *extra]
        if service != "worker":
            args += ["--key-file", str(self.folder / "keys" / f"{name}.key")]
        self.services[name] = Service(name, h, args, self._spawn(name, h, args), {})
        return self.services[name]

    def ready(self, *names: str) -> None:
        """Wait for the ready line of each service named (started with ``spawn``)."""
        for name in names:
            service = self.services[name]
            try:
                service.ready = json.loads(netlab.read_line(service.process, READY_S))
            except netlab.LabError:
                raise AssertionError(f"{name} did not start: {self.log(name)}") from None

    def start(self, name: str, service: str, *, host: str | None = None,
              region: str = "us-east", extra: tuple[str, ...] = ()) -> Service:
        """``spawn`` and ``ready``."""
        self.spawn(name, service, host=host, region=region, extra=extra)
        self.ready(name)
        return self.services[name]

    def restart(self, name: str) -> Service:
        """``name`` again, with its key, on its host."""
        old = self.services[name]
        proc = self._spawn(name, old.host, old.argv)
        ready = json.loads(netlab.read_line(proc, READY_S))
        self.services[name] = Service(name, old.host, old.argv, proc, ready)
        return self.services[name]

    def worker(self, worker_id: str, *, region: str = "us-east", host: str | None = None,
               slots: int = 16, extra: tuple[str, ...] = (), wait: bool = True) -> Service:
        self.spawn(worker_id, "worker", host=host, region=region, extra=(
            "--worker-id", worker_id, "--model", MODEL, "--slots", str(slots), "--max-batch",
            str(slots), "--queue-limit", "32", "--cpu", *extra))
        if wait:
            self.ready(worker_id)
        return self.services[worker_id]

    def log(self, name: str) -> str:
        path = self.folder / "logs" / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}"
                         for p in sorted((self.folder / "logs").iterdir()))

    # -- the store, read from its own host ----------------------------------------------

    def sql(self, query: str) -> list[list[str]]:
        out = self.store.sql(self.store_host, query)
        return [line.split("|") for line in out.splitlines() if line]

    def jobs(self, like: str = "%") -> dict[str, str]:
        """Correlation id -> state name of the jobs whose id is ``LIKE like``."""
        rows = self.sql(f"SELECT correlation_id, state FROM jobs WHERE correlation_id LIKE "
                        f"'{like}'")
        return {cid: STATES.get(state, state) for cid, state in rows}

    def wait_jobs_finished(self, like: str = "%", timeout: float = 90.0) -> dict[str, str]:
        """The jobs once none is still running (or as they are at ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            jobs = self.jobs(like)
            if not any(s in ACTIVE.values() for s in jobs.values()) or \
                    time.monotonic() > deadline:
                return jobs
            time.sleep(1.0)

    # -- clients --------------------------------------------------------------------------

    def client(self, host: str, gateways: list[str], *args: str,
               region: str = "us-east") -> subprocess.Popen[str]:
        """``tests/lab/stream_client.py`` on lab host ``host``, through ``gateways`` (names,
        first preferred); reads its JSON lines with ``netlab.read_json_line``."""
        h = self.lab.hosts.get(host) or self.lab.add_host(host)
        argv = [str(ROOT / "tests" / "lab" / "stream_client.py"), "--bootstrap", self.bootstrap,
                "--host", h.address, "--token", self.token, "--region", region]
        for g in gateways:
            argv += ["--gateway", self.services[g].key]
        with open(self.folder / "logs" / f"client-{host}.log", "ab") as log:
            return self.lab.python(h, [*argv, *args], env=_env(), stdout=subprocess.PIPE,
                                   stderr=log, stdin=subprocess.PIPE, text=True)


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for name in ("TETHER_CONFIG", "TETHER_METADATA_URL", "TETHER_METADATA_READ_URL"):
        env.pop(name, None)
    return env


def until(check: Any, timeout: float, what: str, every: float = 0.5) -> Any:
    """Poll ``check()`` until it returns something truthy (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout} s (last: {got!r})")
        time.sleep(every)


# -- a DHT of many nodes, Python and Node, for churn ---------------------------------------


@dataclass
class DhtGroup:
    """A process of DHT nodes on one host: ``kind`` "python" or "node"."""

    kind: str
    host: netlab.Host
    process: subprocess.Popen[Any]
    nodes: list[str]


@dataclass
class LabDht:
    """A bootstrap node on its own host and groups of persistent nodes (Python storage
    nodes, ``tests/lab/dht_nodes.py``; Node ``hyperdht`` nodes,
    ``tests/lab/node/dht_nodes.mjs``) spread over a few hosts, several processes each."""

    lab: netlab.Lab
    bootstrap: str
    per_group: int
    groups: list[DhtGroup] = field(default_factory=list)
    hosts: list[netlab.Host] = field(default_factory=list)
    #: The ``node`` executable (``tests.node_env.require_node``).
    node: str = "node"

    @classmethod
    def open(cls, lab: netlab.Lab, *, hosts: int = 5, per_group: int = 3,
             node: str = "node") -> LabDht:
        """``hosts`` hosts, each with a Python and a Node group of ``per_group`` nodes."""
        boot = lab.add_host("dht-boot")
        proc = lab.python(boot, ["-m", "p2p_transport", "bootstrap", "--host", boot.address,
                                 "--port", "49737"], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, env=_env())
        netlab.read_line(proc, READY_S, want="listening")
        dht = cls(lab, f"{boot.address}:49737", per_group)
        dht.hosts = [lab.add_host(f"dht-{i}") for i in range(hosts)]
        dht.node = node
        started = [dht._spawn(kind, h) for h in dht.hosts for kind in ("python", "node")]
        for group in started:
            dht._ready(group)
        return dht

    def _spawn(self, kind: str, host: netlab.Host) -> DhtGroup:
        here = ROOT / "tests" / "lab"
        if kind == "python":
            argv = [sys.executable, str(here / "dht_nodes.py")]
        else:
            argv = [self.node, str(here / "node" / "dht_nodes.mjs")]
        proc = self.lab.run(host, [*argv, host.address, self.bootstrap, str(self.per_group)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=_env())
        group = DhtGroup(kind, host, proc, [])
        self.groups.append(group)
        return group

    def _ready(self, group: DhtGroup) -> None:
        group.nodes = list(json.loads(netlab.read_line(group.process, READY_S))["nodes"])

    def alive(self) -> list[DhtGroup]:
        return [g for g in self.groups if g.process.poll() is None]

    def size(self) -> int:
        return sum(len(g.nodes) for g in self.alive())

    def churn(self, fraction: float = 0.3) -> tuple[list[DhtGroup], list[DhtGroup]]:
        """SIGKILL whole groups, Python and Node in turn, until ``fraction`` of the nodes
        are gone; start as many fresh groups of the same kinds on the same hosts (new
        ports, so new node ids). Returns (killed, started) at once: ``joined(started)``
        waits for the new ones to bootstrap."""
        alive = self.alive()
        want = round(fraction * sum(len(g.nodes) for g in alive))
        by_kind = {k: [g for g in alive if g.kind == k] for k in ("python", "node")}
        killed: list[DhtGroup] = []
        turn = 0
        while sum(len(g.nodes) for g in killed) < want:
            kinds = ("python", "node")
            pool = by_kind[kinds[turn % 2]] or by_kind[kinds[(turn + 1) % 2]]
            killed.append(pool.pop(0))
            turn += 1
        for group in killed:
            group.process.kill()
            group.process.wait(timeout=30)
        return killed, [self._spawn(g.kind, g.host) for g in killed]

    def joined(self, groups: list[DhtGroup]) -> None:
        for group in groups:
            self._ready(group)
