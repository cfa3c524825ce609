"""FAKE ``tensorrt`` and ``pycuda.driver`` modules: test doubles, not TensorRT.

TensorRT's libraries come only from NVIDIA's own package index, which no machine of this
project reaches, and there is no GPU here. These doubles implement the slice of the TensorRT 10
Python API and of pycuda that :mod:`worker.engine.tensorrt` calls (builder, ONNX parser,
optimization profiles, serialized plans, runtime, execution context with tensor addresses,
device allocations, async copies, streams), so that code runs end to end in tests. The "engine"
they build is the ONNX graph itself, executed by ONNX Runtime on the CPU; "device memory" is a
dictionary of byte arrays, and the doubles count the bytes copied each way, so a test can see
that a decoder's KV cache is fed back by address rather than through the host.

Optimization profiles are checked the way TensorRT checks them: the build fails when a dynamic
input has no profile, when min <= opt <= max does not hold, or when a profile contradicts a
static dimension; ``set_input_shape`` refuses a shape outside [min, max]. What the doubles
cannot show: that memory is really on a GPU, stream ordering and overlap, TensorRT's own layer
support and numerics (fp16 included), and speed. ``tools/gpu_check.py`` exercises the same code
against the real TensorRT on a GPU machine.
"""

from __future__ import annotations

import ast
import itertools
import types
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

PLAN_MAGIC = b"FAKE-TRT-PLAN\n"
_ONNX_NP = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.INT64: np.int64,
            onnx.TensorProto.INT32: np.int32, onnx.TensorProto.FLOAT16: np.float16}


class _Memory:
    """Fake device memory: address -> bytearray."""

    def __init__(self) -> None:
        self.blocks: dict[int, bytearray] = {}
        self._next = itertools.count(0x1000, 0x1000)

    def alloc(self, n: int) -> int:
        addr = next(self._next)
        self.blocks[addr] = bytearray(n)
        return addr


