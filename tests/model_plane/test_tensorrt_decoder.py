"""The TensorRT backend on decoder-only LLMs, through the FAKE ``tensorrt``/``pycuda``.

``fake_tensorrt.py`` is a test double (TensorRT and a GPU are not available here): it checks
optimization profiles as TensorRT does and runs the graph with ONNX Runtime behind TensorRT's
API, with "device memory" it counts copies into and out of. So these tests show the real
backend code builds the decoder profile from the graph's inputs with the worker's bounds, keys
its plan cache on them, decodes the same greedy tokens as ONNX Runtime, and feeds a sequence's
KV cache back by device address (no host copies of it); they cannot show the memory is really
on a GPU or how fast it is (``tools/gpu_check.py`` does, on a GPU machine).
"""

from __future__ import annotations

import gc
import sys
from typing import Any

import numpy as np
import pytest
from fake_tensorrt import make_fake_modules

from tether.artifacts import sha256_hex
from tether.errors import InvalidArgument
from tools.gpu_check import decoder_model, greedy_tokens
from tools.tiny_decoder import write_model_folder
from worker.engine import OnnxRuntimeBackend
from worker.engine.backends import IOSpec
from worker.engine.decoder import batch_feeds
from worker.engine.tensorrt import DeviceTensor, TensorRTBackend, profile_shapes

HEADS, HEAD_DIM = 4, 8


@pytest.fixture
def fake_gpu(monkeypatch):
    trt, cuda = make_fake_modules()
    pycuda: Any = type(sys)("pycuda")
    pycuda.driver = cuda
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.driver", cuda)
    return trt, cuda


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = write_model_folder(tmp_path_factory.mktemp("trt") / "tiny", layers=2, heads=HEADS,
                                head_dim=HEAD_DIM)
    onnx_bytes = (folder / "model.onnx").read_bytes()
    return folder, onnx_bytes, sha256_hex(onnx_bytes)


def expected_profile(max_batch: int, max_length: int) -> dict:
    half = max_length // 2
    ids = ((1, 1), (1, 1), (max_batch, max_length))
    kv = ((1, HEADS, 0, HEAD_DIM), (1, HEADS, half, HEAD_DIM),
          (max_batch, HEADS, max_length - 1, HEAD_DIM))
    return {"input_ids": ids, "position_ids": ids,
            "attention_mask": ((1, 1), (1, half + 1), (max_batch, max_length)),
            **{f"past_key_values.{i}.{k}": kv for i in range(2) for k in ("key", "value")}}


def test_decoder_profile_bounds_come_from_the_graph_and_the_worker(fake_gpu, tiny,
                                                                   tmp_path) -> None:
    trt, cuda = fake_gpu
    folder, onnx_bytes, digest = tiny
    cpu = OnnxRuntimeBackend().load(onnx_bytes, digest=digest)
    assert profile_shapes(cpu.inputs, max_batch=4, max_length=64) == expected_profile(4, 64)
    backend = TensorRTBackend(trt, cuda, gpu_class="h100", cache_dir=tmp_path, max_batch=4,
                              max_length=64)
    session = backend.load(onnx_bytes, digest=digest)
    assert trt.fake_log["profiles"] == [expected_profile(4, 64)]  # what TensorRT was given
    assert trt.fake_log["flags"] == []  # TF32 off: fp32 products stay fp32, as in ONNX Runtime
    # Inside the bounds runs; a fifth sequence or a 65th token is refused before running.
    model = decoder_model(folder, cpu)
    greedy_tokens(session, model, [[5, 6, 7]] * 4, 2, batched=True)
    with pytest.raises(InvalidArgument, match="outside the engine's profile"):
        greedy_tokens(session, model, [[5]] * 5, 2, batched=True)
    with pytest.raises(InvalidArgument, match="outside the engine's profile"):
        greedy_tokens(session, model, [list(range(3, 68))], 1, batched=True)


def test_a_static_or_declared_input_keeps_its_shape() -> None:
    inputs = [IOSpec("x", 1, (-1, 4)), IOSpec("fixed", 1, (2, 3))]
    assert profile_shapes(inputs, max_dim=16) == {"x": ((1, 4), (8, 4), (16, 4))}
    declared = {"x": ((2, 4), (2, 4), (3, 4))}
    assert profile_shapes(inputs, declared=declared) == declared


