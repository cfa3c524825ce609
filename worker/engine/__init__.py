"""Worker execution engines: ONNX Runtime on CPU, TensorRT on GPU, and the task runners.

``worker.loader`` imports the backend modules of this package and the engine modules import
the loader, so the engine names are resolved lazily here to keep either import order working.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from worker.engine.backends import (
    ONNXRUNTIME_CPU,
    Backend,
    IOSpec,
    OnnxRuntimeBackend,
    Session,
)

if TYPE_CHECKING:
    from worker.engine.engine import CancelFlag, ExecutionEngine, InferenceStream
    from worker.engine.runtime import WorkerEngine, create_worker_engine

_LAZY = {
    "CancelFlag": "worker.engine.engine",
    "ExecutionEngine": "worker.engine.engine",
    "InferenceStream": "worker.engine.engine",
    "WorkerEngine": "worker.engine.runtime",
    "create_worker_engine": "worker.engine.runtime",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'worker.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "ONNXRUNTIME_CPU",
    "Backend",
    "CancelFlag",
    "ExecutionEngine",
    "IOSpec",
    "InferenceStream",
    "OnnxRuntimeBackend",
    "Session",
    "WorkerEngine",
    "create_worker_engine",
]
