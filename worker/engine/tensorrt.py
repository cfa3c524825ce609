"""TensorRT backend: engines built from the same ONNX the CPU path runs, on NVIDIA GPUs.

Building a TensorRT engine is slow (seconds to minutes), so built engines are serialized to
``cache_dir/<digest>-<gpu class>-trt<TensorRT version>.plan`` and reused: an engine is only
valid for the GPU class and TensorRT version that built it, and the ONNX digest names the
graph. Dynamic dimensions get one optimization profile, from the shapes the caller declares
(``profiles``: input name -> (min, opt, max) shapes) or, by default, 1 .. ``max_dim`` on every
dynamic axis.

Buffers are pycuda device allocations; inputs are copied host-to-device, the execution context
runs on a CUDA stream (``execute_async_v3``, TensorRT 10's tensor-address API), outputs are
copied back. Nothing here is imported unless :mod:`worker.engine.detect` found both
``tensorrt`` and a GPU.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from tether.errors import InvalidArgument, Unavailable
from worker.engine.backends import IOSpec, data_type_of

TENSORRT = "tensorrt"
DEFAULT_MAX_DIM = 256
WORKSPACE_BYTES = 1 << 30

Shape = tuple[int, ...]


def plan_name(digest: str, gpu_class: str, trt_version: str) -> str:
    safe = re.sub(r"[^a-z0-9.-]+", "-", f"{gpu_class}-trt{trt_version}".lower())
    return f"{digest.replace('+', '_')}-{safe}.plan"


@contextmanager
def _current(cuda_context: Any) -> Iterator[None]:
    cuda_context.push()
    try:
        yield
    finally:
        cuda_context.pop()


class TensorRTSession:
    """One deserialized engine with its execution context and a CUDA stream."""

    def __init__(self, trt: Any, cuda: Any, engine: Any, cuda_context: Any) -> None:
        self._trt = trt
        self._cuda = cuda
        self._engine = engine
        self._cuda_context = cuda_context
        self._context = engine.create_execution_context()
        self._stream = cuda.Stream()
        self._lock = threading.Lock()  # one execution context runs one request at a time
        self.inputs: list[IOSpec] = []
        self.outputs: list[IOSpec] = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            spec = IOSpec(name, data_type_of(dtype), tuple(int(d) for d in
                                                           engine.get_tensor_shape(name)))
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.inputs.append(spec)
            else:
                self.outputs.append(spec)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock, _current(self._cuda_context):
            return self._run(feeds)

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        cuda, ctx, engine = self._cuda, self._context, self._engine
        keep: list[Any] = []  # device buffers live until the stream is synchronized
        for spec in self.inputs:
            host = np.ascontiguousarray(feeds[spec.name],
                                        dtype=self._trt.nptype(
                                            engine.get_tensor_dtype(spec.name)))
            if not ctx.set_input_shape(spec.name, host.shape):
                raise InvalidArgument(
                    f"shape {host.shape} of {spec.name!r} is outside the engine's profile")
            dev = cuda.mem_alloc(max(host.nbytes, 1))
            cuda.memcpy_htod_async(dev, host, self._stream)
            ctx.set_tensor_address(spec.name, int(dev))
            keep.append((dev, host))
        results: dict[str, np.ndarray] = {}
        copies = []
        for spec in self.outputs:
            shape = tuple(int(d) for d in ctx.get_tensor_shape(spec.name))
            host = np.empty(shape, dtype=self._trt.nptype(engine.get_tensor_dtype(spec.name)))
            dev = cuda.mem_alloc(max(host.nbytes, 1))
            ctx.set_tensor_address(spec.name, int(dev))
            keep.append((dev, host))
            copies.append((host, dev))
            results[spec.name] = host
        if not ctx.execute_async_v3(self._stream.handle):
            raise Unavailable("TensorRT execution failed")
        for host, dev in copies:
            cuda.memcpy_dtoh_async(host, dev, self._stream)
        self._stream.synchronize()
        for dev, _ in keep:
            dev.free()
        return results


class TensorRTBackend:
    """Builds (or reuses) a TensorRT engine per (ONNX digest, GPU class, TensorRT version)."""

    name = TENSORRT

    def __init__(self, trt: Any, cuda: Any, *, gpu_class: str, cache_dir: str | os.PathLike[str],
                 profiles: Mapping[str, tuple[Shape, Shape, Shape]] | None = None,
                 max_dim: int = DEFAULT_MAX_DIM, fp16: bool = False) -> None:
        self.trt = trt
        self.cuda = cuda
        self.gpu_class = gpu_class
        self.cache_dir = Path(cache_dir)
        self.profiles = dict(profiles or {})
        self.max_dim = max_dim
        self.fp16 = fp16
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.builds = 0
        # The engine runs in worker threads; each call makes the device's primary context
        # current for its duration.
        self.cuda_context = cuda.Device(0).retain_primary_context()

    def plan_path(self, digest: str) -> Path:
        return self.cache_dir / plan_name(digest, self.gpu_class, self.trt.__version__)

    def load(self, onnx_bytes: bytes, *, digest: str) -> TensorRTSession:
        with _current(self.cuda_context):
            return self._load(onnx_bytes, digest)

    def _load(self, onnx_bytes: bytes, digest: str) -> TensorRTSession:
        path = self.plan_path(digest)
        plan = path.read_bytes() if path.is_file() else None
        if plan is None:
            plan = self.build(onnx_bytes, digest=digest)
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".partial")
            tmp.write_bytes(plan)
            os.replace(tmp, path)
        runtime = self.trt.Runtime(self.logger)
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            # A stale or corrupt plan: drop it and build afresh once.
            path.unlink(missing_ok=True)
            engine = runtime.deserialize_cuda_engine(self.build(onnx_bytes, digest=digest))
            if engine is None:
                raise Unavailable(f"TensorRT could not deserialize the engine for {digest}")
        return TensorRTSession(self.trt, self.cuda, engine, self.cuda_context)

    def build(self, onnx_bytes: bytes, *, digest: str) -> bytes:
        trt = self.trt
        builder = trt.Builder(self.logger)
        flags = 0
        if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse(onnx_bytes):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise InvalidArgument(f"TensorRT cannot parse ONNX model {digest}: {errors}",
                                  details={"digest": digest})
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        if self.fp16 and builder.platform_has_fast_fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        dynamic = False
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            shape = tuple(int(d) for d in tensor.shape)
            if all(d >= 0 for d in shape):
                continue
            dynamic = True
            lo, opt, hi = self.profiles.get(tensor.name) or (
                tuple(1 if d < 0 else d for d in shape),
                tuple(min(8, self.max_dim) if d < 0 else d for d in shape),
                tuple(self.max_dim if d < 0 else d for d in shape))
            profile.set_shape(tensor.name, lo, opt, hi)
        if dynamic:
            config.add_optimization_profile(profile)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise Unavailable(f"TensorRT failed to build an engine for {digest}")
        self.builds += 1
        return bytes(plan)
