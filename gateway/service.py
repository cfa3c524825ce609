"""The gateway's RPC surface (``tether.v1.Gateway``): the edge of Tether.

``Infer``: authenticate the tenant token (metadata ``authorization: Bearer
<token>``, checked against the hashed tokens of the Metadata Store), validate
and normalise the request, take a token from the tenant's bucket, start the
trace, and forward to an orchestrator found on ``tether/control/<region>``
(the least loaded of those it knows, ``gateway.orchestrators``), streaming its
chunks back unchanged.

An orchestrator that fails does not end the request. One that refuses it
because it is draining is skipped at once. One lost mid-stream (its connection
closed, or closed by the gateway when it stopped answering probes, see
``Orchestrators.watch``) is avoided, and the same request (same correlation id
and retry token; the gateway pins a sampling seed when the client gave none) is
sent to another orchestrator, naming the lost one so that the new one takes the
job over at once; the chunks the client already has are checked by digest and
skipped (``tether.resume``), as the orchestrator does for a lost worker.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import uuid
from collections.abc import AsyncGenerator, AsyncIterator

from gateway.orchestrators import Orchestrators
from gateway.ratelimit import TokenBuckets
from tether import blocking, telemetry, topics
from tether.errors import (
    InvalidArgument,
    PermissionDenied,
    TetherError,
    Unauthenticated,
    Unavailable,
)
from tether.metadata.store import MetadataStore
from tether.net import Network, Peer, is_closed, wait_for_peer
from tether.resume import LOST_ORCHESTRATOR, Diverged, Resume
from tether.rpc import RpcError, ServerContext, StatusCode
from tether.ttlcache import TtlCache
from tether.v1 import infer_pb2, services_pb2, services_rpc

MAX_PROMPT_CHARS = 16_384
MAX_TEXTS = 256
MAX_TENSOR_BYTES = 4 * 1024 * 1024
MAX_NEW_TOKENS = 1024
#: How long a request waits to find an orchestrator or registry on its topic.
PEER_WAIT_S = 10.0
#: How long a verified tenant token is trusted without asking the Metadata Store again.
TOKEN_CACHE_S = 10.0
#: Orchestrators one request may be sent to (the first, then others that resume it),
#: and how long a request that lost its orchestrator waits for another to appear.
MAX_ORCHESTRATORS = 3
RESUME_WAIT_S = 2.0

log = logging.getLogger("tether.gateway")
_VERSION_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))?$")


def validate(request: infer_pb2.Infer.Request) -> None:
    """Refuse malformed requests with INVALID_ARGUMENT before any work."""
    try:
        topics.model(request.model_id)
    except TetherError:
        raise InvalidArgument(
            f"model_id {request.model_id!r} is not a model name (e.g. 'tiny-stories')"
        ) from None
    if request.version and not _VERSION_RE.match(request.version):
        raise InvalidArgument(f"version {request.version!r} is not MAJOR or MAJOR.MINOR")
    kind = request.input.WhichOneof("kind")
    if kind is None:
        raise InvalidArgument("input is empty: set input.text, input.texts or input.tensors")
    if kind == "text" and len(request.input.text) > MAX_PROMPT_CHARS:
        raise InvalidArgument(f"prompt longer than {MAX_PROMPT_CHARS} characters")
    if kind == "texts":
        texts = request.input.texts.texts
        if not texts or len(texts) > MAX_TEXTS:
            raise InvalidArgument(f"input.texts needs 1 to {MAX_TEXTS} texts")
        if any(len(t) > MAX_PROMPT_CHARS for t in texts):
            raise InvalidArgument(f"a text is longer than {MAX_PROMPT_CHARS} characters")
    if kind == "tensors":
        size = sum(len(t.data) for t in request.input.tensors.tensors)
        if size > MAX_TENSOR_BYTES:
            raise InvalidArgument(f"input tensors exceed {MAX_TENSOR_BYTES} bytes")
    if request.params.max_tokens > MAX_NEW_TOKENS:
        raise InvalidArgument(f"params.max_tokens is above {MAX_NEW_TOKENS}")
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
        self.orchestrators = Orchestrators(network, self.control_topic)
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
        if forwarded.input.WhichOneof("kind") == "text" and not forwarded.params.seed:
            # Pinned here, so that another orchestrator resuming the request samples the
            # same answer and it can be spliced onto what the client has.
            forwarded.params.seed = secrets.randbits(63) | 1
        with telemetry.server_span(
            "gateway.infer",
            metadata,
            **{"tether.tenant": tenant, "tether.model": request.model_id},
        ):
            forwarded.trace_id = telemetry.current_trace_id()
            out = telemetry.outgoing_metadata({"x-tether-tenant": tenant})
            async with contextlib.aclosing(
                self._forward(forwarded, out, context)
            ) as chunks:
                async for chunk in chunks:
                    yield chunk

    async def _forward(
        self, request: infer_pb2.Infer.Request, metadata: dict[str, str], context: ServerContext
    ) -> AsyncGenerator[infer_pb2.Infer.Chunk]:
        """Stream ``request`` from an orchestrator, resuming it through another when one is
        lost or draining (see the module docstring)."""
        resume = Resume()
        tried: set[bytes] = set()
        last_error: RpcError | None = None
        for _ in range(MAX_ORCHESTRATORS):
            try:
                peer = await self.orchestrators.pick(
                    exclude=tried, timeout=RESUME_WAIT_S if tried else PEER_WAIT_S
                )
            except Unavailable:
                if last_error is None:
                    raise
                break
            tried.add(peer.remote_key)
            replay = resume.replay()
            try:
                with self.orchestrators.using(peer):
                    async with contextlib.aclosing(
                        self._submit(peer, request, metadata, context)
                    ) as chunks:
                        async for chunk in chunks:
                            if not replay.accept(chunk):
                                continue  # the client has this one already
                            resume.delivered(chunk)
                            yield chunk
                return
            except Diverged as exc:
                what = last_error.message if last_error is not None else "an orchestrator was lost"
                raise Unavailable(f"{what}; {exc.message}", details=exc.details) from None
            except RpcError as exc:
                name = f"orchestrator {peer.key_hex[:16]}"
                if last_error is not None and exc.code == StatusCode.ALREADY_EXISTS and (
                    exc.details.get("state") == "JOB_STATE_FAILED"
                ):
                    # The lost orchestrator failed the job before it went (a drain that
                    # ran out): that failure is the request's true outcome.
                    code = int(exc.details.get("error_code") or StatusCode.UNAVAILABLE)
                    raise RpcError(
                        StatusCode.coerce(code), exc.details.get("error_message") or exc.message
                    ) from None
                if exc.code == StatusCode.UNAVAILABLE and exc.details.get("draining"):
                    self.orchestrators.avoid(peer)  # it admitted nothing: go elsewhere
                    log.info("%s is draining; sending %s elsewhere", name,
                             request.correlation_id)
                    last_error = exc
                    continue
                if exc.code != StatusCode.UNAVAILABLE or not is_closed(peer):
                    raise
                self.orchestrators.avoid(peer)
                # Lost: another orchestrator takes the job over (named so that it need
                # not wait for the lost one's lease to run out) and replays it.
                metadata = {**metadata, LOST_ORCHESTRATOR: peer.key_hex}
                why = self.orchestrators.why_dropped(peer)
                last_error = resume.lost(name, exc if why is None else RpcError(exc.code, why))
                log.info("%s; resuming %s at chunk %d elsewhere", last_error.message,
                         request.correlation_id, resume.count)
        assert last_error is not None
        if resume.count:
            raise resume.unresumed(last_error)
        raise last_error

    async def _submit(
        self,
        peer: Peer,
        request: infer_pb2.Infer.Request,
        metadata: dict[str, str],
        context: ServerContext,
    ) -> AsyncGenerator[infer_pb2.Infer.Chunk]:
        stub = services_rpc.OrchestratorStub(peer.rpc)
        async with stub.Submit(
            request, metadata=metadata, timeout=context.remaining_timeout()
        ) as chunks:
            async for chunk in chunks:
                self.orchestrators.heard(peer)
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

