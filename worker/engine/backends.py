"""Runtime backends: what turns ONNX bytes into something that runs.

A :class:`Backend` loads an ONNX model into a :class:`Session`; a session runs named numpy
arrays in and out, synchronously (the engine calls it from a worker thread). The CPU backend,
ONNX Runtime, lives here; the TensorRT backend is in :mod:`worker.engine.tensorrt`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import onnxruntime as ort

from tether.errors import InvalidArgument
from tether.v1 import tensor_pb2

ONNXRUNTIME_CPU = "onnxruntime-cpu"

# ONNX Runtime's type strings and numpy dtypes for tether.v1.DataType.
DTYPES: dict[int, np.dtype] = {
    tensor_pb2.DATA_TYPE_FLOAT32: np.dtype("<f4"),
    tensor_pb2.DATA_TYPE_FLOAT16: np.dtype("<f2"),
    tensor_pb2.DATA_TYPE_INT64: np.dtype("<i8"),
    tensor_pb2.DATA_TYPE_INT32: np.dtype("<i4"),
    tensor_pb2.DATA_TYPE_INT8: np.dtype("i1"),
    tensor_pb2.DATA_TYPE_UINT8: np.dtype("u1"),
    tensor_pb2.DATA_TYPE_BOOL: np.dtype("?"),
}
_ORT_TYPES = {
    "tensor(float)": tensor_pb2.DATA_TYPE_FLOAT32,
    "tensor(float16)": tensor_pb2.DATA_TYPE_FLOAT16,
    "tensor(int64)": tensor_pb2.DATA_TYPE_INT64,
    "tensor(int32)": tensor_pb2.DATA_TYPE_INT32,
    "tensor(int8)": tensor_pb2.DATA_TYPE_INT8,
    "tensor(uint8)": tensor_pb2.DATA_TYPE_UINT8,
    "tensor(bool)": tensor_pb2.DATA_TYPE_BOOL,
}


def data_type_of(dtype: np.dtype) -> int:
    for code, dt in DTYPES.items():
        if dt == dtype:
            return code
    raise InvalidArgument(f"numpy dtype {dtype} has no tether.v1.DataType")


@dataclass(frozen=True)
class IOSpec:
    """One input or output of a loaded session; -1 in ``shape`` is a dynamic dimension."""

    name: str
    dtype: int  # tether.v1.DataType
    shape: tuple[int, ...]


class Session(Protocol):
    inputs: list[IOSpec]
    outputs: list[IOSpec]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class Backend(Protocol):
    name: str

    def load(self, onnx_bytes: bytes, *, digest: str) -> Session: ...


def _dim(d: object) -> int:
    return d if isinstance(d, int) and d >= 0 else -1


class OnnxRuntimeSession:
    def __init__(self, session: ort.InferenceSession) -> None:
        self._session = session
        self.inputs = [IOSpec(i.name, _ORT_TYPES.get(i.type, 0), tuple(_dim(d) for d in i.shape))
                       for i in session.get_inputs()]
        self.outputs = [IOSpec(o.name, _ORT_TYPES.get(o.type, 0), tuple(_dim(d) for d in o.shape))
                        for o in session.get_outputs()]
        self._output_names = [o.name for o in self.outputs]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self._session.run(self._output_names, dict(feeds))
        return dict(zip(self._output_names, results, strict=True))


class OnnxRuntimeBackend:
    """ONNX Runtime on CPU: the default engine, and the fallback everywhere.

    Its intra-op threads do not spin waiting for the next run (``spin=False``, ONNX
    Runtime's ``session.intra_op.allow_spinning`` off): between steps a spinning pool keeps
    every core busy, and the worker's own event loop (which streams the tokens out), and
    any service sharing the host, then wait for a core. On the 2-core bench host, spinning
    cost 3-5x the CPU per token and 40% of the worker's tokens/s at 16 concurrent streams
    (``bench/e2e_request_path.py``). ``spin=True`` suits a host running nothing else."""

    name = ONNXRUNTIME_CPU

    def __init__(self, *, intra_op_threads: int = 0, spin: bool = False) -> None:
        self.intra_op_threads = intra_op_threads
        self.spin = spin

    def load(self, onnx_bytes: bytes, *, digest: str) -> OnnxRuntimeSession:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.intra_op_threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.intra_op.allow_spinning",
                                      "1" if self.spin else "0")
        try:
            sess = ort.InferenceSession(onnx_bytes, sess_options=opts,
                                        providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own untyped errors for bad graphs
            raise InvalidArgument(f"artifact {digest} is not a loadable ONNX model: {exc}",
                                  details={"digest": digest}) from exc
        return OnnxRuntimeSession(sess)
