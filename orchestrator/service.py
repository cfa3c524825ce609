"""The orchestrator's RPC surface (``tether.v1.Orchestrator``): the spec's
request lifecycle (§10) from placement to finalisation.

``Submit``:
 1. resolve the model version through the Registry (RPC) and check its policy (any
    replica on the registry topic; while none answers, a model resolved in the last hour
    resolves as it did then, counted in ``tether.registry.stale_resolutions``);
 2. reserve ``(correlationId, retryToken)`` in the Metadata Store *before*
    dispatch: a repeat of an accepted request is refused (ALREADY_EXISTS)
    instead of running twice;
 3. rank the fleet snapshot by affinity score and dispatch ``Worker.Infer`` to
    the best candidate; a candidate that refuses before streaming anything
    (UNAVAILABLE, RESOURCE_EXHAUSTED) hands the request to the next one;
 4. stream the worker's chunks back; finalise the job and record usage.

A worker lost mid-stream (UNAVAILABLE, or a stream without its final chunk)
does not end the request while candidates remain: the next one replays it, the
replayed chunks the client already has are checked against a digest of what
was sent and skipped, and the stream goes on from there. Sampling is repeatable
because a seed is pinned at admission. A replay that differs is not spliced:
the request ends with UNAVAILABLE, as it does when no candidate is left; such a
job is marked FAILED and its request goes to the dead-letter queue.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import secrets
from collections.abc import AsyncGenerator, AsyncIterator

import trio
from opentelemetry import metrics as otel_metrics

from orchestrator.breaker import BreakerState, CircuitBreakers
from orchestrator.discovery import DiscoverySub
from orchestrator.rollout import Rollouts
from orchestrator.scheduler import Candidate, Placement, Weights, rank
from tether import blocking, telemetry, topics
from tether.callers import CallerPolicy
from tether.errors import AlreadyExists, InvalidArgument, TetherError, Unavailable
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
#: How long a model's last good resolution may stand in for an unreachable registry.
STALE_RESOLUTION_S = 3600.0
#: How long a resolution waits for the registry when a last good one could stand in.
REGISTRY_FALLBACK_WAIT_S = 2.0
#: Failures that mean "no registry answered" (the last good resolution may stand in).
_REGISTRY_DOWN = {StatusCode.UNAVAILABLE, StatusCode.DEADLINE_EXCEEDED}
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
        callers: CallerPolicy | None = None,
        rollouts: Rollouts | None = None,
    ) -> None:
        self.network = network
        #: Who may submit work and read jobs: gateways. None: anyone (embedded use).
        self.callers = callers or CallerPolicy.anyone()
        self.discovery = discovery
        self.store = store
        self.region = region
        self.registry_topic = registry_topic
        self.weights = weights or Weights()
        self.max_attempts = max_attempts
        self.breakers = breakers or CircuitBreakers()
        #: Canary weights and drains, set over the control topic (orchestrator.control).
        self.rollouts = rollouts or Rollouts()
        self.usage_metrics = telemetry.UsageMetrics()
        self._resolved: TtlCache[tuple[str, str, str], registry_pb2.ModelRecord] = TtlCache(
            ttl_s=RESOLVE_CACHE_S, max_entries=4096
        )
        self._last_good: TtlCache[tuple[str, str, str], registry_pb2.ModelRecord] = TtlCache(
            ttl_s=STALE_RESOLUTION_S, max_entries=4096
        )
        #: Resolutions served from the last good one while no registry answered.
        self.stale_resolutions = 0
        self._stale_counter = otel_metrics.get_meter("tether").create_counter(
            "tether.registry.stale_resolutions",
            description="Model resolutions served from the last good one while no registry "
            "replica answered",
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
        versions are immutable once published, only 'latest' and policies can move.

        While no registry replica answers, the last good answer of the past
        ``STALE_RESOLUTION_S`` stands in (logged and counted); only a model never resolved
        fails then."""
        key = (request.model_id, request.version, request.tenant_id)
        cached = self._resolved.get(key)
        if cached is not None:
            return cached
        fallback = self._last_good.get(key)
        wait_s = REGISTRY_TIMEOUT_S if fallback is None else REGISTRY_FALLBACK_WAIT_S
        try:
            record = await self._resolve_at_registry(request, wait_s)
        except (Unavailable, RpcError) as exc:
            if fallback is None or StatusCode.coerce(exc.code) not in _REGISTRY_DOWN:
                raise
            log.warning(
                "no registry answered (%s); %s %s resolves as it last did, to %s",
                exc, request.model_id, request.version or "latest", fallback.model.version,
            )
            self.stale_resolutions += 1
            self._stale_counter.add(1, {"model": request.model_id})
            self._resolved.put(key, fallback)  # the registry is asked again after the TTL
            return fallback
        self._resolved.put(key, record)
        self._last_good.put(key, record)
        return record

    async def _resolve_at_registry(
        self, request: infer_pb2.Infer.Request, wait_s: float
    ) -> registry_pb2.ModelRecord:
        """Resolve at any registry replica; a replica lost under the call (UNAVAILABLE) hands
        it to another."""
        ask = services_pb2.ResolveRequest(
            model_id=request.model_id, version=request.version, tenant_id=request.tenant_id
        )
        timeout = max(wait_s, REGISTRY_FALLBACK_WAIT_S)
        peer = await wait_for_peer(self.network, self.registry_topic, timeout=wait_s)
        try:
            return await services_rpc.RegistryStub(peer.rpc).Resolve(ask, timeout=timeout)
        except RpcError as exc:
            if exc.code != StatusCode.UNAVAILABLE:
                raise
            log.info("registry replica %s lost (%s); asking another", peer.key_hex[:12], exc)
        peer = await wait_for_peer(self.network, self.registry_topic, timeout=wait_s)
        return await services_rpc.RegistryStub(peer.rpc).Resolve(ask, timeout=timeout)

    async def Submit(
        self, request: infer_pb2.Infer.Request, context: ServerContext
    ) -> AsyncIterator[infer_pb2.Infer.Chunk]:
        self.callers.check(context)
        if not request.correlation_id:
            raise InvalidArgument("correlation_id is required")
        if not request.model_id:
            raise InvalidArgument("model_id is required")
        # A request that names no version follows the model's canary rollout, if any;
        # its outcome counts against that version's error budget.
        canary = None if request.version else self.rollouts.choose(
            request.model_id, request.correlation_id)
        if canary is not None:
            pinned = infer_pb2.Infer.Request()
            pinned.CopyFrom(request)
            pinned.version = canary
            request = pinned
        try:
            async with contextlib.aclosing(self._submit(request, context)) as chunks:
                async for chunk in chunks:
                    yield chunk
        except TetherError as exc:
            if canary is not None:
                self._count(request, StatusCode.coerce(exc.code))
            raise
        if canary is not None:
            self._count(request, StatusCode.OK)

    def _count(self, request: infer_pb2.Infer.Request, code: StatusCode) -> None:
        halted = self.rollouts.record(request.model_id, request.version, code)
        if halted:
            log.warning("error budget spent; the rollout halted a version: %s", halted)

    async def _submit(
        self, request: infer_pb2.Infer.Request, context: ServerContext
    ) -> AsyncGenerator[infer_pb2.Infer.Chunk]:
        # The registry applies the model's tenant policy while resolving.
        record = await self.resolve(request)
        dispatched = infer_pb2.Infer.Request()
        dispatched.CopyFrom(request)
        dispatched.version = record.model.version
        if request.input.WhichOneof("kind") == "text" and not request.params.seed:
            # Pinned, so that a replay on another worker (one lost mid-stream) samples the
            # same answer and can be spliced onto what the client already has.
            dispatched.params.seed = secrets.randbits(63) | 1
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
                async with contextlib.aclosing(
                    self._dispatch(dispatched, candidates, context)
                ) as chunks:
                    async for chunk in chunks:
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
        snapshot = self.discovery.snapshot()
        self.rollouts.forget({e.worker_id for e in snapshot})
        ranked = rank(snapshot, want, self.weights)
        placeable = [c for c in ranked if self.rollouts.placeable(c.entry.worker_id)]
        if ranked and not placeable:
            raise Unavailable(
                f"every worker serving {want.model.model_id} {want.model.version} is draining",
                details={"model": want.model.model_id, "version": want.model.version},
            )
        ranked = placeable
        if not ranked:
            raise Unavailable(
                f"no healthy worker serves {want.model.model_id} {want.model.version}",
                details={"model": want.model.model_id, "version": want.model.version},
            )
        model = f"{want.model.model_id}@{want.model.version}"  # one pool per version
        candidates = [
            c
            for c in ranked
            if self.breakers.state(model, c.entry.presence.region) is not BreakerState.OPEN
        ]
        if not candidates:
            regions = sorted({c.entry.presence.region for c in ranked})
            why = "; ".join(
                f"{r}: {self.breakers.reason(model, r) or 'open'}" for r in regions
            )
            raise Unavailable(
                f"circuit open for {model} ({why}); retry in up to {self.breakers.open_s:g} s",
                details={"model": model, "breaker": "open"},
            )
        return candidates[: self.max_attempts]

    async def _dispatch(
        self,
        request: infer_pb2.Infer.Request,
        candidates: list[Candidate],
        context: ServerContext,
    ) -> AsyncGenerator[infer_pb2.Infer.Chunk]:
        cid = request.correlation_id
        last_error: RpcError | None = None
        model = f"{request.model_id}@{request.version}"  # the breakers' pool key
        resume = _Resume()
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
            replay = resume.replay()
            outcome: StatusCode | None = None
            sent_at, first_chunk_s = trio.current_time(), None
            try:
                async with stub.Infer(
                    request,
                    metadata=telemetry.outgoing_metadata(),
                    timeout=context.remaining_timeout(),
                ) as chunks:
                    async for chunk in chunks:
                        if first_chunk_s is None:
                            first_chunk_s = trio.current_time() - sent_at
                        if not replay.accept(chunk):
                            continue  # the client has this one already
                        resume.delivered(chunk)
                        yield chunk
                        if chunk.done:
                            outcome = StatusCode.OK
                            await self._finalise(cid, chunk)
                            return
                raise RpcError(
                    StatusCode.UNAVAILABLE,
                    f"worker {worker_id} ended the stream without a final chunk",
                )
            except _Diverged as exc:  # the worker is fine; the request cannot be spliced
                what = last_error.message if last_error is not None else "a worker was lost"
                raise Unavailable(f"{what}; {exc.message}", details=exc.details) from None
            except RpcError as exc:
                outcome = exc.code
                if resume.count and exc.code == StatusCode.UNAVAILABLE:
                    # Lost mid-stream: the next candidate replays the request and the
                    # chunks the client already has are checked and skipped.
                    lost = resume.lost(worker_id, exc)
                    log.info("%s; resuming %s at chunk %d elsewhere", lost, cid, resume.count)
                    last_error = lost
                    continue
                if replay.streamed or exc.code not in _PLACE_ELSEWHERE:
                    raise
                log.info("worker %s refused %s (%s); trying the next", worker_id, cid, exc)
                last_error = exc
            finally:
                if outcome is None:
                    self.breakers.release(model, region)
                else:
                    self.breakers.record(model, region, outcome, first_chunk_s=first_chunk_s)
        if last_error is None:
            raise Unavailable(f"{model}: every candidate's circuit is being probed; retry soon")
        if resume.count:
            raise resume.unresumed(last_error)
        raise last_error

    async def _finalise(self, cid: str, last: infer_pb2.Infer.Chunk) -> None:
        def write() -> None:
            self.store.update_job(cid, jobs_pb2.JOB_STATE_SUCCEEDED)
            if last.HasField("usage"):
                self.store.record_usage(cid, last.usage)

        await blocking.run_sync(write)
        if last.HasField("usage"):
            u = last.usage
            self.usage_metrics.record(
                u.tenant_id, f"{u.model_id}@{u.version}", u.input_tokens, u.output_tokens
            )

    async def GetJob(
        self, request: services_pb2.GetJobRequest, context: ServerContext
    ) -> jobs_pb2.JobStatus:
        self.callers.check(context)
        return await blocking.run_sync(
            lambda: self.store.get_job(request.correlation_id)
        )

    async def GetFleet(
        self, request: services_pb2.GetFleetRequest, context: ServerContext
    ) -> services_pb2.GetFleetResponse:
        self.callers.check(context)
        entries = self.discovery.snapshot()
        return services_pb2.GetFleetResponse(
            workers=[
                e.presence
                for e in entries
                if not request.region or e.presence.region == request.region
            ]
        )