def make_fake_modules(*, gpus: int = 1, device_name: str = "NVIDIA H100 80GB HBM3",
                      total_memory: int = 80 * (1 << 30),
                      version: str = "10.3.0") -> tuple[Any, Any]:
    """Return fresh (tensorrt, pycuda.driver) doubles sharing one fake device memory."""
    mem = _Memory()
    log: dict[str, Any] = {"builds": 0, "pushes": 0, "pops": 0, "executions": 0,
                           "htod_bytes": 0, "dtoh_bytes": 0, "profiles": []}

    # ---------------------------------------------------------------- tensorrt
    trt: Any = types.ModuleType("tensorrt")
    trt.__doc__ = "FAKE tensorrt test double (see tests/model_plane/fake_tensorrt.py)"
    trt.__version__ = version
    trt.fake_log = log

    class Logger:
        WARNING = 2

        def __init__(self, level: int = 2) -> None:
            self.level = level

    class TensorIOMode:
        INPUT = "input"
        OUTPUT = "output"

    class DataType:
        FLOAT = np.float32
        INT64 = np.int64
        INT32 = np.int32
        HALF = np.float16

    trt.Logger = Logger
    trt.TensorIOMode = TensorIOMode
    trt.DataType = DataType
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    trt.BuilderFlag = types.SimpleNamespace(FP16="fp16", TF32="tf32")
    trt.nptype = lambda dt: dt

    class _Input:
        def __init__(self, name: str, shape: tuple[int, ...]) -> None:
            self.name, self.shape = name, shape

    class Network:
        def __init__(self) -> None:
            self.model: onnx.ModelProto | None = None
            self.inputs: list[_Input] = []

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, i: int) -> _Input:
            return self.inputs[i]

    class OnnxParser:
        def __init__(self, network: Network, logger: Logger) -> None:
            self.network = network
            self.errors: list[str] = []

        def parse(self, data: bytes) -> bool:
            try:
                model = onnx.load_from_string(data)
                onnx.checker.check_model(model)
            except Exception as exc:
                self.errors.append(str(exc))
                return False
            self.network.model = model
            inits = {i.name for i in model.graph.initializer}
            for vi in model.graph.input:
                if vi.name in inits:
                    continue
                dims = tuple(d.dim_value if d.HasField("dim_value") else -1
                             for d in vi.type.tensor_type.shape.dim)
                self.network.inputs.append(_Input(vi.name, dims))
            return True

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, i: int) -> str:
            return self.errors[i]

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

        def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

    class Config:
        def __init__(self) -> None:
            self.profiles: list[Profile] = []
            self.flags: set[str] = {"tf32"}  # TensorRT's default on Ampere and later

        def set_memory_pool_limit(self, pool: str, size: int) -> None:
            self.pool = (pool, size)

        def set_flag(self, flag: str) -> None:
            self.flags.add(flag)

        def clear_flag(self, flag: str) -> None:
            self.flags.discard(flag)

        def add_optimization_profile(self, p: Profile) -> int:
            self.profiles.append(p)
            return len(self.profiles) - 1

    class Builder:
        platform_has_fast_fp16 = True

        def __init__(self, logger: Logger) -> None:
            pass

        def create_network(self, flags: int) -> Network:
            return Network()

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes | None:
            assert network.model is not None
            shapes = {n: p for c in config.profiles for n, p in c.shapes.items()}
            for tensor in network.inputs:
                if all(d >= 0 for d in tensor.shape) and tensor.name not in shapes:
                    continue
                if tensor.name not in shapes:
                    return None  # TensorRT: a dynamic input without a profile
                lo, opt, hi = shapes[tensor.name]
                if not (len(lo) == len(opt) == len(hi) == len(tensor.shape)):
                    return None
                for d, a, b, c in zip(tensor.shape, lo, opt, hi, strict=True):
                    if not 0 <= a <= b <= c or (d >= 0 and not a == b == c == d):
                        return None
            log["builds"] += 1
            log["profiles"].append(shapes)
            log["flags"] = sorted(config.flags)
            header = repr(shapes)
            return PLAN_MAGIC + header.encode() + b"\n" + network.model.SerializeToString()

    class Context:
        def __init__(self, engine: Engine) -> None:
            self.engine = engine
            self.shapes: dict[str, tuple[int, ...]] = {}
            self.addresses: dict[str, int] = {}

        def set_input_shape(self, name: str, shape: Any) -> bool:
            lo, _, hi = self.engine.profile.get(name, (None, None, None))
            if hi is not None and any(not a <= s <= b
                                      for s, a, b in zip(shape, lo, hi, strict=True)):
                return False
            self.shapes[name] = tuple(int(s) for s in shape)
            return True

        def set_tensor_address(self, name: str, addr: int) -> None:
            self.addresses[name] = addr

        def _feeds(self, zeros: bool) -> dict[str, np.ndarray]:
            feeds = {}
            for name in self.engine.input_names:
                dt = self.engine.dtypes[name]
                shape = self.shapes[name]
                if zeros:
                    feeds[name] = np.zeros(shape, dt)
                else:
                    n = int(np.prod(shape)) * np.dtype(dt).itemsize
                    raw = bytes(mem.blocks[self.addresses[name]])[:n]
                    feeds[name] = np.frombuffer(raw, dt).reshape(shape)
            return feeds

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            if name in self.engine.input_names:
                return self.shapes.get(name, self.engine.static_shapes[name])
            # Output shapes follow from input shapes: run on zeros once per set of shapes.
            key = tuple(sorted(self.shapes.items()))
            if key not in self.engine.output_shapes:
                outs = self.engine.session.run(self.engine.output_names,
                                               self._feeds(zeros=True))
                self.engine.output_shapes[key] = {
                    n: tuple(o.shape) for n, o in zip(self.engine.output_names, outs,
                                                      strict=True)}
            return self.engine.output_shapes[key][name]

        def execute_async_v3(self, stream_handle: int) -> bool:
            log["executions"] += 1
            outs = self.engine.session.run(self.engine.output_names, self._feeds(zeros=False))
            for name, arr in zip(self.engine.output_names, outs, strict=True):
                block = mem.blocks[self.addresses[name]]
                data = np.ascontiguousarray(arr).tobytes()
                block[: len(data)] = data
            return True

    class Engine:
        def __init__(self, model: onnx.ModelProto, profile: dict) -> None:
            self.session = ort.InferenceSession(model.SerializeToString(),
                                                providers=["CPUExecutionProvider"])
            self.profile = profile
            self.output_shapes: dict[tuple, dict[str, tuple[int, ...]]] = {}
            self.input_names = [i.name for i in self.session.get_inputs()]
            self.output_names = [o.name for o in self.session.get_outputs()]
            types_ = {"tensor(float)": np.float32, "tensor(int64)": np.int64,
                      "tensor(int32)": np.int32, "tensor(float16)": np.float16}
            self.dtypes = {t.name: types_[t.type] for t in
                           [*self.session.get_inputs(), *self.session.get_outputs()]}
            self.static_shapes = {t.name: tuple(d if isinstance(d, int) else -1 for d in t.shape)
                                  for t in [*self.session.get_inputs(),
                                            *self.session.get_outputs()]}

        @property
        def num_io_tensors(self) -> int:
            return len(self.input_names) + len(self.output_names)

        def get_tensor_name(self, i: int) -> str:
            return [*self.input_names, *self.output_names][i]

        def get_tensor_dtype(self, name: str) -> Any:
            return self.dtypes[name]

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return self.static_shapes[name]

        def get_tensor_mode(self, name: str) -> str:
            return TensorIOMode.INPUT if name in self.input_names else TensorIOMode.OUTPUT

        def create_execution_context(self) -> Context:
            return Context(self)

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            pass

        def deserialize_cuda_engine(self, plan: bytes) -> Engine | None:
            if not plan.startswith(PLAN_MAGIC):
                return None
            header, _, model = plan[len(PLAN_MAGIC):].partition(b"\n")
            return Engine(onnx.load_from_string(model), ast.literal_eval(header.decode()))

    trt.Builder = Builder
    trt.OnnxParser = OnnxParser
    trt.Runtime = Runtime

    # ----------------------------------------------------------------- pycuda
    cuda: Any = types.ModuleType("pycuda.driver")
    cuda.__doc__ = "FAKE pycuda.driver test double (see tests/model_plane/fake_tensorrt.py)"
    cuda.fake_memory = mem

    class DeviceAllocation:
        def __init__(self, n: int) -> None:
            self.addr = mem.alloc(n)

        def __int__(self) -> int:
            return self.addr

        def free(self) -> None:
            mem.blocks.pop(self.addr, None)

        def __del__(self) -> None:  # pycuda frees an allocation when it is collected
            self.free()

    class PrimaryContext:
        def push(self) -> None:
            log["pushes"] += 1

        def pop(self) -> None:
            log["pops"] += 1

    class Device:
        @staticmethod
        def count() -> int:
            return gpus

        def __init__(self, i: int) -> None:
            if i >= gpus:
                raise RuntimeError("no such device")

        def name(self) -> str:
            return device_name

        def total_memory(self) -> int:
            return total_memory

        def retain_primary_context(self) -> PrimaryContext:
            return PrimaryContext()

    class Stream:
        handle = 7

        def synchronize(self) -> None:
            pass

    def memcpy_htod_async(dev: DeviceAllocation, host: np.ndarray, stream: Stream) -> None:
        data = np.ascontiguousarray(host).tobytes()
        log["htod_bytes"] += len(data)
        mem.blocks[int(dev)][: len(data)] = data

    def memcpy_dtoh_async(host: np.ndarray, dev: DeviceAllocation, stream: Stream) -> None:
        raw = bytes(mem.blocks[int(dev)])[: host.nbytes]
        log["dtoh_bytes"] += len(raw)
        host.reshape(-1).view(np.uint8)[:] = np.frombuffer(raw, np.uint8)

    def memcpy_dtoh(host: np.ndarray, dev: DeviceAllocation) -> None:
        memcpy_dtoh_async(host, dev, Stream())

    cuda.init = lambda: None
    cuda.Device = Device
    cuda.Stream = Stream
    cuda.mem_alloc = DeviceAllocation
    cuda.memcpy_htod_async = memcpy_htod_async
    cuda.memcpy_dtoh_async = memcpy_dtoh_async
    cuda.memcpy_dtoh = memcpy_dtoh
    return trt, cuda
