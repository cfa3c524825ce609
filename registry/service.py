"""The registry's RPC surface (``tether.v1.Registry``), a thin shell over the
``Catalog``: publish, resolve (version rules and tenant policy) and list.

Publishing is for a record's own publisher; resolving and listing for known services
and admitted workers (``readers``): records carry policies that name tenants, so the
catalog is not public (see ``tether.callers``)."""

from __future__ import annotations

from registry.catalog import Catalog, check_policy
from tether import blocking, metrics, telemetry
from tether.admission import Admissions
from tether.callers import CallerPolicy, parse_key
from tether.errors import PermissionDenied
from tether.rpc import ServerContext
from tether.v1 import registry_pb2, services_pb2, services_rpc


class RegistryService(services_rpc.RegistryServicer):
    def __init__(
        self,
        catalog: Catalog,
        *,
        callers: CallerPolicy | None = None,
        readers: CallerPolicy | None = None,
        admissions: Admissions | None = None,
        lookups: Catalog | None = None,
    ) -> None:
        self.catalog = catalog
        #: Resolve and ListModels read here (a replica's catalog); Publish writes ``catalog``.
        self.lookups = lookups or catalog
        #: Who may publish over RPC: known publishers. None: anyone (embedded use).
        self.callers = callers or CallerPolicy.anyone()
        #: Who may resolve and list: known services, admitted workers. None: anyone.
        self.readers = readers or CallerPolicy.anyone()
        #: The admitted workers, read again for a key not (yet) admitted.
        self.admissions = admissions

    async def _check_reader(self, context: ServerContext) -> None:
        if self.admissions is not None:
            try:
                key = parse_key(context.peer)
            except ValueError:
                key = b""
            if key and not self.readers.allows(key):
                # A worker admitted a moment ago asks once, at its start: read the list again.
                await self.admissions.admits_now(key)
        self.readers.check(context)

    async def Publish(
        self, request: registry_pb2.ModelRecord, context: ServerContext
    ) -> registry_pb2.ModelRecord:
        """Publish a version. Workers trust artifacts signed by a record's
        ``publisher_key``, so only that key's holder may publish the record: the caller's
        connection key must be it (and a known publisher)."""
        self.callers.check(context)
        if context.peer != request.publisher_key.hex():
            raise PermissionDenied(
                "a version is published by its publisher: connect with the key named in "
                "publisher_key",
                details={"peer": context.peer, "publisher_key": request.publisher_key.hex()},
            )
        return await blocking.run_sync(lambda: self.catalog.publish(request))

    async def Resolve(
        self, request: services_pb2.ResolveRequest, context: ServerContext
    ) -> registry_pb2.ModelRecord:
        await self._check_reader(context)

        def resolve() -> registry_pb2.ModelRecord:
            try:
                record = self.lookups.resolve(
                    request.model_id, request.version, request.tenant_id or None
                )
            except Exception as exc:
                # Labels stay bounded: a model the catalog lacks is "other".
                known = request.model_id in self.lookups.store.model_ids()
                metrics.resolve(request.model_id if known else telemetry.OTHER, "",
                                telemetry.status_name(exc))
                raise
            metrics.resolve(record.model.model_id, record.model.version, "OK")
            return record

        return await blocking.run_sync(resolve)

    async def ListModels(
        self, request: services_pb2.ListModelsRequest, context: ServerContext
    ) -> services_pb2.ListModelsResponse:
        await self._check_reader(context)

        def collect() -> list[registry_pb2.ModelRecord]:
            records = []
            for model_id in self.lookups.store.model_ids():
                for version in self.lookups.versions(model_id):
                    record = self.lookups.get(model_id, version)
                    if request.tenant_id:
                        try:
                            check_policy(record, request.tenant_id)
                        except PermissionDenied:
                            continue
                    records.append(record)
            return records

        return services_pb2.ListModelsResponse(models=await blocking.run_sync(collect))
