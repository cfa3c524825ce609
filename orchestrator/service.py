"""The orchestrator's RPC surface (``tether.v1.Orchestrator``): the spec's
request lifecycle (§10) from placement to finalisation.

``Submit``:
 1. resolve the model version through the Registry (RPC) and check its policy, and
    the request against the model's limits (``tether.limits``): a client error is
    refused here, before anything is charged or reserved;
    the registry is any replica on the registry topic; while none answers, a model
    resolved in the last hour resolves as it did then, counted in
    ``tether.registry.stale_resolutions``;
 2. reserve ``(correlationId, retryToken)`` in the Metadata Store *before*
    dispatch: a repeat of an accepted request is refused (ALREADY_EXISTS)
    instead of running twice;
 3. rank the live workers serving the version (``FleetIndex``) by affinity
    score and dispatch ``Worker.Infer`` to the best candidate; a candidate that
    refuses before streaming anything (UNAVAILABLE, RESOURCE_EXHAUSTED) hands the
    request to the next one;
 4. stream the worker's chunks back; finalise the job and record usage, behind the
    response (below).

One transaction per request on the hot path: admission (quota, reservation, job) is
committed before dispatch by a group-commit writer (``tether.metadata.group``), which
puts the admissions that arrive together into one commit; a finished job's outcome and
usage are written behind the response, riding with the next admission's commit or
flushed within 50 ms. They are never lost silently: a crash (SIGKILL) before that flush
leaves the job running under this orchestrator in the store, and the lease mechanism
below fails it like any job the crash interrupted (FAILED naming this orchestrator,
dead-lettered, quota given back, no usage charged). A drain flushes before it ends the
lease; ``GetJob`` and a retry of the same ids read after a flush.

A worker lost mid-stream (UNAVAILABLE, or a stream without its final chunk)
does not end the request while candidates remain: the next one replays it, the
replayed chunks the client already has are checked against a digest of what
was sent and skipped (``tether.resume``), and the stream goes on from there. Sampling is repeatable
because a seed is pinned at admission. A replay that differs is not spliced:
the request ends with UNAVAILABLE, as it does when no candidate is left; such a
job is marked FAILED and its request goes to the dead-letter queue.

``Place`` names the candidates of a request without reserving anything, for a
requester that seals the input end to end (``tether.sealing``). A sealed
request is placed only on workers it holds a key slot for; its chunks are
sealed by the worker deterministically, so a lost worker's stream still resumes
on another sealed-to candidate. The orchestrator sees, and the Metadata Store
keeps (jobs, dead letters), only the ciphertext and the clear metadata.

Degrade (spec §3.2, the policy engine): when the requested pool sheds a request before
admission (every worker full, its circuit open, no worker serves it) and the model's
policy allows degrading (``Policy.allow_degrade`` with ``Capabilities.degrade_to``), the
request is placed on the degrade-to model instead (one hop, under that model's own
tenant policy and limits); it is admitted, charged and recorded as that model, and its
first chunk says so (``Chunk.degraded_from``, ``Chunk.served_model``). Sealed requests
are never degraded. When the target has no room either, the error names both pools.

Overload is not failure: when every worker serving the model is full (by its last
heartbeat plus what this orchestrator dispatched to it since), or every candidate
sheds the request, the answer is RESOURCE_EXHAUSTED with a retry hint
(``retry_after_ms``), never UNAVAILABLE while workers are alive. A request shed,
or refused by a worker as the client's error (INVALID_ARGUMENT), before it produced
anything is un-admitted: its quota is given back, its reservation freed, and it is
not dead-lettered.

Orchestrators fail too. Every job records its owner (this orchestrator's public
key) and the request as dispatched; the owner renews a lease in the store
(``keep_lease``). On start an orchestrator fails what a previous run of it left
running; a peer fails the jobs of an owner whose lease ran out. Either way the
cause names the orchestrator, the request is dead-lettered and its quota given
back. A retry with the same ``(correlation id, retry token)`` gets the outcome
of a finished job, and reattaches to a job whose owner is dead (its lease ran
out, or the gateway says it lost that orchestrator): the job is claimed and run
again from its stored request, and the gateway splices the replay onto what its
client has. ``drain`` (SIGTERM) refuses new work, lets in-flight requests finish
within a bound, and fails the rest naming this orchestrator as the cause.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import secrets
from collections.abc import AsyncGenerator, AsyncIterator

import trio
from opentelemetry import metrics as otel_metrics
from sqlalchemy.exc import SQLAlchemyError

from orchestrator.breaker import BreakerState, CircuitBreakers
from orchestrator.discovery import DiscoverySub, InFlight
from orchestrator.recent import RecentOutcomes
from orchestrator.rollout import Rollouts
from orchestrator.scheduler import Candidate, Placement, Weights
from tether import blocking, limits, metrics, sealing, telemetry, topics
from tether.callers import CallerPolicy
from tether.errors import (
    AlreadyExists,
    InvalidArgument,
    ResourceExhausted,
    TetherError,
    Unavailable,
)
from tether.metadata.group import GroupCommit
from tether.metadata.store import ACTIVE_JOB_STATES, MetadataStore
from tether.net import Network, peers_on, wait_for_peer
from tether.resume import LOST_ORCHESTRATOR, ChunkBatch, Diverged, Replay, Resume
from tether.rpc import Encoded, Responses, RpcError, ServerContext, StatusCode
from tether.timing import Hops
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
#: Workers ``Place`` names at most: a sealed request gets a key slot for each, so that
#: it survives reranking between Place and Submit and can resume elsewhere.
PLACE_MAX = 8
#: When a shed request is worth retrying: a slot frees whenever any request ends.
SHED_RETRY_AFTER_S = 1.0
#: Worker refusals that end a request which produced nothing without dead-lettering it:
#: the client's own error, or shedding (the request may be retried as it is).
_UNADMIT = {StatusCode.INVALID_ARGUMENT, StatusCode.RESOURCE_EXHAUSTED}
#: How long an orchestrator's lease on its jobs lasts, and how often it renews it: a
#: peer takes the jobs of a dead orchestrator over within about LEASE_S + LEASE_RENEW_S.
LEASE_S = 15.0
LEASE_RENEW_S = 5.0
#: How long, after a drain ran out, the requests it cancelled have to record their end.
DRAIN_RECORD_S = 5.0


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
        read_store: MetadataStore | None = None,
    ) -> None:
        self.network = network
        #: The hot path's writes: admissions committed in groups, finalisations behind.
        #: Its ``run`` task is started beside ``keep_lease``.
        self.writer = GroupCommit(store)
        #: Who may submit work and read jobs: gateways. None: anyone (embedded use).
        self.callers = callers or CallerPolicy.anyone()
        self.discovery = discovery
        self.store = store
        #: Reads that may lag (GetJob's status): a replica, or ``store``.
        self.read_store = read_store or store
        self.region = region
        self.registry_topic = registry_topic
        self.weights = weights or Weights()
        self.max_attempts = max_attempts
        self.breakers = breakers or CircuitBreakers()
        metrics.watch_breakers(self.breakers)
        #: Outcomes of the last few minutes (``tether status``).
        self.recent = RecentOutcomes(self.breakers.clock)
        #: Canary weights and drains, set over the control topic (orchestrator.control).
        self.rollouts = rollouts or Rollouts()
        self.usage_metrics = telemetry.UsageMetrics()
        self._resolved: TtlCache[tuple[str, str, str], registry_pb2.ModelRecord] = TtlCache(
            ttl_s=RESOLVE_CACHE_S, max_entries=4096, name="orchestrator_resolution"
        )
        self._last_good: TtlCache[tuple[str, str, str], registry_pb2.ModelRecord] = TtlCache(
            ttl_s=STALE_RESOLUTION_S, max_entries=4096
        )
        self._degraded = otel_metrics.get_meter("tether").create_counter(
            "tether.orchestrator.degraded",
            description="Requests placed on their model's degrade-to model because the "
            "requested pool had no room, by requested model and target",
        )
        #: Resolutions served from the last good one while no registry answered.
        self.stale_resolutions = 0
        self._stale_counter = otel_metrics.get_meter("tether").create_counter(
            "tether.registry.stale_resolutions",
            description="Model resolutions served from the last good one while no registry "
            "replica answered",
        )
        #: This orchestrator's name on the jobs it owns: its public key, hex.
        self.owner = network.public_key.hex()
        self.draining = False
        #: The requests being served: a drain that runs out cancels them.
        self._running: set[trio.CancelScope] = set()
        self._running_changed = trio.Event()
        #: Why the requests still running were cancelled (set when a drain runs out).
        self._stop_error: RpcError | None = None
        self._halted = False

    def _stopped(self, why: str) -> RpcError:
        """The cause of a job this orchestrator did not finish: itself, not a worker."""
        return RpcError(
            StatusCode.UNAVAILABLE,
            f"orchestrator {self.owner[:16]} stopped before the job finished ({why})",
            details={"orchestrator": self.owner},
        )

    # -------------------------------------------------------------- ownership

    async def keep_lease(
        self, *, every_s: float = LEASE_RENEW_S, lease_s: float = LEASE_S,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Hold this orchestrator's lease on its jobs, renewing it every ``every_s``.

        First, jobs it owns that are still running were left by a previous run of it (a
        crash): their clients are gone, so they are failed, naming this orchestrator.
        Then, at each renewal, jobs of an owner whose lease ran out (a dead peer) are
        failed likewise; the store's conditional writes let only one peer take each.
        """
        ttl_ms = int(lease_s * 1000)
        await blocking.run_sync(lambda: self.store.renew_lease(self.owner, ttl_ms))
        left = await blocking.run_sync(lambda: self.store.owned_jobs(self.owner))
        for cid in left:
            await self._fail_abandoned(cid, self.owner, "found running when it started again")
        task_status.started()
        while True:
            await trio.sleep(every_s)
            try:
                await blocking.run_sync(lambda: self.store.renew_lease(self.owner, ttl_ms))
                orphans = await blocking.run_sync(lambda: self.store.orphaned_jobs(self.owner))
                for cid, owner in orphans:
                    await self._fail_abandoned(cid, owner, "its lease ran out")
            except (TetherError, SQLAlchemyError) as exc:  # the store is away: next time
                log.warning("cannot renew the lease or take jobs over: %s", exc)

    async def _fail_abandoned(self, cid: str, owner: str, why: str) -> None:
        error = RpcError(
            StatusCode.UNAVAILABLE,
            f"orchestrator {owner[:16]} stopped before the job finished ({why})",
            details={"orchestrator": owner},
        ).to_proto()
        if await blocking.run_sync(lambda: self.store.fail_job(cid, error, owner=owner)):
            log.warning("job %s failed: %s; dead-lettered", cid, error.message)

    async def drain(self, timeout_s: float) -> None:
        """Stop gracefully (SIGTERM): refuse new requests at once (UNAVAILABLE, so a
        gateway sends them elsewhere), let those in flight finish for up to ``timeout_s``,
        then fail the rest naming this orchestrator as the cause, and end the lease."""
        self.draining = True
        log.info("draining: %d requests in flight, up to %g s", len(self._running), timeout_s)
        try:
            with trio.move_on_after(timeout_s):
                await self._wait_idle()
        except trio.Cancelled:  # stopped at once (a second signal): the same cause
            self._stop_error = self._stopped("it was stopped before its drain ended")
            raise
        if self._running:
            self._stop_error = self._stopped(f"it was stopped and its {timeout_s:g} s drain "
                                             "ran out")
            log.warning("drain ran out; failing %d requests", len(self._running))
            for scope in list(self._running):
                scope.cancel()
            with trio.move_on_after(DRAIN_RECORD_S):
                await self._wait_idle()
        with trio.move_on_after(DRAIN_RECORD_S):
            await self.writer.flush()  # every outcome recorded before the lease ends
        await blocking.run_sync(lambda: self.store.end_lease(self.owner))

    async def _wait_idle(self) -> None:
        while self._running:
            await self._running_changed.wait()

    def halt(self) -> None:
        """Record nothing more, as a process killed with SIGKILL does: its jobs stay
        running in the store for its restart or a peer to take over. (Tests stand a
        killed process in for this; a real one just dies.)"""
        self._halted = True
        self.writer.halt()

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
    ) -> AsyncIterator[Responses[infer_pb2.Infer.Chunk]]:
        self.callers.check(context)
        if self.draining:
            raise Unavailable(
                f"orchestrator {self.owner[:16]} is draining; send the request to another",
                details={"orchestrator": self.owner, "draining": "true"},
            )
        if not request.correlation_id:
            raise InvalidArgument("correlation_id is required")
        limits.check_client_id("correlation id", request.correlation_id)
        if not request.model_id:
            raise InvalidArgument("model_id is required")
        # A request that names no version follows the model's canary rollout, if any;
        # its outcome counts against that version's error budget.
        canary = self._canary(request.model_id, request.version, request.correlation_id)
        if canary is not None:
            pinned = infer_pb2.Infer.Request()
            pinned.CopyFrom(request)
            pinned.version = canary
            request = pinned
        scope = trio.CancelScope()
        ran = _Ran(hops=Hops(request.timing))
        ran.hops.stamp("orchestrator.in")
        try:
            with scope:
                self._running.add(scope)
                async with contextlib.aclosing(self._submit(request, context, ran)) as batches:
                    async for batch in batches:
                        ran.hops.add_to_batch(batch, last="orchestrator.out")
                        yield batch
            if scope.cancelled_caught and self._stop_error is not None:
                raise self._stop_error
        except TetherError as exc:
            self.recent.record(StatusCode.coerce(exc.code))
            # A sealed request to re-place says nothing about the version, nor does one
            # another model served (degraded).
            reseal = exc.details.get("reason") == sealing.RESEAL
            if canary is not None and not reseal and not ran.degraded:
                self._count(request, StatusCode.coerce(exc.code))
            raise
        finally:
            self._running.discard(scope)
            self._running_changed.set()
            self._running_changed = trio.Event()
        self.recent.record(StatusCode.OK)
        if canary is not None and not ran.degraded:
            self._count(request, StatusCode.OK)

    def _canary(self, model_id: str, version: str, correlation_id: str) -> str | None:
        return None if version else self.rollouts.choose(model_id, correlation_id)

    async def Place(
        self, request: services_pb2.PlaceRequest, context: ServerContext
    ) -> services_pb2.PlaceResponse:
        """The candidates ``Submit`` would try for this request now, best first (up to
        ``PLACE_MAX``), with their identity keys: whom to seal the request to."""
        self.callers.check(context)
        if not request.model_id:
            raise InvalidArgument("model_id is required")
        target = infer_pb2.Infer.Request(
            tenant_id=request.tenant_id,
            model_id=request.model_id,
            version=self._canary(request.model_id, request.version, request.correlation_id)
            or request.version,
            region=request.region,
        )
        record = await self.resolve(target)
        return services_pb2.PlaceResponse(
            tenant_id=request.tenant_id,
            workers=[
                services_pb2.PlacedWorker(
                    worker_id=c.entry.worker_id, pub_key=c.entry.peer.remote_key
                )
                for c in self._candidates(target, record, limit=PLACE_MAX)
            ],
        )

    def _count(self, request: infer_pb2.Infer.Request, code: StatusCode) -> None:
        halted = self.rollouts.record(request.model_id, request.version, code)
        if halted:
            log.warning("error budget spent; the rollout halted a version: %s", halted)

    async def _submit(
        self, request: infer_pb2.Infer.Request, context: ServerContext, ran: _Ran
    ) -> AsyncGenerator[ChunkBatch]:
        # The registry applies the model's tenant policy while resolving.
        record = await self.resolve(request)
        limits.check_for_model(request, record)  # a client error is never admitted
        degraded_from = ""
        try:
            candidates = self._candidates(request, record)
        except (ResourceExhausted, Unavailable) as shed:
            requested = _model_name(record)
            request, record, candidates = await self._degrade(request, record, shed)
            degraded_from = requested
            ran.degraded = True
        first = candidates[0].entry.worker_id
        # Counted against the worker from placement on, so that requests placed at the
        # same moment (none dispatched yet) see each other.
        placed = _Placed(self.discovery.in_flight, first)
        try:
            async with contextlib.aclosing(
                self._admit_and_run(request, record, candidates, placed, context, hops=ran.hops)
            ) as batches:
                async for batch in batches:
                    if degraded_from:  # said once, on the first chunk the client gets
                        chunk = batch[0].message
                        chunk.degraded_from = degraded_from
                        chunk.served_model = _model_name(record)
                        batch[0] = Encoded(chunk, chunk.SerializeToString())
                        degraded_from = ""
                    yield batch
        finally:
            placed.release()

    async def _degrade(
        self,
        request: infer_pb2.Infer.Request,
        record: registry_pb2.ModelRecord,
        shed: TetherError,
    ) -> tuple[infer_pb2.Infer.Request, registry_pb2.ModelRecord, list[Candidate]]:
        """The policy engine's degrade (spec §3.2): the requested pool shed the request
        before admission (every worker full, its circuit open, no worker), so place it on
        the model's ``degrade_to`` model instead, if its policy allows that.

        Re-raises ``shed`` as it is when the policy does not allow it (or the request is
        sealed: only the requested pool's workers can read it); when the target cannot
        take the request either, the error names both pools, RESOURCE_EXHAUSTED if
        either is only busy. One hop: the target's own degrade-to is not followed."""
        target = record.capabilities.degrade_to
        if not record.policy.allow_degrade or not target.model_id or request.HasField("sealed"):
            raise shed
        requested = _model_name(record)
        degraded = infer_pb2.Infer.Request()
        degraded.CopyFrom(request)
        degraded.model_id, degraded.version = target.model_id, target.version
        wanted = f"{target.model_id}@{target.version or 'latest'}"
        try:
            # The target's tenant policy and limits apply as to any request for it.
            to = await self.resolve(degraded)
            wanted = _model_name(to)
            degraded.version = to.model.version
            limits.check_for_model(degraded, to)
            candidates = self._candidates(degraded, to)
        except TetherError as exc:
            message = f"{shed.message}; its degrade target {wanted} cannot take it: {exc.message}"
            details = {**shed.details, "degrade_to": wanted}
            if isinstance(shed, ResourceExhausted) or isinstance(exc, ResourceExhausted):
                raise ResourceExhausted(
                    message, details=details, retry_after_s=SHED_RETRY_AFTER_S
                ) from None
            raise Unavailable(message, details=details) from None
        log.info("%s sheds %s (%s); degraded to %s", requested, request.correlation_id,
                 shed.message, wanted)
        self._degraded.add(1, {"model": requested, "degrade_to": wanted})
        return degraded, to, candidates

    async def _admit_and_run(
        self,
        request: infer_pb2.Infer.Request,
        record: registry_pb2.ModelRecord,
        candidates: list[Candidate],
        placed: _Placed,
        context: ServerContext,
        *,
        hops: Hops,
    ) -> AsyncGenerator[ChunkBatch]:
        """Admit the request (quota, reservation, job), dispatch it, and record how it
        ended: a failure after admission is dead-lettered, unless it was the client's
        error or shedding and nothing was sent (then the admission is undone)."""
        dispatched = infer_pb2.Infer.Request()
        dispatched.CopyFrom(request)
        dispatched.version = record.model.version
        text = (request.input.WhichOneof("kind") in ("text", "messages")
                or request.HasField("sealed"))
        if text and not request.params.seed:
            # Pinned, so that a replay on another worker (one lost mid-stream) samples the
            # same answer and can be spliced onto what the client already has. (A sealed
            # input's kind is unknown here; a seed does nothing to other kinds.)
            dispatched.params.seed = secrets.randbits(63) | 1
        retry_token = request.retry_token or "first"
        cid = request.correlation_id
        quota_tokens = limits.max_tokens(request.params)
        hops.stamp("orchestrator.placed")
        # Quota, reservation and job are written in one transaction, committed before
        # dispatch (with the admissions and finalisations pending at the same moment).
        reservation = await self.writer.write(
            functools.partial(
                self.store.admit_in,
                correlation_id=cid,
                retry_token=retry_token,
                tenant_id=request.tenant_id,
                model_id=record.model.model_id,
                version=record.model.version,
                worker_id=candidates[0].entry.worker_id,
                quota_tokens=quota_tokens,
                owner=self.owner,
                request=dispatched,
            )
        )
        hops.stamp("orchestrator.admitted")
        if not reservation.created:
            dispatched = await self._reattach(
                dispatched, retry_token, candidates[0].entry.worker_id, context
            )
            if (dispatched.model_id, dispatched.version) != (
                record.model.model_id, record.model.version
            ):
                # The job ran on another model (it was degraded then, or is now): it
                # runs again where it ran, as stored.
                ran = await self.resolve(dispatched)
                candidates = self._candidates(dispatched, ran)
        delivered = finished = False
        try:
            with telemetry.server_span(
                "orchestrator.submit",
                context.metadata,
                **{"tether.correlation_id": cid, "tether.model": record.model.model_id},
            ):
                async with contextlib.aclosing(
                    self._dispatch(dispatched, candidates, placed, context, hops=hops)
                ) as batches:
                    async for batch in batches:
                        delivered = True
                        finished = batch[-1].message.done
                        yield batch
        except BaseException as exc:
            if finished:  # its outcome is written already; a cancel now changes nothing
                raise
            error = RpcError.from_exception(exc)
            if isinstance(exc, (trio.Cancelled, GeneratorExit)):
                # Cancelled by the client, or by a drain that ran out (then this
                # orchestrator is the cause).
                error = self._stop_error or RpcError(StatusCode.CANCELLED, "client cancelled")
            cancelled = error.code == StatusCode.CANCELLED
            if not delivered and error.code in _UNADMIT:

                def unadmit() -> None:
                    self.store.unadmit_job(cid, retry_token, request.tenant_id,
                                           quota_tokens=quota_tokens, error=error.to_proto())

                with trio.CancelScope(shield=True):
                    await blocking.run_sync(unadmit)
                raise

            def record_failure() -> None:
                if cancelled:
                    self.store.update_job(cid, jobs_pb2.JOB_STATE_CANCELLED,
                                          error=error.to_proto(), owner=self.owner)
                else:  # a failed job and its request go to the DLQ, its quota comes back
                    self.store.fail_job(cid, error.to_proto(), owner=self.owner,
                                        request=dispatched)
                    metrics.dead_letter(record.model.model_id, record.model.version,
                                        error.code.name)

            if not self._halted:
                with trio.CancelScope(shield=True):
                    await blocking.run_sync(record_failure)
            raise

    async def _reattach(
        self,
        dispatched: infer_pb2.Infer.Request,
        retry_token: str,
        worker_id: str,
        context: ServerContext,
    ) -> infer_pb2.Infer.Request:
        """A repeat of an accepted ``(correlation id, retry token)``: the outcome of a
        finished job (ALREADY_EXISTS naming it); for a job whose orchestrator is dead, the
        job claimed by this one and its stored request, to run again."""
        cid = dispatched.correlation_id
        await self.writer.flush()  # a job this orchestrator just finished: its outcome
        job = await blocking.run_sync(lambda: self.store.job_record(cid))
        state = jobs_pb2.JobState.Name(job.state)
        lost = {k for k in context.metadata.get(LOST_ORCHESTRATOR, "").split(",") if k}
        # A gateway that dropped an orchestrator it thought dead (it stopped answering)
        # may find the job CANCELLED by that one as the connection went: not the
        # client's doing, so it is taken over like a running job.
        left = job.state == jobs_pb2.JOB_STATE_CANCELLED and job.owner in lost
        if job.state not in ACTIVE_JOB_STATES and not left:
            outcome = state.removeprefix("JOB_STATE_")
            if job.error_code:
                code = StatusCode.coerce(job.error_code).name
                outcome += f" ({code}: {job.error_message})"
            raise AlreadyExists(
                f"request {cid} (retry token {retry_token!r}) already ran: {outcome}; "
                "send a new retry token to run it again",
                details={"state": state, "error_code": str(job.error_code),
                         "error_message": job.error_message},
            )
        owner = job.owner
        dead = owner != self.owner and (
            owner in lost
            or not await blocking.run_sync(lambda: self.store.owner_alive(owner))
        )
        if not dead or not await blocking.run_sync(
            lambda: self.store.claim_job(cid, self.owner, from_owner=owner,
                                         cancelled_too=bool(left))
        ):
            raise AlreadyExists(
                f"request {cid} (retry token {retry_token!r}) was already accepted and is "
                "running; use GetJob for its status or send a new retry token",
                details={"state": state},
            )
        log.info("took %s over from orchestrator %s, which was lost", cid, owner[:16])
        await blocking.run_sync(functools.partial(
            self.store.update_job, cid, jobs_pb2.JOB_STATE_DISPATCHED, worker_id=worker_id,
            owner=self.owner))
        if job.request and not dispatched.HasField("sealed"):
            # (A sealed request is sealed anew by its requester, to a key it still holds.)
            stored = infer_pb2.Infer.Request.FromString(job.request)
            stored.trace_id = dispatched.trace_id
            return stored
        return dispatched

    def _candidates(
        self,
        request: infer_pb2.Infer.Request,
        record: registry_pb2.ModelRecord,
        *,
        limit: int | None = None,
    ) -> list[Candidate]:
        """Workers for the request, best first, at most ``limit`` (``max_attempts``);
        a sealed request only on workers it has a key slot for. UNAVAILABLE (nothing
        reserved) if none."""
        want = Placement(
            request_region=request.region or self.region,
            model=presence_pb2.ModelKey(
                model_id=record.model.model_id, version=record.model.version
            ),
            gpu_classes=tuple(record.capabilities.gpu_classes),
        )
        self.rollouts.forget(self.discovery.worker_ids())
        sealed_to = (
            sealing.sealed_worker_keys(request) if request.HasField("sealed") else None
        )
        model = f"{want.model.model_id}@{want.model.version}"  # one pool per version
        take = limit or self.max_attempts
        # Candidates come best first, full ones last: taken until there are enough, and
        # counted on (the error says why) only if none could be taken.
        ranked = placeable = sealed_ok = candidates = 0
        states: dict[str, BreakerState] = {}
        room: list[Candidate] = []
        for c in self.discovery.ranked(want, self.weights):
            ranked += 1
            if not self.rollouts.placeable(c.entry.worker_id):
                continue
            placeable += 1
            if sealed_to is not None and c.entry.peer.remote_key not in sealed_to:
                continue
            sealed_ok += 1
            region = c.entry.presence.region
            state = states.get(region)
            if state is None:
                state = states[region] = self.breakers.state(model, region)
            if state is BreakerState.OPEN:
                continue
            candidates += 1
            if c.full:
                if room:
                    break  # the rest are full too
                continue
            room.append(c)
            if len(room) == take:
                break
        if room:
            return room
        raise self._no_candidate(
            request, want, model, states, ranked=ranked, placeable=placeable,
            sealed_ok=sealed_ok, candidates=candidates,
        )

    def _no_candidate(
        self,
        request: infer_pb2.Infer.Request,
        want: Placement,
        model: str,
        states: dict[str, BreakerState],
        *,
        ranked: int,
        placeable: int,
        sealed_ok: int,
        candidates: int,
    ) -> Unavailable | ResourceExhausted:
        """Why ``_candidates`` found no worker to take the request, from how many
        candidates passed each of its filters (the first that none passed says why)."""
        if not ranked:
            return Unavailable(
                f"no healthy worker serves {want.model.model_id} {want.model.version}",
                details={"model": want.model.model_id, "version": want.model.version},
            )
        if not placeable:
            return Unavailable(
                f"every worker serving {want.model.model_id} {want.model.version} is draining",
                details={"model": want.model.model_id, "version": want.model.version},
            )
        if not sealed_ok:
            return Unavailable(
                f"none of the workers request {request.correlation_id} was sealed to can "
                "take it now; place it and seal it again",
                details={"model": want.model.model_id, "reason": sealing.RESEAL},
            )
        if not candidates:
            why = "; ".join(
                f"{r}: {self.breakers.reason(model, r) or 'open'}" for r in sorted(states)
            )
            return Unavailable(
                f"circuit open for {model} ({why}); retry in up to {self.breakers.open_s:g} s",
                details={"model": model, "breaker": "open"},
            )
        return ResourceExhausted(
            f"every worker serving {model} is at capacity ({candidates} full); "
            f"retry in {SHED_RETRY_AFTER_S:g} s",
            details={"model": model, "workers": str(candidates)},
            retry_after_s=SHED_RETRY_AFTER_S,
        )

    async def _dispatch(
        self,
        request: infer_pb2.Infer.Request,
        candidates: list[Candidate],
        placed: _Placed,
        context: ServerContext,
        *,
        hops: Hops,
    ) -> AsyncGenerator[ChunkBatch]:
        """Stream ``request`` from the first candidate that takes it, resuming it on the
        next when a worker is lost mid-stream. Chunks the worker has already sent are
        relayed together, as their bytes (``ChunkBatch``); none waits for another."""
        cid = request.correlation_id
        failed = _Failed()
        model = f"{request.model_id}@{request.version}"  # the breakers' pool key
        resume = Resume()
        for attempt, candidate in enumerate(candidates):
            worker_id = candidate.entry.worker_id
            region = candidate.entry.presence.region
            if not self.breakers.allow(model, region):
                continue  # half-open and its probe is already out
            if attempt:  # the first dispatch was recorded with the reservation
                await self._record_attempt(cid, worker_id)
            stub = services_rpc.WorkerStub(candidate.entry.peer.rpc)
            replay = resume.replay()
            outcome: StatusCode | None = None
            sent_at, first_chunk_s = trio.current_time(), None
            placed.move(worker_id)
            hops.stamp("orchestrator.dispatch")
            try:
                async with stub.Infer(
                    request,
                    metadata=telemetry.outgoing_metadata(),
                    timeout=context.remaining_timeout(),
                ) as chunks:
                    while batch := await chunks.next_batch():
                        if first_chunk_s is None:
                            first_chunk_s = trio.current_time() - sent_at
                        out, last = _fresh(batch, replay, resume)
                        if last is not None:
                            # The worker finished: the outcome is written (behind) before
                            # the last chunk goes on, so that a client leaving as it gets
                            # it does not turn a finished job into a cancelled one.
                            hops.stamp("orchestrator.worker_done")
                            outcome = StatusCode.OK
                            if not self._halted:
                                await self._finalise(cid, last)
                            yield out
                            return
                        if out:
                            yield out
                raise RpcError(
                    StatusCode.UNAVAILABLE,
                    f"worker {worker_id} ended the stream without a final chunk",
                )
            except Diverged as exc:  # the worker is fine; the request cannot be spliced
                what = failed.last.message if failed.last is not None else "a worker was lost"
                raise Unavailable(f"{what}; {exc.message}", details=exc.details) from None
            except RpcError as exc:
                outcome = exc.code
                if not self._carry_on(request, worker_id, exc, resume=resume,
                                      replay=replay, failed=failed):
                    raise
            finally:
                self._attempt_ended(placed, request, model, region,
                                    outcome=outcome, first_chunk_s=first_chunk_s)
        raise failed.none_took(model, resume)

    async def _record_attempt(self, cid: str, worker_id: str) -> None:
        """Record in the store that ``cid`` is dispatched again, now to ``worker_id``."""
        await blocking.run_sync(
            functools.partial(
                self.store.update_job,
                cid,
                jobs_pb2.JOB_STATE_DISPATCHED,
                worker_id=worker_id,
                attempt=True,
                owner=self.owner,
            )
        )

    def _carry_on(
        self,
        request: infer_pb2.Infer.Request,
        worker_id: str,
        exc: RpcError,
        *,
        resume: Resume,
        replay: Replay,
        failed: _Failed,
    ) -> bool:
        """After ``exc`` from ``worker_id``: whether the next candidate carries on (a
        worker lost mid-stream, to resume elsewhere, or one that refused the request,
        to place elsewhere; noted in ``failed``), or the request ends with ``exc``."""
        if resume.count and exc.code == StatusCode.UNAVAILABLE:
            # Lost mid-stream: the next candidate replays the request and the
            # chunks the client already has are checked and skipped.
            lost = resume.lost(f"worker {worker_id}", exc)
            metrics.resumption(request.model_id, request.version)
            log.info("%s; resuming %s at chunk %d elsewhere", lost, request.correlation_id,
                     resume.count)
            failed.last = lost
            return True
        if replay.streamed or exc.code not in _PLACE_ELSEWHERE:
            return False
        log.info("worker %s refused %s (%s); trying the next", worker_id,
                 request.correlation_id, exc)
        metrics.retry(request.model_id, request.version, exc.code.name)
        failed.last = exc
        if exc.code == StatusCode.RESOURCE_EXHAUSTED:
            failed.shed = exc
        return True

    def _attempt_ended(
        self,
        placed: _Placed,
        request: infer_pb2.Infer.Request,
        model: str,
        region: str,
        *,
        outcome: StatusCode | None,
        first_chunk_s: float | None,
    ) -> None:
        """One attempt on a worker in ``region`` ended with ``outcome`` (None: cancelled):
        it no longer loads the worker, and its metrics and breaker count it."""
        placed.release()  # this attempt no longer loads the worker
        metrics.placement(request.model_id, request.version, region,
                          "CANCELLED" if outcome is None else outcome.name)
        if outcome is None:
            self.breakers.release(model, region)
        else:
            self.breakers.record(model, region, outcome, first_chunk_s=first_chunk_s)

    async def _finalise(self, cid: str, last: infer_pb2.Infer.Chunk) -> None:
        # Off the response's path (written behind, with the next admission or within
        # the writer's linger); a crash before that leaves the job running under this
        # orchestrator, which its restart or a peer then fails (see the module docstring).
        usage = infer_pb2.Usage()
        usage.CopyFrom(last.usage)
        await self.writer.defer(functools.partial(
            self.store.finish_in, correlation_id=cid, owner=self.owner,
            usage=usage if last.HasField("usage") else None))
        if last.HasField("usage"):
            u = last.usage
            self.usage_metrics.record(
                u.tenant_id, f"{u.model_id}@{u.version}", u.input_tokens, u.output_tokens
            )

    async def GetJob(
        self, request: services_pb2.GetJobRequest, context: ServerContext
    ) -> jobs_pb2.JobStatus:
        self.callers.check(context)
        await self.writer.flush()  # what this orchestrator finished shows as finished
        return await blocking.run_sync(
            lambda: self.read_store.get_job(request.correlation_id)
        )

    async def GetFleet(
        self, request: services_pb2.GetFleetRequest, context: ServerContext
    ) -> services_pb2.GetFleetResponse:
        self.callers.check(context)
        entries = self.discovery.snapshot()
        requests, failures = self.recent.totals()
        return services_pb2.GetFleetResponse(
            workers=[
                e.presence
                for e in entries
                if not request.region or e.presence.region == request.region
            ],
            breakers=[
                services_pb2.FleetBreaker(
                    model_id=pool.partition("@")[0], version=pool.partition("@")[2],
                    region=region, state=state.value, reason=self.breakers.reason(pool, region),
                )
                for (pool, region), state in sorted(self.breakers.snapshot().items())
                if state is not BreakerState.CLOSED
            ],
            rollouts=[
                services_pb2.FleetRollout(model_id=model_id, summary=state.summary())
                for model_id, state in self.rollouts.active()
            ],
            recent_requests=requests,
            recent_failures=failures,
            recent_window_s=self.recent.window_s,
            registries=len(peers_on(self.network, self.registry_topic)),
            orchestrator_key=self.network.public_key,
        )



