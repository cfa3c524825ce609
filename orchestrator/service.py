"""The orchestrator's RPC surface (``tether.v1.Orchestrator``): the spec's
request lifecycle (§10) from placement to finalisation.

``Submit``:
 1. resolve the model version through the Registry (RPC) and check its policy;
 2. reserve ``(correlationId, retryToken)`` in the Metadata Store *before*
    dispatch: a repeat of an accepted request is refused (ALREADY_EXISTS)
    instead of running twice;
 3. rank the fleet snapshot by affinity score and dispatch ``Worker.Infer`` to
    the best candidate; a candidate that refuses before streaming anything
    (UNAVAILABLE, RESOURCE_EXHAUSTED) hands the request to the next one;
 4. stream the worker's chunks back; finalise the job and record usage.

A worker lost mid-stream ends the request with UNAVAILABLE and the job is
marked FAILED; resuming it elsewhere needs the retry manager's replay, which
is not part of this service yet.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator

import trio

from orchestrator.breaker import BreakerState, CircuitBreakers
from orchestrator.discovery import DiscoverySub
from orchestrator.scheduler import Candidate, Placement, Weights, rank
from tether import blocking, telemetry, topics
from tether.errors import AlreadyExists, InvalidArgument, Unavailable
from tether.metadata.store import MetadataStore
from tether.net import Network, wait_for_peer
from tether.rpc import RpcError, ServerContext, StatusCode
from tether.ttlcache import TtlCache
from tether.v1 import (
    infer_pb2,
    jobs_pb2,
    presence_pb2,
    registry_pb2,
    services_pb2,
    services_rpc,
)

log = logging.getLogger("tether.orchestrator")

#: Codes on which a request that produced no output moves to the next worker.
_PLACE_ELSEWHERE = {StatusCode.UNAVAILABLE, StatusCode.RESOURCE_EXHAUSTED}
DEFAULT_MAX_ATTEMPTS = 3
REGISTRY_TIMEOUT_S = 10.0
#: How long a registry resolution is reused (a new 'latest' or policy applies after it).
RESOLVE_CACHE_S = 5.0
#: How often the registry is re-read for model topics to discover workers on.
MODEL_TOPICS_S = 60.0
#: Tokens charged to a quota for a request that does not say how many it wants.
QUOTA_DEFAULT_TOKENS = 64


class OrchestratorService(services_rpc.OrchestratorServicer):
    def __init__(
        self,
        *,
        network: Network,
        discovery: DiscoverySub,
        store: MetadataStore,
        region: str,
        registry_topic: str,
        weights: Weights | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        breakers: CircuitBreakers | None = None,
    ) -> None:
        self.network = network
        self.discovery = discovery
        self.store = store
        self.region = region
        self.registry_topic = registry_topic
        self.weights = weights or Weights()
        self.max_attempts = max_attempts
        self.breakers = breakers or CircuitBreakers()
        self._resolved: TtlCache[tuple[str, str, str], registry_pb2.ModelRecord] = TtlCache(
            ttl_s=RESOLVE_CACHE_S, max_entries=4096
        )

    async def _registry(self) -> services_rpc.RegistryStub:
        peer = await wait_for_peer(self.network, self.registry_topic, timeout=REGISTRY_TIMEOUT_S)
        return services_rpc.RegistryStub(peer.rpc)

    async def follow_model_topics(
        self, regions: list[str], topics_out: list[str], *, every_s: float = MODEL_TOPICS_S
    ) -> None:
        """Look up ``tether/models/<model>/<version>/<region>`` for every published model
        (targeted discovery, spec §3.1), re-reading the registry every ``every_s``; joined
        names are appended to ``topics_out`` (the list DiscoverySub refreshes)."""
        joined: set[str] = set()
        while True:
            try:
                registry = await self._registry()
                listed = await registry.ListModels(
                    services_pb2.ListModelsRequest(), timeout=REGISTRY_TIMEOUT_S
                )
            except (RpcError, Unavailable) as exc:
                log.info("cannot list models for discovery yet: %s", exc)
            else:
                for record in listed.models:
                    for region in regions:
                        name = topics.models(record.model.model_id, record.model.version, region)
                        if name not in joined:
                            await self.network.join(name, server=False, client=True)
                            joined.add(name)
                            topics_out.append(name)
            await trio.sleep(every_s)

    async def resolve(self, request: infer_pb2.Infer.Request) -> registry_pb2.ModelRecord:
        """The registry's answer for (model, version, tenant), cached for a few seconds:
        versions are immutable once published, only 'latest' and policies can move."""
        key = (request.model_id, request.version, request.tenant_id)
        cached = self._resolved.get(key)
        if cached is not None:
            return cached
        registry = await self._registry()
        record = await registry.Resolve(
            services_pb2.ResolveRequest(
                model_id=request.model_id, version=request.version, tenant_id=request.tenant_id
            ),
            timeout=REGISTRY_TIMEOUT_S,
        )
        self._resolved.put(key, record)
        return record

    async def Submit(
        self, request: infer_pb2.Infer.Request, context: ServerContext
    ) -> AsyncIterator[infer_pb2.Infer.Chunk]:
        if not request.correlation_id:
            raise InvalidArgument("correlation_id is required")
        if not request.model_id:
            raise InvalidArgument("model_id is required")
        # The registry applies the model's tenant policy while resolving.
        record = await self.resolve(request)
        dispatched = infer_pb2.Infer.Request()
        dispatched.CopyFrom(request)
        dispatched.version = record.model.version
        retry_token = request.retry_token or "first"
        cid = request.correlation_id
        candidates = self._candidates(request, record)
        first = candidates[0].entry.worker_id
        # Quota, reservation and job are written in one transaction, before dispatch.
        reservation = await blocking.run_sync(
            lambda: self.store.admit_job(
                cid,
                retry_token,
                request.tenant_id,
                model_id=record.model.model_id,
                version=record.model.version,
                worker_id=first,
                quota_tokens=request.params.max_tokens or QUOTA_DEFAULT_TOKENS,
            )
        )
        if not reservation.created:
            raise AlreadyExists(
                f"request {cid} (retry token {retry_token!r}) was already accepted; "
                "use GetJob for its status or send a new retry token",
            )
        try:
            with telemetry.server_span(
                "orchestrator.submit",
                context.metadata,
                **{"tether.correlation_id": cid, "tether.model": record.model.model_id},
            ):
                async for chunk in self._dispatch(dispatched, candidates, context):
                    yield chunk
        except BaseException as exc:
            error = RpcError.from_exception(exc)
            if isinstance(exc, (trio.Cancelled, GeneratorExit)):
                error = RpcError(StatusCode.CANCELLED, "client cancelled")
            cancelled = error.code == StatusCode.CANCELLED

            def record_failure() -> None:
                state = jobs_pb2.JOB_STATE_CANCELLED if cancelled else jobs_pb2.JOB_STATE_FAILED
                self.store.update_job(cid, state, error=error.to_proto())
                if not cancelled:  # a failed job and its request go to the DLQ
                    self.store.dead_letter(dispatched, error.to_proto())

            with trio.CancelScope(shield=True):
                await blocking.run_sync(record_failure)
            raise

    def _candidates(
        self, request: infer_pb2.Infer.Request, record: registry_pb2.ModelRecord
    ) -> list[Candidate]:
        """Workers for the request, best first; UNAVAILABLE (nothing reserved) if none."""
        want = Placement(
            request_region=request.region or self.region,
            model=presence_pb2.ModelKey(
                model_id=record.model.model_id, version=record.model.version
            ),
            gpu_classes=tuple(record.capabilities.gpu_classes),
        )
        ranked = rank(self.discovery.snapshot(), want, self.weights)
        if not ranked:
            raise Unavailable(
                f"no healthy worker serves {want.model.model_id} {want.model.version}",
                details={"model": want.model.model_id, "version": want.model.version},
            )
        model = want.model.model_id
        candidates = [
            c
            for c in ranked
            if self.breakers.state(model, c.entry.presence.region) is not BreakerState.OPEN
        ]
        if not candidates:
            regions = sorted({c.entry.presence.region for c in ranked})
            raise Unavailable(
                f"circuit open for {model} in {', '.join(regions)}: its workers failed "
                f"repeatedly; retry in up to {self.breakers.open_s:g} s",
                details={"model": model, "breaker": "open"},
            )
        return candidates[: self.max_attempts]

    async def _dispatch(
        self,
        request: infer_pb2.Infer.Request,
        candidates: list[Candidate],
        context: ServerContext,
    ) -> AsyncIterator[infer_pb2.Infer.Chunk]:
        cid = request.correlation_id
        last_error: RpcError | None = None
        model = request.model_id
        for attempt, candidate in enumerate(candidates):
            worker_id = candidate.entry.worker_id
            region = candidate.entry.presence.region
            if not self.breakers.allow(model, region):
                continue  # half-open and its probe is already out
            if attempt:  # the first dispatch was recorded with the reservation
                await blocking.run_sync(
                    functools.partial(
                        self.store.update_job,
                        cid,
                        jobs_pb2.JOB_STATE_DISPATCHED,
                        worker_id=worker_id,
                        attempt=True,
                    )
                )
            stub = services_rpc.WorkerStub(candidate.entry.peer.rpc)
            streamed = False
            outcome: StatusCode | None = None
            try:
                async with stub.Infer(
                    request,
                    metadata=telemetry.outgoing_metadata(),
                    timeout=context.remaining_timeout(),
                ) as chunks:
                    async for chunk in chunks:
                        streamed = True
                        yield chunk
                        if chunk.done:
                            outcome = StatusCode.OK
                            await self._finalise(cid, chunk)
                            return
                outcome = StatusCode.UNAVAILABLE
                raise Unavailable(f"worker {worker_id} ended the stream without a final chunk")
            except RpcError as exc:
                outcome = exc.code
                if streamed or exc.code not in _PLACE_ELSEWHERE:
                    if exc.code == StatusCode.UNAVAILABLE:
                        raise Unavailable(
                            f"worker {worker_id} was lost mid-stream: {exc.message}",
                            details={"worker_id": worker_id},
                        ) from None
                    raise
                log.info("worker %s refused %s (%s); trying the next", worker_id, cid, exc)
                last_error = exc
            finally:
                if outcome is None:
                    self.breakers.release(model, region)
                else:
                    self.breakers.record(model, region, outcome)
        if last_error is None:
            raise Unavailable(f"{model}: every candidate's circuit is being probed; retry soon")
        raise last_error

    async def _finalise(self, cid: str, last: infer_pb2.Infer.Chunk) -> None:
        def write() -> None:
            self.store.update_job(cid, jobs_pb2.JOB_STATE_SUCCEEDED)
            if last.HasField("usage"):
                self.store.record_usage(cid, last.usage)

        await blocking.run_sync(write)

    async def GetJob(
        self, request: services_pb2.GetJobRequest, context: ServerContext
    ) -> jobs_pb2.JobStatus:
        return await blocking.run_sync(
            lambda: self.store.get_job(request.correlation_id)
        )

    async def GetFleet(
        self, request: services_pb2.GetFleetRequest, context: ServerContext
    ) -> services_pb2.GetFleetResponse:
        entries = self.discovery.snapshot()
        return services_pb2.GetFleetResponse(
            workers=[
                e.presence
                for e in entries
                if not request.region or e.presence.region == request.region
            ]
        )