def test_plan_cache_is_keyed_on_the_profile_bounds(fake_gpu, tiny, tmp_path) -> None:
    trt, cuda = fake_gpu
    _, onnx_bytes, digest = tiny

    def load(**bounds: Any) -> TensorRTBackend:
        backend = TensorRTBackend(trt, cuda, gpu_class="h100", cache_dir=tmp_path, **bounds)
        backend.load(onnx_bytes, digest=digest)
        return backend

    assert load(max_batch=4, max_length=64).builds == 1
    assert load(max_batch=4, max_length=64).builds == 0  # same bounds: the cached plan
    assert load(max_batch=8, max_length=64).builds == 1
    assert load(max_batch=4, max_length=128).builds == 1
    assert load(max_batch=4, max_length=64, fp16=True).builds == 1
    assert load(max_batch=4, max_length=64, tf32=True).builds == 1
    assert trt.fake_log["flags"] == ["tf32"]
    assert len(list(tmp_path.glob("*.plan"))) == 5
    names = sorted(p.name for p in tmp_path.glob("*.plan"))
    assert all(n.startswith(digest) and "-h100-trt10.3.0-b" in n for n in names)


def test_greedy_tokens_on_tensorrt_equal_onnxruntime_with_the_cache_on_the_device(
        fake_gpu, tiny, tmp_path) -> None:
    trt, cuda = fake_gpu
    folder, onnx_bytes, digest = tiny
    cpu = OnnxRuntimeBackend().load(onnx_bytes, digest=digest)
    gpu = TensorRTBackend(trt, cuda, gpu_class="h100", cache_dir=tmp_path, max_batch=4,
                          max_length=128).load(onnx_bytes, digest=digest)
    model = decoder_model(folder, cpu)
    prompts = [model.tokenizer.encode(t) for t in ("in the beginning", "and god said let")]
    tokens = 12
    alone_cpu, _ = greedy_tokens(cpu, model, prompts[:1], tokens, batched=False)
    trt.fake_log["htod_bytes"] = trt.fake_log["dtoh_bytes"] = 0
    alone_gpu, _ = greedy_tokens(gpu, model, prompts[:1], tokens, batched=False)
    assert alone_gpu == alone_cpu and len(alone_cpu[0]) == tokens
    # Alone, the KV cache never crosses to the host: only logits come back, and only ids,
    # mask and positions go in (the empty first cache has no bytes).
    vocab, n = 300, len(prompts[0])
    # The prefill returns the first token's logits, then one call per further token.
    assert trt.fake_log["dtoh_bytes"] == 4 * vocab * (n + tokens - 1)
    ids_positions_mask = 8 * 3 * n + sum(8 * (2 + n + k) for k in range(1, tokens))
    assert trt.fake_log["htod_bytes"] == ids_positions_mask
    seq_cache = [a for a in vars(gpu).values() if isinstance(a, DeviceTensor)]
    assert seq_cache == []  # the session keeps no cache of its own between steps

    batched_cpu, _ = greedy_tokens(cpu, model, prompts, tokens, batched=True)
    batched_gpu, _ = greedy_tokens(gpu, model, prompts, tokens, batched=True)
    assert batched_gpu == batched_cpu and batched_gpu[0] == alone_cpu[0]
    del batched_gpu
    gc.collect()
    assert cuda.fake_memory.blocks == {}  # every device tensor freed with its sequence


def test_device_tensor_reads_back_to_numpy(fake_gpu, tiny, tmp_path) -> None:
    trt, cuda = fake_gpu
    folder, onnx_bytes, digest = tiny
    cpu = OnnxRuntimeBackend().load(onnx_bytes, digest=digest)
    gpu = TensorRTBackend(trt, cuda, gpu_class="h100", cache_dir=tmp_path).load(
        onnx_bytes, digest=digest)
    model = decoder_model(folder, cpu)
    feeds = batch_feeds(model.layout, [[5, 6, 7]], [model.layout.empty_cache()], model.pad_id)
    a, b = cpu.run(feeds), gpu.run(feeds)
    present = b["present.0.key"]
    assert isinstance(present, DeviceTensor) and isinstance(b["logits"], np.ndarray)
    assert present.shape == (1, HEADS, 3, HEAD_DIM) and present.nbytes == a["present.0.key"].nbytes
    np.testing.assert_allclose(np.asarray(present), a["present.0.key"], rtol=1e-6)
    assert gpu.device_outputs == frozenset(model.layout.present_names)
