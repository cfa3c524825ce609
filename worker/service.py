"""BaseWorker: the worker's RPC surface (``tether.v1.Worker``).

- ``Infer`` admits the request through the QuotaGuard, runs it on the
  execution engine and streams chunks; the last chunk has ``done`` and usage.
  Chunks the engine made while the stream was busy sending (continuous batching
  steps on without it) go out together, in one frame; none waits for another.
- ``GetHealth`` answers a ``Health.Report`` (capacity, gpuClass, model cache).
- ``WatchPresence`` is the HealthReporter's heartbeat: a signed, nonce-
  protected ``Presence`` now and every interval (5 s) until the caller leaves.
- A sealed request (``Infer.Request.sealed``, ``tether.sealing``) is opened with
  the worker's own key, checked for its binding and for replay, and every chunk's
  payload is sealed back for the requester; seq, done and usage stay clear.
- Every method answers known orchestrators only (``callers``): the worker's load,
  models and health are the fleet's layout, not public.
- ``drain()`` stops new work (UNAVAILABLE, so the orchestrator places it
  elsewhere), lets in-flight jobs finish, and says so in every heartbeat and to
  probes (its ``readiness`` turns not-ready: ``/readyz`` answers 503).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

import trio

from tether import health, limits, metrics, sealing, signing, telemetry
from tether.callers import CallerPolicy
from tether.errors import InvalidArgument, Unavailable
from tether.keys import KeyPair
from tether.rpc import Responses, ServerContext
from tether.timing import Hops
from tether.v1 import health_pb2, infer_pb2, presence_pb2, services_pb2, services_rpc
from tether.validation import validate
from worker.quota import QuotaGuard

DEFAULT_HEARTBEAT_S = 5.0


class Engine(Protocol):
    """What the worker needs from its execution engine."""

    def supported(self) -> list[presence_pb2.ModelKey]:
        """Model versions this worker can run."""

    def cache_manifest(self) -> list[health_pb2.CachedModel]:
        """What is loaded now (for Health.Report.modelCache)."""

    def stream(
        self, request: infer_pb2.Infer.Request
    ) -> AsyncIterator[tuple[infer_pb2.Payload, infer_pb2.Usage | None]]:
        """Run a request, yielding payload pieces; usage comes with the last. Once
        exhausted, the iterator's optional ``finish_reason`` (``infer_pb2.FinishReason``)
        says why a text generation ended; without it the worker infers it from usage.
        Its optional ``ready()`` says whether the next item is there now (no waiting)."""

    # Optional: ``batch_capacity(capacity)`` fills the continuous-batching fields of
    # ``Capacity`` (max batch size, active sequences, KV-cache budget and use).


@dataclass
class WorkerConfig:
    worker_id: str
    region: str
    gpu_class: str = "cpu"
    vram_gb: int = 0
    accelerators: list[str] = field(default_factory=list)
    slots: int = 2
    queue_limit: int = 8
    per_tenant: int | None = None
    heartbeat_s: float = DEFAULT_HEARTBEAT_S


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def finish_reason(
    request: infer_pb2.Infer.Request, usage: infer_pb2.Usage
) -> infer_pb2.FinishReason:
    """Why a text generation ended, for an engine that does not say: its token limit (the
    request's or the default) was reached, or the model (or a stop string) stopped it."""
    if usage.output_tokens >= limits.max_tokens(request.params):
        return infer_pb2.FINISH_REASON_LENGTH
    return infer_pb2.FINISH_REASON_STOP


class WorkerService(services_rpc.WorkerServicer):
    def __init__(
        self,
        config: WorkerConfig,
        engine: Engine,
        keypair: KeyPair,
        *,
        clock_ms: Callable[[], int] = wall_clock_ms,
        callers: CallerPolicy | None = None,
        replays: sealing.ReplayCache | None = None,
        readiness: health.Readiness | None = None,
    ) -> None:
        self.config = config
        #: What probes are told: not ready once draining.
        self.readiness = readiness or health.Readiness()
        #: Who may call (work, health, presence): orchestrators. None: anyone (embedded).
        self.callers = callers or CallerPolicy.anyone()
        self.engine = engine
        self.keypair = keypair
        self.clock_ms = clock_ms
        #: Opens requests sealed to this worker's key and refuses replays of them.
        self.opener = sealing.RequestOpener(keypair, replays)
        self.quota = QuotaGuard(
            slots=config.slots, queue_limit=config.queue_limit, per_tenant=config.per_tenant
        )
        self.draining = False
        self._announcing = trio.Event()
        self._announcing.set()
        self._in_flight = 0
        self._idle = trio.Event()
        self._idle.set()
        metrics.watch_worker(self)  # queue, slots, batch and cache gauges

    # -------------------------------------------------------------- health

    def health_report(self) -> health_pb2.Health.Report:
        stats = self.quota.stats()
        report = health_pb2.Health.Report(
            worker_id=self.config.worker_id,
            gpu_class=self.config.gpu_class,
            draining=self.draining,
        )
        report.capacity.slots = stats.slots
        report.capacity.in_use = stats.in_use
        report.capacity.queue_depth = stats.queue_depth
        report.capacity.queue_limit = stats.queue_limit
        batching = getattr(self.engine, "batch_capacity", None)
        if batching is not None:  # an engine that batches says how (Engine.batch_capacity)
            batching(report.capacity)
        report.model_cache.extend(self.engine.cache_manifest())
        return report

    def presence(self) -> presence_pb2.Presence:
        report = self.health_report()
        p = presence_pb2.Presence(
            worker_id=self.config.worker_id,
            pub_key=self.keypair.public_key,
            region=self.config.region,
            gpu_class=self.config.gpu_class,
            vram_gb=self.config.vram_gb,
            accelerators=self.config.accelerators,
            latency_hops=0,
            draining=self.draining,
        )
        p.capacity.CopyFrom(report.capacity)
        p.supported.extend(self.engine.supported())
        p.health.CopyFrom(report)
        return p

    async def GetHealth(
        self, request: services_pb2.GetHealthRequest, context: ServerContext
    ) -> health_pb2.Health.Report:
        self.callers.check(context)
        return self.health_report()

    async def WatchPresence(
        self, request: services_pb2.WatchPresenceRequest, context: ServerContext
    ) -> AsyncIterator[presence_pb2.SignedEnvelope]:
        self.callers.check(context)
        interval = request.interval_ms / 1000 if request.interval_ms else self.config.heartbeat_s
        interval = max(interval, 0.05)
        while True:
            await self._announcing.wait()
            yield signing.sign(self.presence(), self.keypair, now_ms=self.clock_ms())
            await trio.sleep(interval)

    def stop_announcing(self) -> None:
        """Stop heartbeats (connections stay open); placement drops the worker
        once its last heartbeat expires."""
        self._announcing = trio.Event()

    def resume_announcing(self) -> None:
        self._announcing.set()

    # --------------------------------------------------------------- infer

    async def Infer(
        self, request: infer_pb2.Infer.Request, context: ServerContext
    ) -> AsyncIterator[Responses[infer_pb2.Infer.Chunk]]:
        """The RPC method: chunks in batches of those ready together."""
        async with contextlib.aclosing(self.batches(request, context)) as batches:
            async for batch in batches:
                yield batch

    async def chunks(
        self, request: infer_pb2.Infer.Request, context: ServerContext
    ) -> AsyncIterator[infer_pb2.Infer.Chunk]:
        """``Infer`` one chunk at a time (for a caller in this process)."""
        async with contextlib.aclosing(self.batches(request, context)) as batches:
            async for batch in batches:
                for chunk in batch:
                    yield chunk

    async def batches(
        self, request: infer_pb2.Infer.Request, context: ServerContext
    ) -> AsyncGenerator[list[infer_pb2.Infer.Chunk]]:
        self.callers.check(context)
        if self.draining:
            raise Unavailable("worker is draining; place the request elsewhere")
        if not request.model_id:
            raise InvalidArgument("model_id is required")
        hops = Hops(request.timing)
        hops.stamp("worker.in")
        self._in_flight += 1
        if self._in_flight == 1:
            self._idle = trio.Event()
        attributes = {
            "tether.correlation_id": request.correlation_id,
            "tether.model": request.model_id,
        }
        try:
            with telemetry.server_span("worker.infer", context.metadata, **attributes):
                async with contextlib.aclosing(self._run(request, hops)) as batches:
                    async for batch in batches:
                        for chunk in batch:
                            hops.add_to(chunk, last="worker.out")
                        yield batch
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def _run(
        self, request: infer_pb2.Infer.Request, hops: Hops
    ) -> AsyncGenerator[list[infer_pb2.Infer.Chunk]]:
        chunk_key: sealing.ChunkKey | None = None
        if request.HasField("sealed"):
            opened = self.opener.open(request, now_ms=self.clock_ms())
            request, chunk_key = opened.request, opened.chunks
            validate(request)  # nobody before this worker could read the input
        async with contextlib.aclosing(self._generate(request, hops)) as batches:
            async for batch in batches:
                if chunk_key is not None:
                    for chunk in batch:
                        chunk_key.seal(chunk)
                yield batch

    async def _generate(
        self, request: infer_pb2.Infer.Request, hops: Hops
    ) -> AsyncGenerator[list[infer_pb2.Infer.Chunk]]:
        seq = 0
        # The model span (OpenTelemetry GenAI conventions): what the model did, with
        # its token counts, under the worker.infer span.
        started, first = trio.current_time(), None  # (the trio clock: tests set it)
        with telemetry.model_span(request) as span:
            async with (
                self.quota.admit(request.tenant_id),
                contextlib.aclosing(self.engine.stream(request)) as pieces,  # type: ignore[type-var]
            ):
                hops.stamp("worker.model_start")
                ready: Callable[[], bool] = getattr(pieces, "ready", lambda: False)
                last: infer_pb2.Infer.Chunk | None = None
                out: list[infer_pb2.Infer.Chunk] = []
                async for payload, usage in pieces:
                    if first is None and payload.ByteSize():
                        first = trio.current_time()
                    if last is not None:
                        out.append(last)
                    last = self._chunk(request, seq, payload)
                    seq += 1
                    if usage is not None:
                        last.usage.CopyFrom(usage)
                    if out and not ready():  # nothing more without waiting: send these
                        yield out
                        out = []
                hops.stamp("worker.model_end")
                if last is None:
                    last = self._chunk(request, seq, None)
                last.done = True
                if hops.on:
                    last.timing.model_ns = int(getattr(pieces, "compute_s", 0.0) * 1e9)
                if request.input.WhichOneof("kind") in ("text", "messages"):
                    # The engine's own reason when it gives one (see Engine.stream).
                    reason = getattr(pieces, "finish_reason", infer_pb2.FINISH_REASON_UNSPECIFIED)
                    last.finish_reason = reason or finish_reason(request, last.usage)
                telemetry.model_usage(span, last.usage, last.finish_reason)
                metrics.gen_ai_request(
                    telemetry.operation_name(request), request.model_id,
                    last.usage.version or request.version,
                    duration_s=trio.current_time() - started,
                    first_token_s=None if first is None else first - started,
                    output_tokens=last.usage.output_tokens)
                out.append(last)
                yield out

    def _chunk(
        self, request: infer_pb2.Infer.Request, seq: int, payload: infer_pb2.Payload | None
    ) -> infer_pb2.Infer.Chunk:
        chunk = infer_pb2.Infer.Chunk(
            correlation_id=request.correlation_id, seq=seq, worker_id=self.config.worker_id
        )
        if payload is not None:
            chunk.payload.CopyFrom(payload)
        return chunk

    # --------------------------------------------------------------- drain

    async def drain(self, grace_s: float = 30.0) -> bool:
        """Take no new work and wait for in-flight jobs; True if all finished."""
        self.draining = True
        self.readiness.drain()
        with trio.move_on_after(grace_s):
            await self._idle.wait()
            return True
        return False
