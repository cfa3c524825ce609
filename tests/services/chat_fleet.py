"""A test fleet whose worker runs the real engine (``worker.engine``) over two text
models published into its catalog: ``tiny-chat``, a tiny random-weight decoder with a
chat template (``tools/tiny_decoder.py``), and the GRU ``kjv-textgen``, which has none.
For the tests where messages must really go through a model's chat template."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from registry.catalog import Catalog
from registry.publish import ModelPackage, publish_package
from tests.services.harness import Fleet, fleet
from tether.artifacts import ArtifactStore, LocalDirectoryStore
from tether.keys import KeyPair
from tools.tiny_decoder import write_model_folder
from worker.engine import ExecutionEngine, OnnxRuntimeBackend
from worker.engine.runtime import WorkerEngine
from worker.loader import ModelLoader

REPO = Path(__file__).resolve().parents[2]
CHAT = "tiny-chat"
GRU = "kjv-textgen"


class ServedEngine(WorkerEngine):
    """The real worker engine, plus the ``models`` list the harness announces topics for."""

    @property
    def models(self) -> list[tuple[str, str]]:
        return [(k.model_id, k.version) for k in self.supported()]


@asynccontextmanager
async def chat_fleet(tmp_path: Path, **fleet_args: Any) -> AsyncIterator[Fleet]:
    """``harness.fleet`` with one worker ("w1") serving ``CHAT`` and ``GRU`` on the real
    engine (ONNX Runtime on CPU), discovered by the orchestrator."""
    published: dict[str, Any] = {}

    def publish(catalog: Catalog, publisher: KeyPair) -> None:
        artifacts = ArtifactStore(
            [LocalDirectoryStore(tmp_path / f"r{i}", f"r{i}") for i in range(3)],
            trusted_keys={publisher.public_key})
        folder = write_model_folder(tmp_path / CHAT, model_id=CHAT, layers=1, heads=2,
                                    head_dim=8)
        published["records"] = [
            publish_package(ModelPackage.load(folder), catalog, artifacts, publisher),
            publish_package(ModelPackage.load(REPO / "worker" / "models" / GRU), catalog,
                            artifacts, publisher),
        ]
        published["artifacts"] = artifacts

    async with fleet(tmp_path, extra=publish, **fleet_args) as f:
        loader = ModelLoader(published["artifacts"], OnnxRuntimeBackend(intra_op_threads=1),
                             budget_bytes=1 << 30)
        engine = ServedEngine(loader, published["records"], engine=ExecutionEngine(loader))
        await f.add_worker("w1", engine=engine)  # type: ignore[arg-type]
        await f.discovery.wait_for(lambda s: len(s) == 1)
        yield f
