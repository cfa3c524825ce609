"""The gateway's RPC surface (``tether.v1.Gateway``): the edge of Tether.

``Infer``: authenticate the tenant token (metadata ``authorization: Bearer
<token>``, checked against the hashed tokens of the Metadata Store), validate
and normalise the request, take a token from the tenant's bucket, start the
trace, and forward to an orchestrator found on ``tether/control/<region>``
(the least loaded of those it knows, ``gateway.orchestrators``), streaming its
chunks back.

An orchestrator that fails does not end the request. One that refuses it
because it is draining is skipped at once. One lost mid-stream (its connection
closed, or closed by the gateway when it stopped answering probes, see
``Orchestrators.watch``) is avoided, and the same request (same correlation id
and retry token; the gateway pins a sampling seed when the client gave none) is
sent to another orchestrator, naming the lost one so that the new one takes the
job over at once; the chunks the client already has are checked by digest and
skipped (``tether.resume``), as the orchestrator does for a lost worker.

End-to-end sealing (``tether.sealing``, docs/security.md): for a tenant whose
policy says so, the gateway asks the orchestrator whom it may place the request
on (``Place``), seals the input to those workers, submits the sealed request and
opens the chunks for the client, so orchestrators, relays and the Metadata Store
see only ciphertext. A request the client sealed itself (after ``Place`` here)
is forwarded as it is, its chunks too: the gateway does not see its input either.
"""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence

import trio

from gateway.orchestrators import Orchestrators
from gateway.ratelimit import TokenBuckets
from tether import blocking, health, sealing, telemetry, topics
from tether.errors import PermissionDenied, Unauthenticated, Unavailable
from tether.metadata.store import MetadataStore
from tether.net import Network, Peer, is_closed, wait_for_peer
from tether.resume import LOST_ORCHESTRATOR, ChunkBatch, Diverged, Replay, Resume
from tether.rpc import Encoded, Responses, RpcError, ServerContext, StatusCode
from tether.timing import Hops
from tether.ttlcache import TtlCache
from tether.v1 import infer_pb2, services_pb2, services_rpc
from tether.validation import validate, validate_sealed, validate_target

log = logging.getLogger("tether.gateway")

#: How long a request waits to find an orchestrator or registry on its topic.
PEER_WAIT_S = 10.0
#: How long a verified tenant token is trusted without asking the Metadata Store again.
TOKEN_CACHE_S = 10.0
#: How often the catalog's model names (the metrics' model labels) are read again.
MODEL_LABELS_S = 10.0
#: How often readiness is checked (``check_ready``), and the longest one check waits.
READY_CHECK_S = 5.0
READY_PROBE_S = 2.0
#: A token nobody holds: verifying it shows the token store is readable.
PROBE_TOKEN = "tt_readiness_probe"
#: Orchestrators one request may be sent to (the first, then others that resume it),
#: and how long a request that lost its orchestrator waits for another to appear.
MAX_ORCHESTRATORS = 3
RESUME_WAIT_S = 2.0

