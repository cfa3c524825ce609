"""Wiring for service tests: a registry, one or more orchestrators, a gateway
and N workers on one network, with a real SQLite metadata store.

``ScriptedEngine`` is a test double of the execution engine: it streams
numbered text pieces (`` w0 w1 ...``, ended at the request's stop strings as the
real engine ends them) with a virtual-time delay so placement, shedding and
failure paths can be tested without model weights. The real engines are
tested in ``tests/model_plane`` and end to end in ``tests/integration``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import trio
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from gateway import assembly as gateway_assembly
from gateway.ratelimit import TokenBuckets
from gateway.service import GatewayService
from orchestrator import assembly as orchestrator_assembly
from orchestrator.breaker import CircuitBreakers
from orchestrator.control import ControlService
from orchestrator.discovery import DiscoverySub
from orchestrator.rollout import Rollouts
from orchestrator.service import OrchestratorService
from p2p_transport.cenc import SocketAddress
from registry import assembly as registry_assembly
from registry.catalog import Catalog
from registry.service import RegistryService
from tether import telemetry, topics
from tether.admission import Admissions
from tether.assembly import Assembly
from tether.callers import CallerPolicy
from tether.keys import KeyPair
from tether.metadata.store import MetadataStore
from tether.net import Network, dial
from tether.net.local import LocalHub, LocalNetwork
from tether.net.swarm import SwarmNetwork
from tether.rpc import Handler, RpcConnection
from tether.v1 import health_pb2, infer_pb2, presence_pb2, registry_pb2, services_rpc
from worker import assembly as worker_assembly
from worker.engine.sampling import StopFilter
from worker.service import WorkerConfig, WorkerService

EPOCH_MS = 1_800_000_000_000
MODEL = "tiny-lm"
VERSION = "1.0"


def virtual_ms() -> int:
    """Wall-clock milliseconds derived from trio's (mock) clock."""
    return EPOCH_MS + int(trio.current_time() * 1000)


class ScriptedEngine:
    """Test double of the execution engine (see the module docstring)."""

    def __init__(
        self, models: list[tuple[str, str]], *, step_s: float = 0.1, word: str = "w"
    ) -> None:
        self.models = models
        self.step_s = step_s
        self.word = word
        self.requests: list[infer_pb2.Infer.Request] = []
        self.started = 0
        self.steps = 0
        #: Streams generating now (a cancelled call's stream must stop at once), and an
        #: event set whenever that falls to zero.
        self.active = 0
        self.idle = trio.Event()
        self.fail_with: Exception | None = None
        self.running = trio.Event()
        self.gate: trio.Event | None = None

    def supported(self) -> list[presence_pb2.ModelKey]:
        return [presence_pb2.ModelKey(model_id=m, version=v) for m, v in self.models]

    def cache_manifest(self) -> list[health_pb2.CachedModel]:
        return [health_pb2.CachedModel(model_id=m, version=v) for m, v in self.models]

    async def stream(
        self, request: infer_pb2.Infer.Request
    ) -> AsyncIterator[tuple[infer_pb2.Payload, infer_pb2.Usage | None]]:
        self.started += 1
        self.requests.append(request)
        self.running.set()
        if self.fail_with is not None:
            raise self.fail_with
        n = request.params.max_tokens or 4
        self.active += 1
        if self.active == 1:
            self.idle = trio.Event()
        stop = StopFilter(request.params.stop)  # the real engine's stop strings
        try:
            for i in range(n):
                if self.gate is not None:
                    await self.gate.wait()
                await trio.sleep(self.step_s)
                usage = None
                text = stop.push(f" {self.word}{i}")
                if i == n - 1 or stop.stopped:
                    text += stop.flush()
                    usage = infer_pb2.Usage(
                        tenant_id=request.tenant_id,
                        model_id=request.model_id,
                        version=request.version,
                        output_tokens=i + 1,
                    )
                self.steps += 1
                yield infer_pb2.Payload(text=text), usage
                if stop.stopped:
                    return
        finally:
            self.active -= 1
            if not self.active:
                self.idle.set()


def model_record(publisher: KeyPair, model: str = MODEL, version: str = VERSION):
    record = registry_pb2.ModelRecord(publisher_key=publisher.public_key)
    record.model.model_id = model
    record.model.version = version
    record.capabilities.task = registry_pb2.TASK_TEXT_GENERATION
    record.artifacts.add(digest="ab" * 32, size_bytes=1, format="onnx", role="model")
    return record


