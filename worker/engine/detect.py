"""Capability detection: which engine this worker runs, and what it announces.

TensorRT is chosen only when the ``tensorrt`` and ``pycuda`` modules import and CUDA sees at
least one GPU; everything else (no module, no driver, no device) falls back to ONNX Runtime on
CPU, the default. The GPU class is a lowercase, kebab-case form of the device name without its
vendor prefix and memory size (``"NVIDIA H100 80GB HBM3"`` -> ``"h100"``).
"""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass, field
from typing import Any

from worker.engine.backends import Backend, OnnxRuntimeBackend
from worker.engine.tensorrt import DEFAULT_MAX_BATCH, TensorRTBackend


@dataclass(frozen=True)
class Capabilities:
    gpu_class: str = "cpu"
    vram_gb: int = 0
    accelerators: list[str] = field(default_factory=list)
    tensorrt_version: str = ""
    reason: str = ""  # why TensorRT is not used, when it is not


def gpu_class_of(device_name: str) -> str:
    name = device_name.lower()
    name = re.sub(r"^(nvidia|tesla|geforce|quadro)\s+", "", name)
    name = re.sub(r"^(nvidia|tesla|geforce|quadro)\s+", "", name)
    name = re.sub(r"\b\d+\s*gb\b.*$", "", name).strip()
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-") or "gpu"


def _import(name: str) -> Any:
    return importlib.import_module(name)


def detect() -> tuple[Capabilities, Any, Any]:
    """Return (capabilities, tensorrt module or None, pycuda.driver module or None)."""
    try:
        trt = _import("tensorrt")
        cuda = _import("pycuda.driver")
    except ImportError as exc:
        return Capabilities(reason=f"TensorRT unavailable: {exc}"), None, None
    try:
        cuda.init()
        count = cuda.Device.count()
    except Exception as exc:  # pycuda raises its own error types when there is no driver
        return Capabilities(reason=f"CUDA unavailable: {exc}"), None, None
    if count < 1:
        return Capabilities(reason="CUDA sees no GPU"), None, None
    dev = cuda.Device(0)
    caps = Capabilities(gpu_class=gpu_class_of(dev.name()),
                        vram_gb=int(dev.total_memory() // (1 << 30)),
                        accelerators=["cuda", "tensorrt"],
                        tensorrt_version=str(trt.__version__))
    return caps, trt, cuda


def select_backend(cache_dir: str | os.PathLike[str], *, prefer_cpu: bool = False,
                   intra_op_threads: int = 0,
                   max_batch: int | None = None) -> tuple[Backend, Capabilities]:
    """The backend this machine should use, and what it found; ``max_batch`` (the engine's
    batch limit) bounds a TensorRT engine's optimization profile."""
    caps, trt, cuda = detect()
    if prefer_cpu or trt is None:
        return OnnxRuntimeBackend(intra_op_threads=intra_op_threads), caps
    return TensorRTBackend(trt, cuda, gpu_class=caps.gpu_class, cache_dir=cache_dir,
                           max_batch=max_batch or DEFAULT_MAX_BATCH), caps
