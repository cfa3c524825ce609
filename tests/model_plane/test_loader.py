"""ModelLoader: verified fetch before load, LRU under a size budget, pinning, the cache
manifest, and LoRA adapters merged into ONNX initializers on load."""

from __future__ import annotations

import numpy as np
import pytest
import trio
from model_plane_support import CountingBackend, tensor_model_bytes

from tether.artifacts import ArtifactStore
from tether.errors import DataLoss, InvalidArgument, NotFound, ResourceExhausted
from tether.keys import KeyPair
from tether.v1 import presence_pb2, registry_pb2
from worker.engine import OnnxRuntimeBackend
from worker.engine.lora import merge_adapters, write_adapter
from worker.loader import ModelLoader


def make_record(artifacts: ArtifactStore, kp: KeyPair, model_id: str, onnx_bytes: bytes,
                adapters: dict[str, bytes] | None = None) -> registry_pb2.ModelRecord:
    refs = [artifacts.publish(onnx_bytes, fmt="onnx", model_id=model_id, version="1.0",
                              role="model", publisher=kp)]
    for name, blob in (adapters or {}).items():
        refs.append(artifacts.publish(blob, fmt="lora", model_id=model_id, version="1.0",
                                      role=f"adapter:{name}", publisher=kp))
    return registry_pb2.ModelRecord(
        model=presence_pb2.ModelKey(model_id=model_id, version="1.0"),
        capabilities=registry_pb2.Capabilities(task=registry_pb2.TASK_TENSOR),
        artifacts=refs, publisher_key=kp.public_key)


class Clock:
    def __init__(self) -> None:
        self.t = 1000

    def __call__(self) -> int:
        self.t += 1
        return self.t


def run_y(model, x: np.ndarray) -> np.ndarray:
    return model.session.run({"x": x.astype(np.float32)})["y"]


async def test_lru_eviction_under_budget_with_pinning(local_artifacts, publisher) -> None:
    records = [make_record(local_artifacts, publisher, f"m{i}", tensor_model_bytes(np.eye(8) * i))
               for i in range(4)]
    size = records[0].artifacts[0].size_bytes
    backend = CountingBackend(OnnxRuntimeBackend(intra_op_threads=1))
    loader = ModelLoader(local_artifacts, backend, budget_bytes=int(size * 2.5), clock=Clock())
    loader.pin("m0", "1.0")
    await loader.load(records[0])
    await loader.load(records[1])
    await loader.load(records[2])  # evicts m1 (m0 is pinned)
    assert [m.model_id for m in loader.manifest()] == ["m0", "m2"]
    await loader.load(records[2])  # cache hit: no new backend load
    assert len(backend.loaded) == 3
    await loader.load(records[3])  # evicts m2, the least recently used unpinned one
    manifest = loader.manifest()
    assert [(m.model_id, m.pinned) for m in manifest] == [("m0", True), ("m3", False)]
    assert manifest[1].last_used_unix_ms > manifest[0].last_used_unix_ms
    assert manifest[0].digest == records[0].artifacts[0].digest
    assert manifest[0].engine == "onnxruntime-cpu" and manifest[0].size_bytes == size
    assert loader.statistics()["evictions"] == 2
    assert loader.get("m3").model_id == "m3"
    with pytest.raises(NotFound):
        loader.get("m1")
    loader.pin("m3", "1.0")
    with pytest.raises(ResourceExhausted):
        await loader.load(records[1])  # both slots pinned
    loader.unpin("m3", "1.0")
    assert loader.evict("m3", "1.0") and not loader.evict("m0", "1.0")


async def test_concurrent_loads_fetch_once(local_artifacts, publisher) -> None:
    record = make_record(local_artifacts, publisher, "m", tensor_model_bytes(np.eye(4)))
    backend = CountingBackend(OnnxRuntimeBackend(intra_op_threads=1))
    loader = ModelLoader(local_artifacts, backend, budget_bytes=1 << 20)
    async with trio.open_nursery() as n:
        for _ in range(5):
            n.start_soon(loader.load, record)
    assert len(backend.loaded) == 1


async def test_tampered_artifact_is_never_loaded(local_artifacts, publisher) -> None:
    record = make_record(local_artifacts, publisher, "m", tensor_model_bytes(np.eye(4)))
    digest = record.artifacts[0].digest
    for r in local_artifacts.replicas:
        data = bytearray(r.get(digest))
        data[len(data) // 2] ^= 0xFF
        r.put(digest, bytes(data))
    backend = CountingBackend(OnnxRuntimeBackend())
    loader = ModelLoader(local_artifacts, backend, budget_bytes=1 << 20)
    with pytest.raises(DataLoss, match="tampered"):
        await loader.load(record)
    assert backend.loaded == [] and loader.manifest() == []


async def test_model_larger_than_budget_is_refused(local_artifacts, publisher) -> None:
    record = make_record(local_artifacts, publisher, "m", tensor_model_bytes(np.eye(16)))
    backend = CountingBackend(OnnxRuntimeBackend())
    loader = ModelLoader(local_artifacts, backend, budget_bytes=100)
    with pytest.raises(ResourceExhausted, match="cache budget is 100"):
        await loader.load(record)
    assert backend.loaded == []


async def test_lora_adapters_are_merged_on_load(local_artifacts, publisher) -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3)).astype(np.float32)
    a = rng.normal(size=(2, 3)).astype(np.float32)  # rank 2
    b = rng.normal(size=(4, 2)).astype(np.float32)
    adapter = write_adapter({"W": (a, b, 4.0)})  # alpha 4, rank 2 -> scale 2
    base = make_record(local_artifacts, publisher, "base", tensor_model_bytes(w))
    tuned = make_record(local_artifacts, publisher, "tuned", tensor_model_bytes(w),
                        adapters={"style": adapter})
    loader = ModelLoader(local_artifacts, OnnxRuntimeBackend(), budget_bytes=1 << 20)
    x = rng.normal(size=(5, 4)).astype(np.float32)
    plain = run_y(await loader.load(base), x)
    merged = run_y(await loader.load(tuned), x)
    np.testing.assert_allclose(plain, x @ w + 0.5, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(merged, x @ (w + (b @ a) * 2.0) + 0.5, rtol=1e-4, atol=1e-4)
    assert "+" in loader.get("tuned").digest  # cached apart from the base model


@pytest.mark.parametrize(
    ("factors", "words"),
    [
        ({"W": (np.ones((2, 3)), np.ones((5, 2)), None)}, r"delta for W is \(5, 3\)"),
        ({"nope": (np.ones((2, 3)), np.ones((4, 2)), None)}, "lacks"),
        ({"W": (np.ones((2, 3)), np.ones((4, 3)), None)}, "do not chain"),
    ],
)
def test_bad_adapters_are_refused(factors, words) -> None:
    with pytest.raises(InvalidArgument, match=words):
        merge_adapters(tensor_model_bytes(np.ones((4, 3))), [write_adapter(factors)])
    with pytest.raises(InvalidArgument, match=r"not an \.npz"):
        merge_adapters(tensor_model_bytes(np.ones((4, 3))), [b"garbage"])