class TestNetwork(Network, Protocol):
    """A network the harness can also start and give handlers to."""

    handlers: dict[str, Handler]

    def running(self) -> AbstractAsyncContextManager[object]: ...


NetworkFactory = Callable[[KeyPair, dict[str, Handler]], TestNetwork]


def local_networks() -> NetworkFactory:
    """In-memory networks on one shared hub (the test double)."""
    hub = LocalHub()
    return lambda keypair, handlers: LocalNetwork(hub, keypair, handlers)


def swarm_networks(bootstrap: list[SocketAddress]) -> NetworkFactory:
    """Real Hyperswarm peers on a loopback testnet."""
    return lambda keypair, handlers: SwarmNetwork(keypair, handlers, bootstrap=bootstrap)


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Orchestrator:
    """One orchestrator of the fleet: its service, network and what stops it."""

    keypair: KeyPair
    service: OrchestratorService
    net: TestNetwork
    discovery: DiscoverySub
    scope: trio.CancelScope

    @property
    def key(self) -> bytes:
        return self.keypair.public_key


@dataclass
class Fleet:
    make_net: NetworkFactory
    clock_ms: Callable[[], int]
    store: MetadataStore
    region: str
    nursery: trio.Nursery
    watch_regions: tuple[str, ...] = ()
    breakers: Callable[[], CircuitBreakers] = CircuitBreakers
    #: The first orchestrator's key (the one operator tests talk to).
    orchestrator_key: bytes = b""
    #: Orchestrators by key; workers take work from these only.
    orchestrators: dict[bytes, Orchestrator] = field(default_factory=dict)
    worker_callers: CallerPolicy = field(
        default_factory=lambda: CallerPolicy(role="orchestrator"))
    gateway_key: KeyPair = field(default_factory=KeyPair.generate)
    operator_key: KeyPair = field(default_factory=KeyPair.generate)
    workers: dict[str, WorkerService] = field(default_factory=dict)
    worker_scopes: dict[str, trio.CancelScope] = field(default_factory=dict)
    catalog: Catalog | None = None
    registry_key: KeyPair | None = None
    #: Registry replicas by key: all serve ``catalog`` on the region's registry topic.
    registry_scopes: dict[bytes, trio.CancelScope] = field(default_factory=dict)
    discovery: DiscoverySub = field(init=False)
    networks: list[TestNetwork] = field(default_factory=list)
    gateway_net: TestNetwork = field(init=False)
    orchestrator_net: TestNetwork = field(init=False)
    gateway_service: GatewayService = field(init=False)
    orchestrator_service: OrchestratorService = field(init=False)
    client_net: TestNetwork = field(init=False)
    operator_net: TestNetwork = field(init=False)
    #: What the orchestrators' and the gateway's methods see (``spied``), by method.
    spies: Mapping[str, list[bytes]] = field(default_factory=dict)

    async def gateway(self) -> services_rpc.GatewayStub:
        with trio.fail_after(30):
            peer = await dial(self.client_net, self.gateway_net.public_key)
        return services_rpc.GatewayStub(peer.rpc)

    async def _as_operator(self) -> RpcConnection:
        """The operator's (a known caller's) connection to the orchestrator."""
        with trio.fail_after(30):
            peer = await dial(self.operator_net, self.orchestrator_key)
        return peer.rpc

    async def orchestrator(self) -> services_rpc.OrchestratorStub:
        return services_rpc.OrchestratorStub(await self._as_operator())

    async def control(self) -> services_rpc.ControlStub:
        """The orchestrator's control surface."""
        return services_rpc.ControlStub(await self._as_operator())

    async def add_orchestrator(self, keypair: KeyPair | None = None) -> Orchestrator:
        """Start an orchestrator (another, or ``keypair``'s again after it was killed)."""
        keypair = keypair or KeyPair.generate()
        self.worker_callers.keys.add(keypair.public_key)
        net = self.make_net(keypair, {})
        discovery = DiscoverySub(
            net, admissions=Admissions.from_store(self.store), clock_ms=self.clock_ms
        )
        service = OrchestratorService(
            callers=CallerPolicy(
                [self.gateway_key.public_key, self.operator_key.public_key], role="gateway"),
            network=net,
            discovery=discovery,
            store=self.store,
            region=self.region,
            registry_topic=topics.registry(self.region),
            rollouts=Rollouts(min_requests=5),
            breakers=self.breakers(),
        )
        control = ControlService(
            service.rollouts,
            discovery,
            region=self.region,
            operators=CallerPolicy([self.operator_key.public_key], role="operator"),
        )
        assembly = orchestrator_assembly.assemble(
            service, control, discovery, (self.region, *self.watch_regions),
            wrap=lambda handlers: spied(handlers, self.spies),
        )
        scope = await self.nursery.start(_run_node, self.networks, net, assembly)
        o = Orchestrator(keypair, service, net, discovery, scope)
        self.orchestrators[keypair.public_key] = o
        return o

    async def settled(self) -> None:
        """Until every orchestrator has written what it wrote behind (finished jobs'
        outcomes and usage): the store then shows them."""
        for o in list(self.orchestrators.values()):
            await o.service.writer.flush()

    def kill_orchestrator(self, key: bytes) -> None:
        """What SIGKILL does to an orchestrator: it records nothing more and its
        connections drop."""
        o = self.orchestrators.pop(key)
        o.service.halt()
        o.scope.cancel()

    def freeze_orchestrator(self, key: bytes) -> None:
        """What SIGKILL looks like from the other end of a UDP transport: nothing the
        orchestrator would send arrives any more, yet no connection closes."""
        o = self.orchestrators.pop(key)
        o.service.halt()

        async def lost(_message: bytes) -> None:
            await trio.sleep_forever()

        for peer in o.net.peers():
            peer.rpc.stream.send_message = lost  # type: ignore[method-assign,assignment]
        # Nor does a new connection to it get anywhere (a gateway's lookup may try one).
        hub = getattr(o.net, "hub", None)
        if hub is not None:
            hub.remove(key)

    def token(self, tenant: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.store.issue_token(tenant)}"}

    async def add_worker(
        self,
        worker_id: str,
        *,
        region: str | None = None,
        engine: ScriptedEngine | None = None,
        admitted: bool = True,
        keypair: KeyPair | None = None,
        **config: object,
    ) -> WorkerService:
        """Start a worker; its key is admitted (``tether admit``) unless ``admitted`` is
        False, in which case it is a stranger with a fresh key."""
        region = region or self.region
        engine = engine or ScriptedEngine([(MODEL, VERSION)])
        keypair = keypair or KeyPair.generate()
        if admitted:
            self.store.admit_worker(keypair.public_key, name=worker_id)
            await self.discovery.admissions.reload()
        service = WorkerService(
            WorkerConfig(worker_id=worker_id, region=region, **config),  # type: ignore[arg-type]
            engine,
            keypair,
            clock_ms=self.clock_ms,
            callers=self.worker_callers,
        )
        net = self.make_net(keypair, {})
        scope = await self.nursery.start(
            _run_node, self.networks, net, worker_assembly.assemble(service, region, engine.models)
        )
        self.workers[worker_id] = service
        self.worker_scopes[worker_id] = scope
        return service

    def kill_worker(self, worker_id: str) -> None:
        self.worker_scopes[worker_id].cancel()

    async def add_registry(self, keypair: KeyPair | None = None) -> KeyPair:
        """Start a registry replica (again, when given the key of one that was stopped)."""
        assert self.catalog is not None
        keypair = keypair or KeyPair.generate()
        net = self.make_net(keypair, {})
        self.registry_scopes[keypair.public_key] = await self.nursery.start(
            _run_node, self.networks, net,
            registry_assembly.assemble(RegistryService(self.catalog), self.region),
        )
        return keypair

    def stop_registry(self, keypair: KeyPair) -> None:
        self.registry_scopes.pop(keypair.public_key).cancel()



