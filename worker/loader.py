"""ModelLoader: fetch, verify, load and cache models for the worker.

Loading a ``tether.v1.ModelRecord`` fetches each artifact by digest from the replicated
artifact store (which verifies signature, size and SHA-256 before returning anything), merges
declared LoRA adapters into the ONNX initializers, and hands the graph to the backend the
worker chose (ONNX Runtime on CPU, TensorRT on GPU). Loaded models live in an LRU cache under
a size budget (RAM on CPU, VRAM on GPU); pinned models are never evicted. :meth:`manifest`
lists the cache as ``tether.v1.CachedModel`` entries for ``Health.Report.model_cache``.

A model that cannot fit even after evicting every unpinned model is refused with
RESOURCE_EXHAUSTED; it is not loaded over budget.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from tether import metrics, naming, telemetry
from tether.artifacts import ArtifactStore
from tether.errors import InvalidArgument, NotFound, ResourceExhausted
from tether.metadata.store import now_unix_ms
from tether.v1 import health_pb2, registry_pb2
from worker.engine.backends import Backend, Session
from worker.engine.lora import merge_adapters
from worker.engine.tokenizers import (
    HFTokenizer,
    WordPieceTokenizer,
    WordTokenizer,
    load_tokenizer,
)

ADAPTER_PREFIX = "adapter:"
# Small JSON files of a Hugging Face export that the engine reads beside the graph.
CONFIG_ROLES = ("config", "generation_config", "tokenizer_config")


@dataclass
class LoadedModel:
    record: registry_pb2.ModelRecord
    digest: str  # of the model artifact, or of model + adapters when adapters are merged
    session: Session
    tokenizer: WordTokenizer | WordPieceTokenizer | HFTokenizer | None
    size_bytes: int
    engine: str
    files: dict[str, bytes] = field(default_factory=dict)  # CONFIG_ROLES present, by role
    pinned: bool = False
    last_used_unix_ms: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    sessions: dict[str, Session] = field(default_factory=dict)  # derived graphs, by name

    @property
    def model_id(self) -> str:
        return self.record.model.model_id

    @property
    def version(self) -> str:
        return self.record.model.version

    @property
    def task(self) -> int:
        return self.record.capabilities.task


def graph_key(record: registry_pb2.ModelRecord) -> str:
    """Model digest, plus adapter digests when the record declares adapters."""
    parts = [a.digest for a in record.artifacts if a.role == "model"]
    parts += sorted(a.digest for a in record.artifacts if a.role.startswith(ADAPTER_PREFIX))
    return "+".join(parts)


def cache_key(record: registry_pb2.ModelRecord) -> str:
    """The graph key, plus the tokenizer's and config files' digests: two versions that share
    a graph but not their tokenizer or generation defaults are different models."""
    side = sorted(a.digest for a in record.artifacts
                  if a.role == "tokenizer" or a.role in CONFIG_ROLES)
    key = graph_key(record)
    return "+".join([key, *side]) if key else ""


class ModelLoader:
    def __init__(self, artifacts: ArtifactStore, backend: Backend, *, budget_bytes: int,
                 clock: Callable[[], int] = now_unix_ms) -> None:
        self.artifacts = artifacts
        self.backend = backend
        self.budget_bytes = budget_bytes
        self._clock = clock
        self._cache: OrderedDict[str, LoadedModel] = OrderedDict()
        self._locks: dict[str, trio.Lock] = {}
        self._pins: set[tuple[str, str]] = set()
        self.loads = 0
        self.evictions = 0

    # ---------------------------------------------------------------- loading

    async def load(self, record: registry_pb2.ModelRecord) -> LoadedModel:
        """The loaded model for ``record``, from the cache or freshly fetched and verified."""
        key = cache_key(record)
        if not key:
            raise InvalidArgument(f"{record.model.model_id} has no 'model' artifact")
        lock = self._locks.setdefault(key, trio.Lock())
        async with lock:
            hit = self._cache.get(key)
            model, version = record.model.model_id, record.model.version
            metrics.model_cache_lookup(model, version, hit is not None)
            if hit is not None:
                self._touch(key, hit)
                return hit
            model_ref = next(a for a in record.artifacts if a.role == "model")
            try:
                self._check_fits(model_ref.size_bytes, model_ref.digest)
                loaded = await trio.to_thread.run_sync(self._load_sync, record, key)
                self._admit(key, loaded)
            except BaseException as exc:
                metrics.model_load(model, version, telemetry.status_name(exc))
                raise
            metrics.model_load(model, version, "OK")
            return loaded

    def _load_sync(self, record: registry_pb2.ModelRecord, key: str) -> LoadedModel:
        model_ref = next(a for a in record.artifacts if a.role == "model")
        model = self.artifacts.fetch(model_ref.digest)
        adapters = [self.artifacts.fetch(a.digest).data for a in record.artifacts
                    if a.role.startswith(ADAPTER_PREFIX)]
        graph = merge_adapters(model.data, adapters)
        tokenizer = None
        size = len(graph)
        tok_ref = next((a for a in record.artifacts if a.role == "tokenizer"), None)
        if tok_ref is not None:
            tok_blob = self.artifacts.fetch(tok_ref.digest).data
            tokenizer = load_tokenizer(tok_blob)
            size += len(tok_blob)
        files = {a.role: self.artifacts.fetch(a.digest).data for a in record.artifacts
                 if a.role in CONFIG_ROLES}
        size += sum(len(b) for b in files.values())
        session = self.backend.load(graph, digest=graph_key(record))
        pinned = (record.model.model_id, record.model.version) in self._pins
        return LoadedModel(record=record, digest=key, session=session, tokenizer=tokenizer,
                           size_bytes=size, engine=self.backend.name, pinned=pinned,
                           last_used_unix_ms=self._clock(), files=files)

    def derive(self, m: LoadedModel, name: str, transform: Callable[[bytes], bytes]) -> Session:
        """A second session for ``m`` from a graph derived from its own (e.g. a batched step
        graph), made once: the artifact is fetched (and verified) again, so the loaded model
        keeps no copy of its bytes. Synchronous: call it from a worker thread."""
        found = m.sessions.get(name)
        if found is not None:
            return found
        model_ref = next(a for a in m.record.artifacts if a.role == "model")
        adapters = [self.artifacts.fetch(a.digest).data for a in m.record.artifacts
                    if a.role.startswith(ADAPTER_PREFIX)]
        graph = transform(merge_adapters(self.artifacts.fetch(model_ref.digest).data, adapters))
        session = self.backend.load(graph, digest=f"{graph_key(m.record)}-{name}")
        m.sessions[name] = session
        m.size_bytes += len(graph)
        return session

    def _check_fits(self, size: int, digest: str) -> None:
        pinned = sum(m.size_bytes for m in self._cache.values() if m.pinned)
        if size + pinned > self.budget_bytes:
            raise ResourceExhausted(
                f"model {digest} needs {size} bytes; the cache budget is {self.budget_bytes} "
                f"with {pinned} pinned", details={"digest": digest})

    def _admit(self, key: str, loaded: LoadedModel) -> None:
        self._check_fits(loaded.size_bytes, key)
        while self.used_bytes + loaded.size_bytes > self.budget_bytes:
            self._evict_one()
        self._cache[key] = loaded
        self.loads += 1

    def _evict_one(self) -> None:
        for key, m in self._cache.items():  # oldest first
            if not m.pinned:
                del self._cache[key]
                self._locks.pop(key, None)
                self.evictions += 1
                return
        raise ResourceExhausted("every cached model is pinned; nothing can be evicted")

    def _touch(self, key: str, m: LoadedModel) -> None:
        m.last_used_unix_ms = self._clock()
        self._cache.move_to_end(key)

    # ---------------------------------------------------------------- queries

    def get(self, model_id: str, version: str = "") -> LoadedModel:
        """A loaded model by id; empty version means the highest loaded version."""
        found = [m for m in self._cache.values()
                 if m.model_id == model_id and (not version or m.version == version)]
        if not found:
            raise NotFound(f"{model_id} {version or '(any version)'} is not loaded here",
                           details={"model_id": model_id})
        best = max(found, key=lambda m: naming.Version.parse(m.version))
        key = best.digest
        self._touch(key, best)
        return best

    def pin(self, model_id: str, version: str) -> None:
        self._pins.add((model_id, version))
        for m in self._cache.values():
            if (m.model_id, m.version) == (model_id, version):
                m.pinned = True

    def unpin(self, model_id: str, version: str) -> None:
        self._pins.discard((model_id, version))
        for m in self._cache.values():
            if (m.model_id, m.version) == (model_id, version):
                m.pinned = False

    def evict(self, model_id: str, version: str) -> bool:
        for key, m in list(self._cache.items()):
            if (m.model_id, m.version) == (model_id, version) and not m.pinned:
                del self._cache[key]
                self.evictions += 1
                return True
        return False

    @property
    def used_bytes(self) -> int:
        return sum(m.size_bytes for m in self._cache.values())

    def manifest(self) -> list[health_pb2.CachedModel]:
        """The cache, least recently used first, for ``Health.Report.model_cache``."""
        return [health_pb2.CachedModel(
            model_id=m.model_id, version=m.version, digest=m.digest.split("+", 1)[0],
            size_bytes=m.size_bytes, pinned=m.pinned, engine=m.engine,
            last_used_unix_ms=m.last_used_unix_ms) for m in self._cache.values()]

    def statistics(self) -> dict[str, int]:
        return {"models": len(self._cache), "used_bytes": self.used_bytes,
                "budget_bytes": self.budget_bytes, "loads": self.loads,
                "evictions": self.evictions}
