"""The registry's RPC surface (``tether.v1.Registry``), a thin shell over the
``Catalog``: publish, resolve (version rules and tenant policy) and list."""

from __future__ import annotations

from registry.catalog import Catalog, check_policy
from tether import blocking
from tether.errors import PermissionDenied
from tether.rpc import ServerContext
from tether.v1 import registry_pb2, services_pb2, services_rpc


class RegistryService(services_rpc.RegistryServicer):
    def __init__(self, catalog: Catalog, *, publishers: set[bytes] | None = None) -> None:
        self.catalog = catalog
        #: Keys allowed to publish over RPC; None allows any signed record's key.
        self.publishers = publishers

    async def Publish(
        self, request: registry_pb2.ModelRecord, context: ServerContext
    ) -> registry_pb2.ModelRecord:
        if self.publishers is not None and request.publisher_key not in self.publishers:
            raise PermissionDenied("publisher key is not allowed to publish to this registry")
        return await blocking.run_sync(lambda: self.catalog.publish(request))

    async def Resolve(
        self, request: services_pb2.ResolveRequest, context: ServerContext
    ) -> registry_pb2.ModelRecord:
        return await blocking.run_sync(
            lambda: self.catalog.resolve(
                request.model_id, request.version, request.tenant_id or None
            )
        )

    async def ListModels(
        self, request: services_pb2.ListModelsRequest, context: ServerContext
    ) -> services_pb2.ListModelsResponse:
        def collect() -> list[registry_pb2.ModelRecord]:
            records = []
            for model_id in self.catalog.store.model_ids():
                for version in self.catalog.versions(model_id):
                    record = self.catalog.get(model_id, version)
                    if request.tenant_id:
                        try:
                            check_policy(record, request.tenant_id)
                        except PermissionDenied:
                            continue
                    records.append(record)
            return records

        return services_pb2.ListModelsResponse(models=await blocking.run_sync(collect))
