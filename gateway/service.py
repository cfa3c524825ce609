"""The gateway's RPC surface (``tether.v1.Gateway``): the edge of Tether.

``Infer``: authenticate the tenant token (metadata ``authorization: Bearer
<token>``, checked against the hashed tokens of the Metadata Store), validate
and normalise the request, take a token from the tenant's bucket, start the
trace, and forward to an orchestrator found on ``tether/control/<region>``,
streaming its chunks back unchanged.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import AsyncGenerator, AsyncIterator

from gateway.ratelimit import TokenBuckets
from tether import blocking, limits, telemetry, topics
from tether.errors import (
    InvalidArgument,
    PermissionDenied,
    TetherError,
    Unauthenticated,
)
from tether.metadata.store import MetadataStore
from tether.net import Network, wait_for_peer
from tether.rpc import ServerContext
from tether.ttlcache import TtlCache
from tether.v1 import infer_pb2, services_pb2, services_rpc

#: How long a request waits to find an orchestrator or registry on its topic.
PEER_WAIT_S = 10.0
#: How long a verified tenant token is trusted without asking the Metadata Store again.
TOKEN_CACHE_S = 10.0
_VERSION_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))?$")


def validate(request: infer_pb2.Infer.Request) -> None:
    """Refuse malformed requests with INVALID_ARGUMENT before any work."""
    try:
        topics.model(request.model_id)
    except TetherError:
        raise InvalidArgument(
            f"model_id {request.model_id!r} is not a model name (e.g. 'tiny-stories')"
        ) from None
    if request.version and not _VERSION_RE.fullmatch(request.version):
        raise InvalidArgument(f"version {request.version!r} is not MAJOR or MAJOR.MINOR")
    limits.check_shape(request)
    if request.region:
        topics.region(request.region)


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
    ) -> None:
        self.network = network
        self.store = store
        self.region = region
        self.buckets = buckets
        self.control_topic = topics.control(region)
        self._tokens: TtlCache[str, str] = TtlCache(ttl_s=TOKEN_CACHE_S, max_entries=65_536)
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
            async with orchestrator.Submit(
                forwarded, metadata=out, timeout=context.remaining_timeout()
            ) as chunks:
                async for chunk in chunks:
                    yield chunk

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