log = logging.getLogger("tether.gateway")


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
        readiness: health.Readiness | None = None,
        fallback_regions: Sequence[str] = (),
    ) -> None:
        self.network = network
        self.store = store
        self.region = region
        self.buckets = buckets
        self.control_topic = topics.control(region)
        self.orchestrators = Orchestrators(
            network, self.control_topic,
            fallback_topics=[topics.control(r) for r in fallback_regions],
        )
        self._tokens: TtlCache[str, str] = TtlCache(
            ttl_s=TOKEN_CACHE_S, max_entries=65_536, name="gateway_tokens"
        )
        #: Whether a tenant's requests are sealed (its policy), cached like its tokens.
        self._sealed_tenants: TtlCache[str, bool] = TtlCache(
            ttl_s=TOKEN_CACHE_S, max_entries=65_536, name="gateway_tenant_policy"
        )
        #: Wall-clock milliseconds: when a sealed request was issued (workers check it).
        self.clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self.metrics = telemetry.RequestMetrics("gateway")
        #: Model labels of the metrics: the catalog's models, else "other".
        self.model_labels = telemetry.ModelLabels()
        self._labels_read_at = -math.inf
        #: What probes are told (``check_ready`` keeps it current).
        self.readiness = readiness or health.Readiness()

    async def model_label(self, model: str) -> str:
        """``model`` as a metrics label: itself when the catalog has it, else ``other``.
        The catalog's names are read at most every ``MODEL_LABELS_S``, whatever names
        requests make up."""
        if trio.current_time() - self._labels_read_at >= MODEL_LABELS_S:
            self._labels_read_at = trio.current_time()
            try:
                self.model_labels.update(await blocking.run_sync(self.store.model_ids))
            except Exception as exc:  # labels only: the request goes on
                log.warning("cannot read the model names for metrics labels: %s", exc)
        return self.model_labels.label(model)

    async def check_ready(self) -> bool:
        """Probe what serving needs (an orchestrator and a registry reachable, found as
        requests find them; the token store readable), record each in ``readiness``."""
        for check, topic in (("orchestrator", self.control_topic),
                             ("registry", topics.registry(self.region))):
            try:
                await wait_for_peer(self.network, topic, timeout=READY_PROBE_S)
            except Unavailable as exc:
                self.readiness.set(check, False, exc.message)
            else:
                self.readiness.set(check, True)
        try:
            await blocking.run_sync(lambda: self.store.verify_token(PROBE_TOKEN))
        except Unauthenticated:
            self.readiness.set("token_store", True)
        except Exception as exc:
            self.readiness.set("token_store", False,
                               f"cannot read the token store: {type(exc).__name__}: {exc}")
        else:  # somebody holds the probe token: the store answers all the same
            self.readiness.set("token_store", True)
        return self.readiness.ready

    async def watch_readiness(self, every_s: float = READY_CHECK_S) -> None:
        """``check_ready`` now and every ``every_s`` (probes read its last answer)."""
        while True:
            await self.check_ready()
            await trio.sleep(every_s)

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

    async def Infer(
        self, request: infer_pb2.Infer.Request, context: ServerContext
    ) -> AsyncIterator[Responses[infer_pb2.Infer.Chunk]]:
        """The RPC method: chunks in batches, as the orchestrator's arrive (see
        ``tether.resume``)."""
        async with contextlib.aclosing(self.batches(request, context)) as batches:
            async for batch in batches:
                yield batch

    async def chunks(
        self, request: infer_pb2.Infer.Request, context: ServerContext
    ) -> AsyncIterator[infer_pb2.Infer.Chunk]:
        """``Infer`` one chunk at a time (the HTTP and gRPC edges)."""
        async with contextlib.aclosing(self.batches(request, context)) as batches:
            async for batch in batches:
                for item in batch:
                    yield item.message

    async def batches(
        self, request: infer_pb2.Infer.Request, context: ServerContext
    ) -> AsyncGenerator[ChunkBatch]:
        hops = Hops(request.timing)
        hops.stamp("gateway.in")
        label = await self.model_label(request.model_id)
        with self.metrics.measure(label) as timer:
            async with contextlib.aclosing(self._infer(request, context, hops)) as batches:
                async for batch in batches:
                    timer.chunk(done=batch[-1].message.done)
                    hops.add_to_batch(batch, last="gateway.out")
                    yield batch

    async def _infer(
        self, request: infer_pb2.Infer.Request, context: ServerContext, hops: Hops
    ) -> AsyncGenerator[ChunkBatch]:
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
        generates = forwarded.input.WhichOneof("kind") in ("text", "messages")
        if (generates or client_sealed) and not forwarded.params.seed:
            # Pinned here, so that another orchestrator resuming the request samples the
            # same answer and it can be spliced onto what the client has.
            forwarded.params.seed = secrets.randbits(63) | 1
        with telemetry.server_span(
            "gateway.infer",
            metadata,
            **{"tether.tenant": tenant, "tether.model": request.model_id,
               "tether.correlation_id": forwarded.correlation_id},
        ):
            forwarded.trace_id = telemetry.current_trace_id()
            out = telemetry.outgoing_metadata({"x-tether-tenant": tenant})
            seal = not client_sealed and await self.seals_for(tenant)
            hops.stamp("gateway.forward")
            async with contextlib.aclosing(
                self._forward(forwarded, out, context, seal=seal)
            ) as batches:
                async for batch in batches:
                    yield batch

    async def _forward(
        self,
        request: infer_pb2.Infer.Request,
        metadata: dict[str, str],
        context: ServerContext,
        *,
        seal: bool = False,
    ) -> AsyncGenerator[ChunkBatch]:
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
                        self._submit(peer, request, metadata, context, seal=seal)
                    ) as batches:
                        async for batch in batches:
                            out = _new_to_client(batch, replay, resume)
                            if out:
                                yield out
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
                # Every one lost so far: a resubmission may first have gone to another
                # dead one, while the job is still owned by the first.
                lost_keys = [k for k in metadata.get(LOST_ORCHESTRATOR, "").split(",") if k]
                metadata = {**metadata,
                            LOST_ORCHESTRATOR: ",".join([*lost_keys, peer.key_hex])}
                why = self.orchestrators.why_dropped(peer)
                last_error = resume.lost(name, exc if why is None else RpcError(exc.code, why))
                log.info("%s; resuming %s at chunk %d elsewhere", last_error.message,
                         request.correlation_id, resume.count)
        assert last_error is not None
        if resume.count:
            raise resume.unresumed(last_error)
        raise last_error

    def _stub(self, peer: Peer) -> services_rpc.OrchestratorStub:
        return services_rpc.OrchestratorStub(peer.rpc)

    async def _submit(
        self,
        peer: Peer,
        request: infer_pb2.Infer.Request,
        metadata: dict[str, str],
        context: ServerContext,
        *,
        seal: bool,
    ) -> AsyncGenerator[ChunkBatch]:
        """One orchestrator's stream of ``request``, sealed end to end first if ``seal``."""
        stub = self._stub(peer)
        timeout = context.remaining_timeout()
        if seal:
            chunks = self._sealed(stub, request, metadata, timeout)
        else:
            chunks = self._plain(stub, request, metadata, timeout)
        async with contextlib.aclosing(chunks):
            async for batch in chunks:
                self.orchestrators.heard(peer)
                yield batch

    async def _plain(
        self,
        orchestrator: services_rpc.OrchestratorStub,
        request: infer_pb2.Infer.Request,
        metadata: dict[str, str],
        timeout: float | None,
    ) -> AsyncGenerator[ChunkBatch]:
        async with orchestrator.Submit(request, metadata=metadata, timeout=timeout) as chunks:
            while batch := await chunks.next_batch():
                yield batch

    async def _sealed(
        self,
        orchestrator: services_rpc.OrchestratorStub,
        request: infer_pb2.Infer.Request,
        metadata: dict[str, str],
        timeout: float | None,
    ) -> AsyncGenerator[ChunkBatch]:
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
                    while batch := await cs.next_batch():
                        opened = [key.open(item.message) for item in batch]
                        yield [Encoded(c, c.SerializeToString()) for c in opened]
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
        orchestrator = self._stub(await self.orchestrators.pick(exclude=set(), timeout=PEER_WAIT_S))
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


def _new_to_client(batch: ChunkBatch, replay: Replay, resume: Resume) -> ChunkBatch:
    """What of ``batch`` the client does not have yet (a replay's repeats skipped), each
    recorded as delivered."""
    out: ChunkBatch = []
    for item in batch:
        if not replay.accept(item.message):
            continue  # the client has this one already
        resume.delivered(item.message)
        out.append(item)
    return out