def spied(handlers: dict[str, Handler], spies: Mapping[str, list[bytes]]) -> dict[str, Handler]:
    """``handlers`` with each method named in ``spies`` (e.g. ``/tether.v1.Orchestrator/Submit``)
    recording the serialized request and every streamed response into its list (each
    message of a batch on its own): what that service sees of the traffic."""
    out = dict(handlers)
    for method, seen in spies.items():
        if method not in out:
            continue
        handler = out[method]

        async def recorded(request, context, handler=handler, seen=seen):
            seen.append(request.SerializeToString())
            async for response in handler.func(request, context):
                seen.extend(handler.serialize_responses(response))
                yield response

        out[method] = Handler(handler.full_name, handler.spec, recorded)
    return out


async def _run_node(
    networks: list[TestNetwork],
    net: TestNetwork,
    assembly: Assembly | None = None,
    *,
    task_status: trio.TaskStatus[trio.CancelScope],
) -> None:
    """Run ``net`` with a service's wiring (its ``assemble``; none: a bare client) until the
    returned scope is cancelled."""
    networks.append(net)
    with trio.CancelScope() as scope:
        async with assembly.running(net) if assembly is not None else net.running():
            task_status.started(scope)
            await trio.sleep_forever()


@asynccontextmanager
async def fleet(
    tmp_path: Path,
    *,
    region: str = "eu-west",
    rate: float = 100.0,
    burst: int = 100,
    extra: Callable[[Catalog, KeyPair], None] | None = None,
    watch_regions: tuple[str, ...] = (),
    networks: NetworkFactory | None = None,
    clock_ms: Callable[[], int] = virtual_ms,
    breaker_open_s: float = 30.0,
    slow_first_chunk_s: float | None = None,
    spies: Mapping[str, list[bytes]] | None = None,
    orchestrators: int = 1,
) -> AsyncIterator[Fleet]:
    """Registry, orchestrators, gateway and a client; workers come with ``add_worker``.

    ``networks`` defaults to the in-memory double; ``clock_ms`` (signing and store
    time) defaults to one derived from trio's clock, for the virtual-time tests;
    ``spies`` records what the orchestrator's and gateway's methods see (``spied``).
    """
    spies = spies or {}
    make_net = networks or local_networks()
    store = MetadataStore.sqlite(tmp_path / "meta.db", clock=clock_ms)
    store.migrate()
    publisher = KeyPair.generate()
    catalog = Catalog(store, clock=clock_ms)
    catalog.publish(model_record(publisher))
    if extra is not None:
        extra(catalog, publisher)
    async with trio.open_nursery() as nursery:
        f = Fleet(make_net, clock_ms, store, region, nursery, spies=spies, catalog=catalog)
        f.registry_key = await f.add_registry()

        f.watch_regions = watch_regions
        f.breakers = functools.partial(
            CircuitBreakers,
            failure_threshold=3,
            open_s=breaker_open_s,
            slow_first_chunk_s=slow_first_chunk_s,
            latency_window=3,
            min_samples=3,
        )
        first = await f.add_orchestrator()
        for _ in range(orchestrators - 1):
            await f.add_orchestrator()
        f.orchestrator_key = first.key
        f.discovery = first.discovery
        f.orchestrator_net = first.net
        gateway_key, operator_key = f.gateway_key, f.operator_key

        gateway_net = make_net(gateway_key, {})
        gateway = GatewayService(
            network=gateway_net,
            store=store,
            region=region,
            buckets=TokenBuckets(rate=rate, burst=burst),
            clock_ms=clock_ms,
        )
        # Readiness is checked by the tests that look at it (check_ready), not every few
        # seconds of virtual time.
        await nursery.start(_run_node, f.networks, gateway_net, gateway_assembly.assemble(
            gateway, region, wrap=lambda handlers: spied(handlers, spies), watch_readiness=False,
        ))
        f.gateway_net = gateway_net
        f.gateway_service = gateway
        f.orchestrator_service = first.service
        client_net = make_net(KeyPair.generate(), {})
        await nursery.start(_run_node, f.networks, client_net)
        f.client_net = client_net
        operator_net = make_net(operator_key, {})
        await nursery.start(_run_node, f.networks, operator_net)
        f.operator_net = operator_net
        try:
            yield f
        finally:
            # Leave the network while it can still talk (unannounce, close peers); a
            # cancelled network cannot reach the DHT any more.
            with trio.move_on_after(10):
                for net in f.networks:
                    await net.close()
            nursery.cancel_scope.cancel()
            store.close()


#: One reader for the process: the meter provider is installed once per process, so
#: every metrics test reads through this one and compares before with after. (It lives
#: here, not in a test module, so that it is one object however tests are imported.)
READER = InMemoryMetricReader()


def metrics_reader() -> InMemoryMetricReader:
    telemetry.setup_metrics("tests", readers=[READER])
    return READER


def points(reader: InMemoryMetricReader, name: str) -> list:
    data = reader.get_metrics_data()
    if data is None:  # nothing recorded yet
        return []
    return [
        point
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]
