"""TensorRT backend: engines built from the same ONNX the CPU path runs, on NVIDIA GPUs.

Building a TensorRT engine is slow (seconds to minutes), so built engines are serialized to
``cache_dir/<digest>-<gpu class>-trt<TensorRT version>-<bounds>.plan`` and reused: an engine
is only valid for the GPU class and TensorRT version that built it, the ONNX digest names the
graph, and ``<bounds>`` names the optimization profile's limits (max batch, max length, the
default dynamic bound, explicit profiles, fp16, tf32), since an engine refuses shapes outside
them. TF32 is off unless asked for: TensorRT would otherwise use it for fp32 matrix products on
Ampere and later GPUs, and greedy tokens would drift from ONNX Runtime's fp32.

Dynamic dimensions get one optimization profile (:func:`profile_shapes`, from the graph's
inputs): shapes the caller declares (``profiles``: input name -> (min, opt, max)) win; a
decoder in the layout of :mod:`worker.engine.decoder` gets batch 1 .. ``max_batch``, new tokens
1 .. ``max_length``, past tokens 0 .. ``max_length - 1`` and a total (attention mask) of
1 .. ``max_length``, optimized for one new token per sequence after half the context; any other
dynamic axis is 1 .. ``max_dim``.

Buffers are pycuda device allocations; host inputs are copied host-to-device, the execution
context runs on a CUDA stream (``execute_async_v3``, TensorRT 10's tensor-address API), outputs
are copied back, except a decoder's ``present.*``: those stay in device memory as
:class:`DeviceTensor` and are fed back as the next step's ``past_key_values.*`` by address, so
a sequence stepped alone never copies its KV cache between host and device. A batched step
gathers its sequences' caches on the host (``np.asarray`` of a :class:`DeviceTensor` copies it
back), because padding several caches to one length is done with numpy. Nothing here is
imported unless :mod:`worker.engine.detect` found both ``tensorrt`` and a GPU.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from tether.errors import InvalidArgument, Unavailable
from worker.engine.backends import IOSpec, data_type_of
from worker.engine.decoder import PAST_PREFIX
from worker.engine.engine import DEFAULT_MAX_BATCH

TENSORRT = "tensorrt"
DEFAULT_MAX_DIM = 256
DEFAULT_MAX_LENGTH = 2048  # tokens of context a decoder engine accepts, prompt and output
WORKSPACE_BYTES = 1 << 30

Shape = tuple[int, ...]
Profile = tuple[Shape, Shape, Shape]  # (min, opt, max)


def plan_name(digest: str, gpu_class: str, trt_version: str, bounds: str = "") -> str:
    safe = re.sub(r"[^a-z0-9.-]+", "-", f"{gpu_class}-trt{trt_version}".lower())
    tail = f"-{bounds}" if bounds else ""
    return f"{digest.replace('+', '_')}-{safe}{tail}.plan"


def _decoder_axis(name: str, axis: int, max_batch: int, max_length: int) -> tuple[int, int, int]:
    """(min, opt, max) of a dynamic axis of a decoder input, or (0, 0, 0) if it has no rule."""
    half = max(1, max_length // 2)
    if axis == 0:
        return 1, 1, max_batch
    if name in ("input_ids", "position_ids") and axis == 1:
        return 1, 1, max_length
    if name == "attention_mask" and axis == 1:
        return 1, half + 1, max_length
    if name.startswith(PAST_PREFIX) and axis == 2:
        return 0, half, max_length - 1
    return 0, 0, 0


def profile_shapes(inputs: Sequence[IOSpec], *, max_batch: int = DEFAULT_MAX_BATCH,
                   max_length: int = DEFAULT_MAX_LENGTH, max_dim: int = DEFAULT_MAX_DIM,
                   declared: Mapping[str, Profile] | None = None) -> dict[str, Profile]:
    """The optimization profile, (min, opt, max) per input with a dynamic (-1) axis."""
    declared = declared or {}
    decoder = any(i.name.startswith(PAST_PREFIX) for i in inputs)
    result: dict[str, Profile] = {}
    for spec in inputs:
        if spec.name in declared:
            result[spec.name] = declared[spec.name]
            continue
        if all(d >= 0 for d in spec.shape):
            continue
        lo, opt, hi = [], [], []
        for axis, d in enumerate(spec.shape):
            rule = (_decoder_axis(spec.name, axis, max_batch, max_length) if decoder
                    else (0, 0, 0))
            if d >= 0:
                rule = (d, d, d)
            elif rule == (0, 0, 0):
                rule = (1, min(8, max_dim), max_dim)
            lo.append(rule[0])
            opt.append(rule[1])
            hi.append(rule[2])
        result[spec.name] = (tuple(lo), tuple(opt), tuple(hi))
    return result


class DeviceTensor:
    """An output left in device memory: fed back to the same engine by address, copied to
    the host only when something asks for it as a numpy array."""

    def __init__(self, cuda: Any, allocation: Any, shape: Shape, dtype: np.dtype,
                 cuda_context: Any) -> None:
        self._cuda = cuda
        self.allocation = allocation  # freed with this object (pycuda frees on collection)
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self._cuda_context = cuda_context

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def numpy(self) -> np.ndarray:
        host = np.empty(self.shape, dtype=self.dtype)
        if host.nbytes:
            with _current(self._cuda_context):
                self._cuda.memcpy_dtoh(host, self.allocation)
        return host

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        host = self.numpy()
        return host if dtype is None else host.astype(dtype)

    def __getitem__(self, index: Any) -> np.ndarray:
        return self.numpy()[index]


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
        # A decoder's KV cache stays on the device from one step to the next.
        decoder = any(i.name.startswith(PAST_PREFIX) for i in self.inputs)
        self.device_outputs = frozenset(o.name for o in self.outputs
                                        if decoder and o.name.startswith("present."))

    def run(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        """Outputs as numpy arrays, except :attr:`device_outputs` (a decoder's ``present.*``),
        which come back as :class:`DeviceTensor`; inputs may be either."""
        with self._lock, _current(self._cuda_context):
            return self._run(feeds)

    def _run(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        cuda, ctx, engine = self._cuda, self._context, self._engine
        keep: list[Any] = []  # device buffers live until the stream is synchronized
        for spec in self.inputs:
            value = feeds[spec.name]
            dtype = np.dtype(self._trt.nptype(engine.get_tensor_dtype(spec.name)))
            if isinstance(value, DeviceTensor) and value.dtype == dtype:
                shape, dev = value.shape, value.allocation  # already on the device
            else:
                host = np.ascontiguousarray(value, dtype=dtype)
                shape = host.shape
                dev = cuda.mem_alloc(max(host.nbytes, 1))
                if host.nbytes:
                    cuda.memcpy_htod_async(dev, host, self._stream)
                keep.append((dev, host))
            if not ctx.set_input_shape(spec.name, shape):
                raise InvalidArgument(
                    f"shape {shape} of {spec.name!r} is outside the engine's profile")
            ctx.set_tensor_address(spec.name, int(dev))
        results: dict[str, Any] = {}
        copies = []
        for spec in self.outputs:
            shape = tuple(int(d) for d in ctx.get_tensor_shape(spec.name))
            dtype = np.dtype(self._trt.nptype(engine.get_tensor_dtype(spec.name)))
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            dev = cuda.mem_alloc(max(nbytes, 1))
            ctx.set_tensor_address(spec.name, int(dev))
            if spec.name in self.device_outputs:
                results[spec.name] = DeviceTensor(cuda, dev, shape, dtype, self._cuda_context)
                continue
            host = np.empty(shape, dtype=dtype)
            keep.append((dev, host))
            copies.append((host, dev))
            results[spec.name] = host
        if not ctx.execute_async_v3(self._stream.handle):
            raise Unavailable("TensorRT execution failed")
        for host, dev in copies:
            if host.nbytes:
                cuda.memcpy_dtoh_async(host, dev, self._stream)
        self._stream.synchronize()
        for dev, _ in keep:
            dev.free()
        return results


class TensorRTBackend:
    """Builds (or reuses) a TensorRT engine per (ONNX digest, GPU class, TensorRT version,
    profile bounds)."""

    name = TENSORRT

    def __init__(self, trt: Any, cuda: Any, *, gpu_class: str, cache_dir: str | os.PathLike[str],
                 profiles: Mapping[str, Profile] | None = None,
                 max_dim: int = DEFAULT_MAX_DIM, max_batch: int = DEFAULT_MAX_BATCH,
                 max_length: int = DEFAULT_MAX_LENGTH, fp16: bool = False,
                 tf32: bool = False) -> None:
        if min(max_dim, max_batch, max_length) < 1:
            raise ValueError("max_dim, max_batch and max_length must be positive")
        self.trt = trt
        self.cuda = cuda
        self.gpu_class = gpu_class
        self.cache_dir = Path(cache_dir)
        self.profiles = dict(profiles or {})
        self.max_dim = max_dim
        self.max_batch = max_batch
        self.max_length = max_length
        self.fp16 = fp16
        self.tf32 = tf32
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.builds = 0
        # The engine runs in worker threads; each call makes the device's primary context
        # current for its duration.
        self.cuda_context = cuda.Device(0).retain_primary_context()

    @property
    def bounds(self) -> str:
        """What the optimization profile depends on besides the graph, for the cache key."""
        key = f"b{self.max_batch}-l{self.max_length}-d{self.max_dim}"
        if self.profiles:
            declared = repr(sorted(self.profiles.items())).encode()
            key += "-p" + hashlib.sha256(declared).hexdigest()[:12]
        return key + ("-fp16" if self.fp16 else "") + ("-tf32" if self.tf32 else "")

    def plan_path(self, digest: str) -> Path:
        return self.cache_dir / plan_name(digest, self.gpu_class, self.trt.__version__,
                                          self.bounds)

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
        if not self.tf32 and hasattr(trt.BuilderFlag, "TF32"):
            config.clear_flag(trt.BuilderFlag.TF32)
        if self.fp16 and builder.platform_has_fast_fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        inputs = []
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            inputs.append(IOSpec(tensor.name, 0, tuple(int(d) for d in tensor.shape)))
        shapes = profile_shapes(inputs, max_batch=self.max_batch, max_length=self.max_length,
                                max_dim=self.max_dim, declared=self.profiles)
        if shapes:
            profile = builder.create_optimization_profile()
            for name, (lo, opt, hi) in shapes.items():
                profile.set_shape(name, lo, opt, hi)
            config.add_optimization_profile(profile)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise Unavailable(f"TensorRT failed to build an engine for {digest}")
        self.builds += 1
        return bytes(plan)
