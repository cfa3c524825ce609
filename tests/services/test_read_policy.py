"""What unauthenticated peers may read (docs/security.md, "Who may read what"): a
worker's health and presence only its known orchestrators; the registry's catalog
only known services and admitted workers. Everyone else gets PERMISSION_DENIED."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from registry.catalog import Catalog
from registry.service import RegistryService
from tests.services.harness import MODEL, ScriptedEngine, model_record
from tether import blocking
from tether.admission import Admissions
from tether.callers import CallerPolicy
from tether.keys import KeyPair
from tether.metadata.store import MetadataStore
from tether.net.local import LocalHub, LocalNetwork
from tether.rpc import RpcError, StatusCode, collect_handlers
from tether.rpc.connection import RpcConnection
from tether.v1 import services_pb2, services_rpc
from worker.service import WorkerConfig, WorkerService


async def as_peer(hub: LocalHub, caller: KeyPair, server: bytes,
                  body: Callable[[RpcConnection], Awaitable[None]]) -> None:
    net = LocalNetwork(hub, caller, {})
    async with net.running():
        await body((await net.connect(server)).rpc)


async def denied(call: Awaitable[object]) -> str:
    with pytest.raises(RpcError) as info:
        await call
    assert info.value.code == StatusCode.PERMISSION_DENIED
    return info.value.message


def test_a_workers_health_and_presence_are_for_its_orchestrators_only() -> None:
    orchestrator, stranger, worker_key = (KeyPair.generate() for _ in range(3))
    worker = WorkerService(
        WorkerConfig(worker_id="w1", region="eu-west"),
        ScriptedEngine([(MODEL, "1.0")]),
        worker_key,
        callers=CallerPolicy([orchestrator.public_key], role="orchestrator"),
    )
    hub = LocalHub()

    async def from_stranger(rpc: RpcConnection) -> None:
        stub = services_rpc.WorkerStub(rpc)
        message = await denied(stub.GetHealth(services_pb2.GetHealthRequest(), timeout=5))
        assert "only for known orchestrators" in message

        async def watch() -> None:
            async with stub.WatchPresence(services_pb2.WatchPresenceRequest()) as envelopes:
                async for _ in envelopes:
                    raise AssertionError("a stranger got a heartbeat")

        await denied(watch())

    async def from_orchestrator(rpc: RpcConnection) -> None:
        stub = services_rpc.WorkerStub(rpc)
        report = await stub.GetHealth(services_pb2.GetHealthRequest(), timeout=5)
        assert report.worker_id == "w1"
        async with stub.WatchPresence(services_pb2.WatchPresenceRequest()) as envelopes:
            async for envelope in envelopes:
                assert envelope.signer_key == worker_key.public_key
                break

    async def main() -> None:
        net = LocalNetwork(hub, worker_key, collect_handlers(worker))
        async with net.running():
            await as_peer(hub, stranger, worker_key.public_key, from_stranger)
            await as_peer(hub, orchestrator, worker_key.public_key, from_orchestrator)

    trio.run(main)


def test_the_catalog_is_for_known_services_and_admitted_workers_only(tmp_path: Path) -> None:
    service, worker, stranger, registry_key = (KeyPair.generate() for _ in range(4))
    store = MetadataStore.sqlite(tmp_path / "meta.db")
    store.migrate()
    catalog = Catalog(store)
    catalog.publish(model_record(KeyPair.generate()))
    admissions = Admissions.from_store(store)
    registry = RegistryService(catalog, admissions=admissions, readers=CallerPolicy(
        [service.public_key], role="service", also=admissions.admits,
    ))
    hub = LocalHub()

    async def reads(rpc: RpcConnection) -> None:
        stub = services_rpc.RegistryStub(rpc)
        listed = await stub.ListModels(services_pb2.ListModelsRequest(tenant_id="acme"), timeout=5)
        assert [r.model.model_id for r in listed.models] == [MODEL]
        record = await stub.Resolve(services_pb2.ResolveRequest(model_id=MODEL), timeout=5)
        assert record.model.model_id == MODEL

    async def refused(rpc: RpcConnection) -> None:
        stub = services_rpc.RegistryStub(rpc)
        for call in (
            stub.ListModels(services_pb2.ListModelsRequest(), timeout=5),
            stub.ListModels(services_pb2.ListModelsRequest(tenant_id="acme"), timeout=5),
            stub.Resolve(services_pb2.ResolveRequest(model_id=MODEL), timeout=5),
        ):
            assert "only for known services" in await denied(call)

    async def main() -> None:
        net = LocalNetwork(hub, registry_key, collect_handlers(registry))
        async with net.running():
            await as_peer(hub, stranger, registry_key.public_key, refused)
            await as_peer(hub, service, registry_key.public_key, reads)
            await as_peer(hub, worker, registry_key.public_key, refused)
            store.admit_worker(worker.public_key)
            await trio.sleep(1)
            # Admitted a moment ago: the list is read again for it (at most once a second).
            await as_peer(hub, worker, registry_key.public_key, reads)
            store.revoke_worker(worker.public_key)
            await admissions.reload()  # every heartbeat period (Admissions.follow)
            await as_peer(hub, worker, registry_key.public_key, refused)

    with blocking.inline():
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    store.close()
