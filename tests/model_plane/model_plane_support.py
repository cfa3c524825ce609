"""Shared pieces of the model-plane tests: clocks, ports, S3 buckets, counting wrappers and a
small ONNX model builder (fixtures are in conftest.py)."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

from tether.artifacts import S3Store, s3_client

REPO = Path(__file__).resolve().parents[2]
MODELS_DIR = REPO / "worker" / "models"


class ManualClock:
    """Milliseconds that move only when a test says so."""

    def __init__(self, start_ms: int = 1_800_000_000_000) -> None:
        self.now_ms = start_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, ms: int) -> None:
        self.now_ms += ms


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def s3_buckets(endpoint: str, n: int = 3, prefix: str = "tether") -> list[S3Store]:
    client = s3_client(endpoint, "testing", "testing", timeout_s=5, retries=0)
    tag = uuid.uuid4().hex[:8]
    return [S3Store(client, f"{prefix}-{tag}-r{i}") for i in range(n)]


class CountingSession:
    """Wraps a real runtime session and counts its calls (to observe streaming and cancel)."""

    def __init__(self, inner):
        self.inner = inner
        self.inputs = inner.inputs
        self.outputs = inner.outputs
        self.calls = 0

    def run(self, feeds):
        self.calls += 1
        return self.inner.run(feeds)


class CountingBackend:
    """A real backend that records what it was asked to load (test double around it)."""

    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name
        self.loaded: list[str] = []

    def load(self, onnx_bytes: bytes, *, digest: str):
        self.loaded.append(digest)
        return CountingSession(self.inner.load(onnx_bytes, digest=digest))


def tensor_model_bytes(weight, bias_value: float = 0.5) -> bytes:
    """A small real ONNX model: y = x @ W + b, x float32 [batch, in]."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    w = np.asarray(weight, dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]),
         helper.make_node("Add", ["xw", "b"], ["y"])],
        "tensor-test",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", w.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", w.shape[1]])],
        [numpy_helper.from_array(w, "W"),
         numpy_helper.from_array(np.full(w.shape[1], bias_value, np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()