@dataclasses.dataclass
class _Ran:
    """How ``_submit`` placed a request: on its degrade-to model, or as asked."""

    degraded: bool = False
    #: When the request passed this orchestrator's steps (if it asked).
    hops: Hops = dataclasses.field(default_factory=lambda: Hops(False))


def _fresh(
    batch: ChunkBatch, replay: Replay, resume: Resume
) -> tuple[ChunkBatch, infer_pb2.Infer.Chunk | None]:
    """Of a batch from the worker, the chunks the client does not have yet (counted as
    delivered), up to and with the final one, and that final chunk (None if not in it)."""
    out: ChunkBatch = []
    for item in batch:
        if not replay.accept(item.message):
            continue  # the client has this one already
        resume.delivered(item.message)
        out.append(item)
        if item.message.done:
            return out, item.message
    return out, None


@dataclasses.dataclass
class _Failed:
    """What ``_dispatch``'s attempts that let the next candidate carry on failed with."""

    #: The latest such error: the request's end if no candidate finishes it.
    last: RpcError | None = None
    #: The latest candidate's RESOURCE_EXHAUSTED.
    shed: RpcError | None = None

    def none_took(self, model: str, resume: Resume) -> TetherError:
        """The error the request ends with when no candidate finished it."""
        if self.last is None:
            return Unavailable(f"{model}: every candidate's circuit is being probed; retry soon")
        if resume.count:
            return resume.unresumed(self.last)
        if self.shed is not None:  # workers are alive, only busy: overload, not outage
            return ResourceExhausted(
                f"{model}: every worker tried is at capacity ({self.shed.message}); "
                f"retry in {SHED_RETRY_AFTER_S:g} s",
                details=self.shed.details,
                retry_after_s=SHED_RETRY_AFTER_S,
            )
        return self.last


def _model_name(record: registry_pb2.ModelRecord) -> str:
    return f"{record.model.model_id}@{record.model.version}"


class _Placed:
    """Where one request counts in ``InFlight``: from placement until its attempt on
    that worker ends (then on the next candidate, if it moves)."""

    def __init__(self, in_flight: InFlight, worker_id: str) -> None:
        self._in_flight = in_flight
        self.worker_id: str | None = worker_id
        in_flight.started(worker_id)

    def move(self, worker_id: str) -> None:
        if worker_id != self.worker_id:
            self.release()
            self._in_flight.started(worker_id)
            self.worker_id = worker_id

    def release(self) -> None:
        if self.worker_id is not None:
            self._in_flight.ended(self.worker_id)
            self.worker_id = None
