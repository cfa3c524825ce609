"""WorkerEngine: the execution engine as the worker service sees it.

It knows which model versions this worker serves (their ``tether.v1.ModelRecord``), loads them
through the :class:`worker.loader.ModelLoader` on first use (or ahead with :meth:`warm`), runs
requests with :class:`worker.engine.ExecutionEngine`, and reports the cache manifest. Its
:meth:`stream` yields ``(payload, None)`` per payload as it is produced, then one final
``(empty payload, usage)`` so the service can close the stream with ``done`` and usage without
holding any payload back; the stream's ``finish_reason`` then says why generation ended.

A request's version resolves among the served versions by :func:`tether.naming.resolve`, as the
registry resolves it: exact ``MAJOR.MINOR``; ``MAJOR`` alone gives its highest minor; empty
gives the highest version.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, Iterable

from tether import naming
from tether.artifacts import ArtifactStore
from tether.errors import NotFound
from tether.v1 import health_pb2, infer_pb2, presence_pb2, registry_pb2
from worker.engine.backends import ONNXRUNTIME_CPU
from worker.engine.detect import Capabilities, select_backend
from worker.engine.engine import (
    DEFAULT_KV_BUDGET_BYTES,
    DEFAULT_MAX_BATCH,
    CancelFlag,
    ExecutionEngine,
    InferenceStream,
)
from worker.loader import ModelLoader


class WorkerEngine:
    def __init__(self, loader: ModelLoader, records: Iterable[registry_pb2.ModelRecord] = (),
                 *, engine: ExecutionEngine | None = None) -> None:
        self.loader = loader
        self.engine = engine or ExecutionEngine(loader)
        self._records: dict[tuple[str, str], registry_pb2.ModelRecord] = {}
        for r in records:
            self.serve(r)

    def serve(self, record: registry_pb2.ModelRecord) -> None:
        self._records[(record.model.model_id, record.model.version)] = record

    async def warm(self, *, pin: bool = False) -> None:
        for (model_id, version), record in self._records.items():
            if pin:
                self.loader.pin(model_id, version)
            await self.loader.load(record)

    def supported(self) -> list[presence_pb2.ModelKey]:
        return [presence_pb2.ModelKey(model_id=m, version=v) for m, v in sorted(self._records)]

    def cache_manifest(self) -> list[health_pb2.CachedModel]:
        return self.loader.manifest()

    def batch_capacity(self, capacity: health_pb2.Capacity) -> None:
        """Fill the continuous-batching fields of a heartbeat's capacity."""
        c = self.engine.capacity
        capacity.max_batch_size = c.max_batch
        capacity.active_sequences = c.sequences
        capacity.kv_cache_budget_bytes = c.kv_budget_bytes
        capacity.kv_cache_used_bytes = c.kv_used_bytes

    def resolve(self, model_id: str, version: str) -> registry_pb2.ModelRecord:
        """The record this worker serves for a request's model and version, chosen by
        :func:`tether.naming.resolve` among the versions it serves."""
        served = {naming.Version.parse(v): v for m, v in self._records if m == model_id}
        if not served:
            raise NotFound(f"this worker does not serve {model_id}",
                           details={"model_id": model_id})
        try:
            chosen = naming.resolve(version, served, model_id=model_id)
        except NotFound:
            wanted = version if "." in version else f"{version}.x"
            raise NotFound(f"this worker does not serve {model_id} {wanted}",
                           details={"model_id": model_id, "version": version}) from None
        return self._records[(model_id, served[chosen])]

    def stream(
        self, request: infer_pb2.Infer.Request, cancel: CancelFlag | None = None
    ) -> EngineRun:
        return EngineRun(self, request, cancel)


class EngineRun:
    """One request on a :class:`WorkerEngine`: ``(payload, None)`` pairs, then
    ``(empty payload, usage)``; by then ``finish_reason`` says why a text generation
    ended (the engine's own reason: a stop string on the last allowed token is STOP)."""

    def __init__(self, engine: WorkerEngine, request: infer_pb2.Infer.Request,
                 cancel: CancelFlag | None) -> None:
        self.finish_reason: infer_pb2.FinishReason = infer_pb2.FINISH_REASON_UNSPECIFIED
        self._stream: InferenceStream | None = None
        #: The model's own time (its runtime calls), seconds, once the run is over.
        self.compute_s = 0.0
        self._pairs = self._run(engine, request, cancel)

    def ready(self) -> bool:
        """Whether the next pair is there now (``InferenceStream.ready``)."""
        return self._stream is not None and self._stream.ready()

    def __aiter__(self) -> EngineRun:
        return self

    async def __anext__(self) -> tuple[infer_pb2.Payload, infer_pb2.Usage | None]:
        return await self._pairs.__anext__()

    async def aclose(self) -> None:
        await self._pairs.aclose()

    async def _run(
        self, engine: WorkerEngine, request: infer_pb2.Infer.Request, cancel: CancelFlag | None
    ) -> AsyncGenerator[tuple[infer_pb2.Payload, infer_pb2.Usage | None], None]:
        record = engine.resolve(request.model_id, request.version)
        model = await engine.loader.load(record)
        run = self._stream = engine.engine.stream(request, model=model, cancel=cancel)
        try:
            async for payload in run:
                yield payload, None
        finally:
            await run.aclose()
        self.finish_reason = _FINISH_REASONS.get(run.finish_reason,
                                                 infer_pb2.FINISH_REASON_UNSPECIFIED)
        self.compute_s = run.compute_s
        yield infer_pb2.Payload(), run.usage


_FINISH_REASONS = {"stop": infer_pb2.FINISH_REASON_STOP, "length": infer_pb2.FINISH_REASON_LENGTH}


def create_worker_engine(artifacts: ArtifactStore, records: Iterable[registry_pb2.ModelRecord],
                         *, cache_dir: str | os.PathLike[str], ram_budget_bytes: int,
                         prefer_cpu: bool = False, vram_fraction: float = 0.8,
                         max_batch: int = DEFAULT_MAX_BATCH,
                         kv_budget_bytes: int = DEFAULT_KV_BUDGET_BYTES,
                         ) -> tuple[WorkerEngine, Capabilities]:
    """The engine this machine should run: TensorRT when a GPU and TensorRT are present
    (cache budget: ``vram_fraction`` of the GPU's memory), else ONNX Runtime on CPU (budget:
    ``ram_budget_bytes``). Also returns what detection found, for presence announcements."""
    backend, caps = select_backend(cache_dir, prefer_cpu=prefer_cpu, max_batch=max_batch)
    budget = ram_budget_bytes
    if backend.name != ONNXRUNTIME_CPU and caps.vram_gb:
        budget = int(caps.vram_gb * (1 << 30) * vram_fraction)
    loader = ModelLoader(artifacts, backend, budget_bytes=budget)
    engine = ExecutionEngine(loader, max_batch=max_batch, kv_budget_bytes=kv_budget_bytes)
    return WorkerEngine(loader, records, engine=engine), caps
