"""TensorRT engine and capability detection, tested through a FAKE ``tensorrt``/``pycuda``.

The fake (``fake_tensorrt.py``) is a test double injected into ``sys.modules``: TensorRT comes
only from NVIDIA's own package index, which no machine here reaches, and there is no GPU. The
double runs the ONNX graph with ONNX Runtime behind TensorRT's API, so these tests check the
real backend code: capability detection, engine building with optimization profiles, the plan
cache per (digest, GPU class, TensorRT version), device buffers and copies, and that results
equal the CPU engine's. ``tools/gpu_check.py`` runs the same backend on a real GPU.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from typing import Any

import numpy as np
import pytest
from fake_tensorrt import make_fake_modules
from model_plane_support import MODELS_DIR, REPO, tensor_model_bytes

from tether.artifacts import sha256_hex
from tether.errors import InvalidArgument
from tether.v1 import infer_pb2, presence_pb2, registry_pb2
from worker.engine import ExecutionEngine, OnnxRuntimeBackend
from worker.engine.detect import detect, gpu_class_of, select_backend
from worker.engine.engine import DEFAULT_MAX_BATCH
from worker.engine.runtime import create_worker_engine
from worker.engine.tensorrt import TensorRTBackend, plan_name
from worker.engine.tokenizers import load_tokenizer
from worker.loader import LoadedModel, ModelLoader


@pytest.fixture
def fake_gpu(monkeypatch):
    trt, cuda = make_fake_modules()
    pycuda: Any = type(sys)("pycuda")
    pycuda.driver = cuda
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.driver", cuda)
    return trt, cuda


def test_cpu_is_chosen_without_tensorrt(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails as if not installed
    backend, caps = select_backend(tmp_path)
    assert isinstance(backend, OnnxRuntimeBackend) and caps.gpu_class == "cpu"
    assert "TensorRT unavailable" in caps.reason


def test_cpu_is_chosen_when_cuda_sees_no_gpu(monkeypatch, tmp_path) -> None:
    trt, cuda = make_fake_modules(gpus=0)
    pycuda: Any = type(sys)("pycuda")
    pycuda.driver = cuda
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.driver", cuda)
    backend, caps = select_backend(tmp_path)
    assert isinstance(backend, OnnxRuntimeBackend) and caps.reason == "CUDA sees no GPU"


def test_tensorrt_is_chosen_with_a_gpu(fake_gpu, tmp_path) -> None:
    caps, _, _ = detect()
    assert (caps.gpu_class, caps.vram_gb, caps.tensorrt_version) == ("h100", 80, "10.3.0")
    backend, _ = select_backend(tmp_path)
    assert isinstance(backend, TensorRTBackend) and backend.name == "tensorrt"
    assert select_backend(tmp_path, prefer_cpu=True)[0].name == "onnxruntime-cpu"


@pytest.mark.parametrize(
    ("name", "cls"),
    [("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA A10G", "a10g"), ("Tesla T4", "t4"),
     ("NVIDIA GeForce RTX 4090", "rtx-4090"), ("NVIDIA L40S", "l40s")],
)
def test_gpu_class_names(name: str, cls: str) -> None:
    assert gpu_class_of(name) == cls


def test_engines_are_built_once_per_digest_gpu_class_and_version(fake_gpu, tmp_path) -> None:
    trt, cuda = fake_gpu
    onnx_bytes = tensor_model_bytes(np.eye(4) * 3)
    digest = sha256_hex(onnx_bytes)
    first = TensorRTBackend(trt, cuda, gpu_class="h100", cache_dir=tmp_path)
    session = first.load(onnx_bytes, digest=digest)
    assert first.builds == 1
    assert (tmp_path / plan_name(digest, "h100", "10.3.0", first.bounds)).is_file()
    assert first.plan_path(digest).name.endswith(
        f"-h100-trt10.3.0-b{DEFAULT_MAX_BATCH}-l2048-d256.plan")
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_allclose(session.run({"x": x})["y"], x * 3 + 0.5)
    assert [(s.name, s.shape) for s in session.inputs] == [("x", (-1, 4))]

    again = TensorRTBackend(trt, cuda, gpu_class="h100", cache_dir=tmp_path)
    again.load(onnx_bytes, digest=digest)
    assert again.builds == 0  # plan reused from the cache
    other_gpu = TensorRTBackend(trt, cuda, gpu_class="a10g", cache_dir=tmp_path)
    other_gpu.load(onnx_bytes, digest=digest)
    assert other_gpu.builds == 1
    trt.__version__ = "10.4.0"
    TensorRTBackend(trt, cuda, gpu_class="h100", cache_dir=tmp_path).load(onnx_bytes,
                                                                         digest=digest)
    assert len(list(tmp_path.glob("*.plan"))) == 3
    assert trt.fake_log["pushes"] == trt.fake_log["pops"] > 0
    assert cuda.fake_memory.blocks == {}  # every device buffer freed


def test_corrupt_plan_is_rebuilt_and_shapes_outside_the_profile_refused(fake_gpu,
                                                                          tmp_path) -> None:
    trt, cuda = fake_gpu
    onnx_bytes = tensor_model_bytes(np.eye(4))
    digest = sha256_hex(onnx_bytes)
    backend = TensorRTBackend(trt, cuda, gpu_class="h100", cache_dir=tmp_path, max_dim=8)
    backend.plan_path(digest).parent.mkdir(parents=True, exist_ok=True)
    backend.plan_path(digest).write_bytes(b"garbage")
    session = backend.load(onnx_bytes, digest=digest)
    assert backend.builds == 1
    with pytest.raises(InvalidArgument, match="outside the engine's profile"):
        session.run({"x": np.zeros((9, 4), np.float32)})
    with pytest.raises(InvalidArgument, match="cannot parse"):
        backend.load(b"not onnx", digest="0" * 64)


async def test_text_generation_on_tensorrt_matches_cpu(fake_gpu, tmp_path) -> None:
    trt, cuda = fake_gpu
    folder = MODELS_DIR / "kjv-textgen"
    onnx_bytes = (folder / "model.onnx").read_bytes()
    tok = load_tokenizer((folder / "tokenizer.json").read_bytes())
    record = registry_pb2.ModelRecord(
        model=presence_pb2.ModelKey(model_id="kjv-textgen", version="1.0"),
        capabilities=registry_pb2.Capabilities(task=registry_pb2.TASK_TEXT_GENERATION,
                                               max_input_length=128))
    texts = []
    for backend in (OnnxRuntimeBackend(), TensorRTBackend(trt, cuda, gpu_class="h100",
                                                          cache_dir=tmp_path)):
        model = LoadedModel(record=record, digest=sha256_hex(onnx_bytes),
                            session=backend.load(onnx_bytes, digest=sha256_hex(onnx_bytes)),
                            tokenizer=tok, size_bytes=len(onnx_bytes), engine=backend.name)
        engine = ExecutionEngine(ModelLoader(None, backend, budget_bytes=0))  # type: ignore[arg-type]
        req = infer_pb2.Infer.Request(model_id="kjv-textgen", input=infer_pb2.Input(
            text="and the lord said"), params=infer_pb2.GenerationParams(max_tokens=20, seed=9))
        texts.append("".join([p.text async for p in engine.stream(req, model=model)]))
    assert texts[0] == texts[1] and len(texts[0].split()) >= 3
    assert trt.fake_log["executions"] >= 3


def test_gpu_check_script_passes_on_the_fake(fake_gpu, tmp_path, monkeypatch, capsys) -> None:
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "tools" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    monkeypatch.setattr(sys, "argv", ["gpu_check", "--cache-dir", str(tmp_path), "--tokens",
                                      "6", "--models", "kjv-textgen,tiny-decoder"])
    assert gpu_check.main() == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["gpu_check"] == "ok" and result["gpu_class"] == "h100"
    assert result["kjv-textgen"]["match"] and result["kjv-textgen"]["rebuilt_from_cache"] == 0
    tiny = result["tiny-decoder"]
    assert tiny["match"] and tiny["rebuilt_from_cache"] == 0 and "-b4-l512-" in tiny["plan"]
    assert tiny["alone"]["tokens_match"] and tiny["batched"]["sequences"] == 2


def test_gpu_check_refuses_clearly_without_tensorrt(monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails as if not installed
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "tools" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    monkeypatch.setattr(sys, "argv", ["gpu_check"])
    assert gpu_check.main() == 2
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["gpu_check"] == "skipped"
    assert "TensorRT unavailable" in result["reason"] and "GPU machine" in result["needs"]
    assert "Needs a GPU machine" in (gpu_check.__doc__ or "")


def test_worker_engine_factory_picks_backend_and_budget(fake_gpu, tmp_path,
                                                        local_artifacts) -> None:
    engine, caps = create_worker_engine(local_artifacts, [], cache_dir=tmp_path,
                                        ram_budget_bytes=1 << 30)
    assert engine.loader.backend.name == "tensorrt" and caps.gpu_class == "h100"
    backend = engine.loader.backend
    assert isinstance(backend, TensorRTBackend)
    assert backend.max_batch == DEFAULT_MAX_BATCH  # the profile bound: the engine's default
    engine4, _ = create_worker_engine(local_artifacts, [], cache_dir=tmp_path,
                                      ram_budget_bytes=1 << 30, max_batch=4)
    assert getattr(engine4.loader.backend, "max_batch", None) == 4
    assert engine.loader.budget_bytes == int(80 * (1 << 30) * 0.8)
    cpu, _ = create_worker_engine(local_artifacts, [], cache_dir=tmp_path,
                                  ram_budget_bytes=1 << 30, prefer_cpu=True)
    assert cpu.loader.backend.name == "onnxruntime-cpu" and cpu.loader.budget_bytes == 1 << 30
