"""Worker execution engines: ONNX Runtime on CPU, TensorRT on GPU, and the task runners."""

from worker.engine.backends import (
    ONNXRUNTIME_CPU,
    Backend,
    IOSpec,
    OnnxRuntimeBackend,
    Session,
)
from worker.engine.engine import CancelFlag, ExecutionEngine, InferenceStream
from worker.engine.runtime import WorkerEngine, create_worker_engine

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
