"""The gateway's RPC surface (``tether.v1.Gateway``): the edge of Tether.

``Infer``: authenticate the tenant token (metadata ``authorization: Bearer
<token>``, checked against the hashed tokens of the Metadata Store), validate
and normalise the request, take a token from the tenant's bucket, start the
trace, and forward to an orchestrator found on ``tether/control/<region>``,
streaming its chunks back.

End-to-end sealing (``tether.sealing``, docs/security.md): for a tenant whose
policy says so, the gateway asks the orchestrator whom it may place the request
on (``Place``), seals the input to those workers, submits the sealed request and
opens the chunks for the client, so orchestrators, relays and the Metadata Store
see only ciphertext. A request the client sealed itself (after ``Place`` here)
is forwarded as it is, its chunks too: the gateway does not see its input either.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable

from gateway.ratelimit import TokenBuckets
from tether import blocking, sealing, telemetry, topics
from tether.errors import PermissionDenied, Unauthenticated
from tether.metadata.store import MetadataStore
from tether.net import Network, wait_for_peer
from tether.rpc import RpcError, ServerContext, StatusCode
from tether.ttlcache import TtlCache
from tether.v1 import infer_pb2, services_pb2, services_rpc
from tether.validation import validate, validate_sealed, validate_target

#: How long a request waits to find an orchestrator or registry on its topic.
PEER_WAIT_S = 10.0
#: How long a verified tenant token is trusted without asking the Metadata Store again.
TOKEN_CACHE_S = 10.0


def bearer_token(metadata: dict[str, str]) -> str:
    value = metadata.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("missing tenant token: send metadata 'authorization: Bearer <token>'")
    return token.strip()


class GatewayService(services_rpc.GatewayServicer):
    def __init__(
        self,
        *,
        network: Network,
        store: MetadataStore,
        region: str,
        buckets: TokenBuckets,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        self.network = network
        self.store = store
        self.region = region
        self.buckets = buckets
        self.control_topic = topics.control(region)
        self._tokens: TtlCache[str, str] = TtlCache(ttl_s=TOKEN_CACHE_S, max_entries=65_536)
        #: Whether a tenant's requests are sealed (its policy), cached like its tokens.
        self._sealed_tenants: TtlCache[str, bool] = TtlCache(
            ttl_s=TOKEN_CACHE_S, max_entries=65_536
        )
        #: Wall-clock milliseconds: when a sealed request was issued (workers check it).
        self.clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self.metrics = telemetry.RequestMetrics("gateway")

    async def authenticate(self, metadata: dict[str, str]) -> str:
        """The tenant of the request's token. A verified token is trusted for
        ``TOKEN_CACHE_S`` seconds, so a revocation takes at most that long to apply."""
        token = bearer_token(metadata)
        tenant = self._tokens.get(token)
        if tenant is None:
            tenant = await blocking.run_sync(lambda: self.store.verify_token(token))
            self._tokens.put(token, tenant)
        return tenant

    async def seals_for(self, tenant: str) -> bool:
        """Whether the tenant's policy asks for end-to-end sealing (cached as tokens are)."""
        e2e = self._sealed_tenants.get(tenant)
        if e2e is None:
            e2e = await blocking.run_sync(lambda: self.store.tenant_e2e(tenant))
            self._sealed_tenants.put(tenant, e2e)
        return e2e

    async def _orchestrator(self) -> services_rpc.OrchestratorStub:
        peer = await wait_for_peer(self.network, self.control_topic, timeout=PEER_WAIT_S)
        return services_rpc.OrchestratorStub(peer.rpc)

    async def Infer(
        self, request: infer_pb2.Infer.Request, context: ServerContext
    ) -> AsyncIterator[infer_pb2.Infer.Chunk]:
        with self.metrics.measure(request.model_id) as timer:
            async with contextlib.aclosing(self._infer(request, context)) as chunks:
                async for chunk in chunks:
                    timer.chunk()
                    yield chunk

    async def _infer(
        self, request: infer_pb2.Infer.Request, context: ServerContext
    ) -> AsyncGenerator[infer_pb2.Infer.Chunk]:
        metadata = dict(context.metadata)
        tenant = await self.authenticate(metadata)
        if request.tenant_id and request.tenant_id != tenant:
            raise PermissionDenied("tenant_id does not match the tenant of the token")
        client_sealed = request.HasField("sealed")
        if client_sealed:
            validate_sealed(request)
        else:
            validate(request)
        self.buckets.take(tenant)
        forwarded = infer_pb2.Infer.Request()
        forwarded.CopyFrom(request)
        forwarded.tenant_id = tenant
        forwarded.correlation_id = request.correlation_id or f"c-{uuid.uuid4().hex}"
        forwarded.region = request.region or self.region
        with telemetry.server_span(
            "gateway.infer",
            metadata,
            **{"tether.tenant": tenant, "tether.model": request.model_id},
        ):
            forwarded.trace_id = telemetry.current_trace_id()
            orchestrator = await self._orchestrator()
            out = telemetry.outgoing_metadata({"x-tether-tenant": tenant})
            timeout = context.remaining_timeout()
            if not client_sealed and await self.seals_for(tenant):
                chunks = self._sealed(orchestrator, forwarded, out, timeout)
            else:
                chunks = self._submit(orchestrator, forwarded, out, timeout)
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    yield chunk

    async def _submit(
        self,
        orchestrator: services_rpc.OrchestratorStub,
        request: infer_pb2.Infer.Request,
        metadata: dict[str, str],
        timeout: float | None,
    ) -> AsyncGenerator[infer_pb2.Infer.Chunk]:
        async with orchestrator.Submit(request, metadata=metadata, timeout=timeout) as chunks:
            async for chunk in chunks:
                yield chunk

    async def _sealed(
        self,
        orchestrator: services_rpc.OrchestratorStub,
        request: infer_pb2.Infer.Request,
        metadata: dict[str, str],
        timeout: float | None,
    ) -> AsyncGenerator[infer_pb2.Infer.Chunk]:
        """Seal ``request`` to the workers the orchestrator may place it on, submit it,
        and open its chunks. When every one of them left placement between ``Place``
        and ``Submit`` (UNAVAILABLE, reason ``reseal``, nothing reserved yet), place
        and seal once more."""
        for attempt in range(2):
            placed = await orchestrator.Place(
                services_pb2.PlaceRequest(
                    tenant_id=request.tenant_id,
                    model_id=request.model_id,
                    version=request.version,
                    region=request.region,
                    correlation_id=request.correlation_id,
                ),
                metadata=metadata,
                timeout=timeout or PEER_WAIT_S,
            )
            sealed, key = sealing.seal_request(
                request, [w.pub_key for w in placed.workers], now_ms=self.clock_ms()
            )
            try:
                async with orchestrator.Submit(sealed, metadata=metadata, timeout=timeout) as cs:
                    async for chunk in cs:
                        yield key.open(chunk)
                return
            except RpcError as exc:
                reseal = exc.code == StatusCode.UNAVAILABLE and exc.details.get("reason") == (
                    sealing.RESEAL
                )
                if not reseal or attempt:
                    raise

    async def Place(
        self, request: services_pb2.PlaceRequest, context: ServerContext
    ) -> services_pb2.PlaceResponse:
        tenant = await self.authenticate(dict(context.metadata))
        if request.tenant_id and request.tenant_id != tenant:
            raise PermissionDenied("tenant_id does not match the tenant of the token")
        validate_target(request.model_id, request.version, request.region)
        forwarded = services_pb2.PlaceRequest()
        forwarded.CopyFrom(request)
        forwarded.tenant_id = tenant
        forwarded.region = request.region or self.region
        orchestrator = await self._orchestrator()
        placed = await orchestrator.Place(
            forwarded,
            metadata=telemetry.outgoing_metadata({"x-tether-tenant": tenant}),
            timeout=context.remaining_timeout() or PEER_WAIT_S,
        )
        placed.tenant_id = tenant
        return placed

    async def ListModels(
        self, request: services_pb2.ListModelsRequest, context: ServerContext
    ) -> services_pb2.ListModelsResponse:
        tenant = await self.authenticate(dict(context.metadata))
        topic = topics.registry(self.region)
        peer = await wait_for_peer(self.network, topic, timeout=PEER_WAIT_S)
        registry = services_rpc.RegistryStub(peer.rpc)
        return await registry.ListModels(
            services_pb2.ListModelsRequest(tenant_id=tenant),
            timeout=context.remaining_timeout() or PEER_WAIT_S,
        )