class _Resume:
    """What a client has received of one request, so that another worker can resume it.

    Generation is repeatable (the orchestrator pins a seed when the client did not give
    one), so a replay on another worker streams the same chunks again; the ones the
    client already has are compared by digest and skipped. A replay that differs (a
    different backend computed other numbers) cannot be spliced and ends the request.
    """

    def __init__(self) -> None:
        self.count = 0
        self._digest = hashlib.blake2b(digest_size=16)
        self.lost_workers: list[str] = []

    def delivered(self, chunk: infer_pb2.Infer.Chunk) -> None:
        self.count += 1
        self._digest.update(_chunk_bytes(chunk))

    def replay(self) -> _Replay:
        return _Replay(self.count, self._digest.digest())

    def lost(self, worker_id: str, exc: RpcError) -> RpcError:
        self.lost_workers.append(worker_id)
        return RpcError(
            StatusCode.UNAVAILABLE,
            f"worker {worker_id} was lost mid-stream after {self.count} chunks: {exc.message}",
            details={"worker_id": worker_id, "delivered": str(self.count)},
        )

    def unresumed(self, last: RpcError) -> RpcError:
        details = dict(last.details)
        details["lost_workers"] = ",".join(self.lost_workers)
        if last.code == StatusCode.UNAVAILABLE and "was lost mid-stream" in last.message:
            message = f"{last.message}; no other worker could resume it"
        else:
            message = (f"{', '.join(self.lost_workers)} lost mid-stream; resuming failed: "
                       f"{last.message}")
        return RpcError(last.code, message, details=details)


class _Replay:
    """One attempt's view: its first ``skip`` chunks must reproduce what was sent."""

    def __init__(self, skip: int, expected: bytes) -> None:
        self.skip = skip
        self.streamed = False
        self._expected = expected
        self._digest = hashlib.blake2b(digest_size=16)
        self._seen = 0

    def accept(self, chunk: infer_pb2.Infer.Chunk) -> bool:
        """False for a replayed chunk the client has; raises if the replay diverged."""
        self.streamed = True
        if self._seen >= self.skip:
            return True
        self._seen += 1
        self._digest.update(_chunk_bytes(chunk))
        # A final chunk here means a shorter answer than the one being sent.
        if chunk.done or (self._seen == self.skip and self._digest.digest() != self._expected):
            raise _Diverged(
                f"its replay on worker {chunk.worker_id} differs from the {self.skip} "
                "chunks already sent, so it cannot be resumed there",
                details={"worker_id": chunk.worker_id, "delivered": str(self.skip)},
            )
        return False


class _Diverged(TetherError):
    """A replay that does not reproduce the chunks already sent."""


def _chunk_bytes(chunk: infer_pb2.Infer.Chunk) -> bytes:
    return chunk.payload.SerializeToString(deterministic=True) + b"\x00"
