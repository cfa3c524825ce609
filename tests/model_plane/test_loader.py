"""ModelLoader: verified fetch before load, LRU under a size budget, pinning, the cache
manifest, and LoRA adapters merged into ONNX initializers on load."""

from __future__ import annotations

import numpy as np
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from model_plane_support import CountingBackend, tensor_model_bytes

from tether.artifacts import ArtifactStore, LocalDirectoryStore
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


class _NullSession:
    """Test double of a runtime session: the cache property test never runs a model."""

    inputs: list = []
    outputs: list = []

    def run(self, feeds):
        raise AssertionError("not run in this test")


class _NullBackend:
    """Test double of a backend that records loads and returns a null session."""

    name = "null"

    def __init__(self) -> None:
        self.loaded: list[str] = []

    def load(self, onnx_bytes: bytes, *, digest: str) -> _NullSession:
        self.loaded.append(digest)
        return _NullSession()


# Loads dominate so that the cache fills and evicts often.
OPS = st.lists(st.tuples(st.sampled_from(["load"] * 6 + ["pin", "unpin", "evict"]),
                         st.integers(0, 4)), max_size=30)


@pytest.fixture(scope="module")
def five_models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lru")
    kp = KeyPair.from_seed(b"\x0b" * 32)
    artifacts = ArtifactStore([LocalDirectoryStore(tmp / f"r{i}") for i in range(3)],
                              trusted_keys={kp.public_key})
    records = [make_record(artifacts, kp, f"m{i}", b"x" * (100 * (i + 1))) for i in range(5)]
    return artifacts, records


@settings(max_examples=300, deadline=None)
@given(OPS, st.sampled_from([250, 600, 700, 1000, 1200]))
def test_cache_invariants_hold_for_any_sequence(five_models, ops, budget) -> None:
    """Against a reference LRU: the budget is never exceeded, pinned models are never evicted,
    eviction takes the least recently used unpinned model, and hits do not reload."""
    artifacts, records = five_models
    sizes = [r.artifacts[0].size_bytes for r in records]

    async def main() -> None:
        backend = _NullBackend()
        loader = ModelLoader(artifacts, backend, budget_bytes=budget)
        ref: list[int] = []  # least recently used first
        pins: set[int] = set()
        for op, i in ops:
            if op == "pin":
                loader.pin(f"m{i}", "1.0")
                pins.add(i)
            elif op == "unpin":
                loader.unpin(f"m{i}", "1.0")
                pins.discard(i)
            elif op == "evict":
                removed = loader.evict(f"m{i}", "1.0")
                assert removed == (i in ref and i not in pins)
                if removed:
                    ref.remove(i)
            else:
                pinned_bytes = sum(sizes[j] for j in ref if j in pins)
                fits = i in ref or sizes[i] + pinned_bytes <= budget
                if not fits:
                    with pytest.raises(ResourceExhausted):
                        await loader.load(records[i])
                    continue
                await loader.load(records[i])
                if i in ref:
                    ref.remove(i)
                else:
                    while sum(sizes[j] for j in ref) + sizes[i] > budget:
                        ref.remove(next(j for j in ref if j not in pins))
                ref.append(i)
            assert [m.model_id for m in loader.manifest()] == [f"m{j}" for j in ref]
            assert loader.used_bytes <= budget
            assert {m.model_id for m in loader.manifest() if m.pinned} == {
                f"m{j}" for j in ref if j in pins}

    trio.run(main)


async def test_loads_and_cache_lookups_are_counted(local_artifacts, publisher) -> None:
    from tests.services.harness import metrics_reader, points

    reader = metrics_reader()

    def count(name: str, **match: str) -> int:
        return sum(p.value for p in points(reader, name)
                   if all(p.attributes.get(k) == v for k, v in match.items()))

    record = make_record(local_artifacts, publisher, "counted", tensor_model_bytes(np.eye(4)))
    size = record.artifacts[0].size_bytes
    loader = ModelLoader(local_artifacts, OnnxRuntimeBackend(intra_op_threads=1),
                         budget_bytes=size * 4)
    await loader.load(record)
    await loader.load(record)
    small = ModelLoader(local_artifacts, OnnxRuntimeBackend(intra_op_threads=1),
                        budget_bytes=1)
    with pytest.raises(ResourceExhausted):
        await small.load(record)
    labels = {"model": "counted", "version": "1.0"}
    assert count("tether.worker.model.loads", **labels, result="OK") == 1
    assert count("tether.worker.model.loads", **labels, result="RESOURCE_EXHAUSTED") == 1
    assert count("tether.worker.model_cache.lookups", **labels, result="miss") == 2
    assert count("tether.worker.model_cache.lookups", **labels, result="hit") == 1


@pytest.mark.parametrize("spin", [False, True])
def test_onnx_runtime_threads_spin_only_when_asked(spin: bool) -> None:
    """A spinning intra-op pool keeps every core busy between steps (the worker's event
    loop then waits for one): off unless the backend is told the host is its own."""
    weight = np.eye(4, dtype=np.float32)
    session = OnnxRuntimeBackend(intra_op_threads=2, spin=spin).load(
        tensor_model_bytes(weight), digest="sha256:test")
    options = session._session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == (
        "1" if spin else "0")
    (y,) = session.run({session.inputs[0].name: np.ones((1, 4), np.float32)}).values()
    assert np.allclose(y, 1.5)
