"""Publish -> resolve -> fetch and verify -> load -> run -> stream, for both shipped models,
through the worker's engine API, on SQLite and PostgreSQL, with local and S3 replicas (the S3
server is a real moto process: see conftest). A tampered artifact is refused before loading."""

from __future__ import annotations

import json

import numpy as np
import pytest
from model_plane_support import MODELS_DIR, CountingBackend, s3_buckets

from registry.catalog import Catalog
from registry.publish import ModelPackage, publish_package
from tether.artifacts import ArtifactStore, LocalDirectoryStore
from tether.errors import DataLoss, PermissionDenied
from tether.keys import KeyPair
from tether.metadata import MetadataStore
from tether.v1 import infer_pb2, tensor_pb2
from worker.engine import OnnxRuntimeBackend
from worker.engine.runtime import WorkerEngine
from worker.loader import ModelLoader

REF = json.loads((MODELS_DIR / "all-minilm-l6-v2" / "reference_embeddings.json").read_text())


@pytest.fixture(params=[
    "sqlite+dir",
    pytest.param("postgres+dir", marks=pytest.mark.postgres),
    pytest.param("postgres+s3", marks=[pytest.mark.postgres, pytest.mark.s3]),
])
def plane(request, tmp_path, minilm_dir):
    db, replicas = request.param.split("+")
    kp = KeyPair.from_seed(b"\x09" * 32)
    if db == "sqlite":
        store = MetadataStore.sqlite(tmp_path / "meta.db")
    else:
        store = MetadataStore(request.getfixturevalue("postgres_url"))
    store.migrate()
    if replicas == "dir":
        blobs = [LocalDirectoryStore(tmp_path / f"r{i}", f"r{i}") for i in range(3)]
    else:
        blobs = s3_buckets(request.getfixturevalue("s3_endpoint"))
    artifacts = ArtifactStore(blobs, trusted_keys={kp.public_key})
    catalog = Catalog(store)
    for name in ("kjv-textgen", "all-minilm-l6-v2"):
        publish_package(ModelPackage.load(MODELS_DIR / name), catalog, artifacts, kp)
    yield catalog, artifacts
    store.close()


async def test_publish_resolve_fetch_load_run_stream(plane) -> None:
    catalog, artifacts = plane
    records = [catalog.resolve("kjv-textgen", "1", tenant_id="acme"),
               catalog.resolve("all-minilm-l6-v2", "", tenant_id="acme")]
    backend = CountingBackend(OnnxRuntimeBackend(intra_op_threads=1))
    worker = WorkerEngine(ModelLoader(artifacts, backend, budget_bytes=1 << 30), records)

    text_req = infer_pb2.Infer.Request(
        tenant_id="acme", model_id="kjv-textgen", correlation_id="c1",
        input=infer_pb2.Input(text="and moses said unto the people"),
        params=infer_pb2.GenerationParams(max_tokens=24, seed=11))
    items = [i async for i in worker.stream(text_req)]
    words = "".join(p.text for p, _ in items[:-1]).split()
    usage = items[-1][1]
    assert usage is not None and usage.output_tokens == len(items) - 1 >= 3
    assert usage.model_id == "kjv-textgen" and usage.version == "1.0" and words

    emb_req = infer_pb2.Infer.Request(
        tenant_id="acme", model_id="all-minilm-l6-v2", correlation_id="c2",
        input=infer_pb2.Input(texts=tensor_pb2.TextBatch(texts=REF["sentences"][:2])))
    items = [i async for i in worker.stream(emb_req)]
    vecs = np.asarray([p.embedding.values for p, _ in items[:-1]])
    np.testing.assert_allclose(vecs, np.asarray(REF["embeddings"][:2]), atol=2e-5)

    assert {m.model_id for m in worker.cache_manifest()} == {"kjv-textgen", "all-minilm-l6-v2"}
    assert len(backend.loaded) == 2


async def test_tampered_artifact_is_refused_end_to_end(plane) -> None:
    catalog, artifacts = plane
    record = catalog.resolve("kjv-textgen")
    digest = next(a.digest for a in record.artifacts if a.role == "model")
    for replica in artifacts.replicas:
        data = bytearray(replica.get(digest))
        data[1000] ^= 0x55
        replica.put(digest, bytes(data))
    backend = CountingBackend(OnnxRuntimeBackend())
    worker = WorkerEngine(ModelLoader(artifacts, backend, budget_bytes=1 << 30), [record])
    req = infer_pb2.Infer.Request(model_id="kjv-textgen", input=infer_pb2.Input(text="and"))
    with pytest.raises(DataLoss, match="tampered"):
        _ = [i async for i in worker.stream(req)]
    assert backend.loaded == []


def test_policy_is_enforced_on_resolve(plane) -> None:
    catalog, artifacts = plane
    pkg = ModelPackage.load(MODELS_DIR / "kjv-textgen", version="1.1")
    pkg.allowed_tenants = ["acme"]
    publish_package(pkg, catalog, artifacts, KeyPair.from_seed(b"\x09" * 32))
    assert catalog.resolve("kjv-textgen", "1", "acme").model.version == "1.1"
    with pytest.raises(PermissionDenied):
        catalog.resolve("kjv-textgen", "1", "globex")
