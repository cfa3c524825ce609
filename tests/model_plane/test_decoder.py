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
from model_plane_support import MODELS_DIR, REPO, CountingBackend
from tokenizers import Tokenizer

from registry.catalog import Catalog
from registry.publish import ModelPackage, publish_package
from tether.artifacts import ArtifactStore, LocalDirectoryStore
from tether.errors import FailedPrecondition, InvalidArgument
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
    eos = eos if isinstance(eos, list) else [eos]  # an int or a list, as in transformers
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
    env.publish(MODELS_DIR / "kjv-textgen")
    pieces, usage = await generate(env, request("kjv-textgen", "and god said", max_tokens=8,
                                                seed=1))
    assert usage.output_tokens == len(pieces) >= 1
    assert env.engine.decoder_of(await env.load("kjv-textgen")) is None


# ---------------------------------------------------------------------------- sampling


async def test_the_same_seed_gives_the_same_tokens(env: Env) -> None:
    runs = []
    for seed in (11, 11, 12):
        pieces, _ = await generate(env, request("dec-a", "The quick", max_tokens=20, seed=seed,
                                                temperature_value=1.0, min_tokens=20))
        runs.append("".join(pieces))
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


async def test_temperature_zero_is_greedy_and_unset_follows_generation_config(env: Env) -> None:
    tok = tokenizer(env, "dec-a")
    greedy = tok.decode(reference_greedy(env.tmp / "dec-a", tok.encode("The quick").ids, 16))
    # dec-a's generation_config.json has no do_sample: unset temperature is greedy too.
    for params in ({"temperature_value": 0.0, "seed": 5}, {}, {"temperature": 1e-6},
                   {"temperature_value": 1.0, "top_k": 1, "seed": 5},
                   {"temperature_value": 1.0, "top_p": 1e-6, "seed": 5}):
        pieces, _ = await generate(env, request("dec-a", "The quick", max_tokens=16, **params))
        assert "".join(pieces) == greedy, params
    # A sampling model's defaults sample; temperature_value 0 still decodes greedily.
    folder = write_model_folder(env.tmp / "dec-sampling", model_id="dec-sampling",
                                generation={"do_sample": True, "temperature": 1.5,
                                            "eos_token_id": 0})
    env.publish(folder)
    # The same graph bytes as dec-a, other generation defaults: loaded as a model of its own.
    assert (await env.load("dec-sampling")).session is not (await env.load("dec-a")).session
    want = tok.decode(reference_greedy(folder, tok.encode("The quick").ids, 16))
    sampled = {"".join((await generate(env, request("dec-sampling", "The quick", seed=s,
                                                    max_tokens=16)))[0]) for s in (1, 2, 3)}
    assert len(sampled) > 1 and want not in sampled
    pieces, _ = await generate(env, request("dec-sampling", "The quick", max_tokens=16,
                                            temperature_value=0.0))
    assert "".join(pieces) == want


def test_top_k_top_p_and_repetition_penalty() -> None:
    from worker.engine.sampling import sample

    logits = np.array([4.0, 3.9, 3.8, -1.0, 0.5])
    none = np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(0)
    picks = {sample(logits, rng, 1.0, 1.0, none, top_k=2) for _ in range(200)}
    assert picks == {0, 1}
    picks = {sample(logits, rng, 5.0, 0.3, none) for _ in range(200)}
    assert picks <= {0, 1} and len(picks) == 2  # nucleus of 0.3 at a high temperature
    # The penalty divides a seen positive logit and multiplies a seen negative one.
    assert sample(logits, rng, 0.0, 1.0, none) == 0
    assert sample(logits, rng, 0.0, 1.0, none, repetition_penalty=1.1, history=[0]) == 1
    assert sample(logits, rng, 0.0, 1.0, none, repetition_penalty=10.0, history=[0, 1, 2]) == 4
    assert sample(np.array([-1.0, -1.5]), rng, 0.0, 1.0, none, repetition_penalty=2.0,
                  history=[0]) == 1


def test_stop_filter_holds_back_a_possible_stop_string() -> None:
    from worker.engine.sampling import StopFilter

    f = StopFilter(["END", "\n\n"])
    out = [f.push(p) for p in ["hello E", "N", "x wor", "ld\n", "\nmore"]]
    assert out == ["hello ", "", "ENx wor", "ld", ""]
    assert f.stopped and f.flush() == ""
    g = StopFilter(["END"])
    assert g.push("abcE") == "abc" and g.flush() == "E"


async def test_stop_strings_end_generation(env: Env) -> None:
    full, _ = await generate(env, request("dec-a", "In the", max_tokens=24, temperature_value=0))
    text = "".join(full)
    stop = text[6:9]
    assert stop and text.find(stop) == 6
    pieces, usage = await generate(env, request("dec-a", "In the", max_tokens=24,
                                                temperature_value=0, stop=["zzzz", stop]))
    assert "".join(pieces) == text[:6]
    assert usage.output_tokens < 24


@pytest.mark.parametrize("params", [
    {"temperature_value": -0.5}, {"temperature_value": float("nan")},
    {"repetition_penalty": 0.0}, {"top_p": 1.5}, {"stop": [""]}, {"stop": ["x"] * 17},
    {"max_tokens": 10_000}, {"max_tokens": 4, "min_tokens": 5},
])
async def test_bad_generation_params_are_invalid_argument(env: Env, params) -> None:
    model = await env.load("dec-a")
    with pytest.raises(InvalidArgument):
        env.engine.stream(request("dec-a", "hello", **params), model=model)


# ----------------------------------------------------------------------- chat template


def test_chat_template_renders_like_transformers() -> None:
    from tools.tiny_decoder import CHAT_TEMPLATE
    from worker.engine.chat import render_chat

    text = render_chat(CHAT_TEMPLATE, [("system", "Be brief."), ("user", "Hi")],
                       bos_token="<s>", eos_token="</s>")
    assert text == ("<s><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi"
                    "<|im_end|>\n<|im_start|>assistant\n")
    assert not render_chat(CHAT_TEMPLATE, [("user", "Hi")],
                           add_generation_prompt=False).endswith("assistant\n")
    # trim_blocks / lstrip_blocks and tojson as transformers sets them up.
    template = "{% for m in messages %}\n  {{ m | tojson }}\n{% endfor %}"
    assert render_chat(template, [("user", "é")]) == '  {"role": "user", "content": "é"}\n'
    with pytest.raises(InvalidArgument, match="unknown role tool"):
        render_chat(CHAT_TEMPLATE, [("tool", "x")])
    with pytest.raises(FailedPrecondition):  # the sandbox: arguments are immutable
        render_chat("{{ messages.append(1) }}", [("user", "x")])
    with pytest.raises(FailedPrecondition):  # and no way out to Python internals
        render_chat("{{ ''.__class__.__mro__[1].__subclasses__() }}", [("user", "x")])
    with pytest.raises(FailedPrecondition):
        render_chat(None, [("user", "x")])
    with pytest.raises(InvalidArgument):
        render_chat(CHAT_TEMPLATE, [])


async def test_messages_are_rendered_with_the_model_template(env: Env) -> None:
    from tools.tiny_decoder import CHAT_TEMPLATE
    from worker.engine.chat import render_chat

    conversation = [("system", "Be brief."), ("user", "The quick brown fox")]
    tok = tokenizer(env, "dec-b")
    prompt = render_chat(CHAT_TEMPLATE, conversation, bos_token="<|endoftext|>")
    ids = tok.encode(prompt, add_special_tokens=False).ids
    assert ids[0] == tok.token_to_id("<|endoftext|>")  # the template wrote the special tokens
    want = reference_greedy(env.tmp / "dec-b", ids, 16)
    pieces, usage = await generate(env, request("dec-b", messages=conversation, max_tokens=16,
                                                temperature_value=0))
    assert usage.input_tokens == len(ids)
    assert "".join(pieces) == tok.decode(want)
    with pytest.raises(InvalidArgument):
        env.engine.stream(request("dec-b", messages=[("robot", "x")]),
                          model=await env.load("dec-b"))
    # The GRU model has no template: a conversation is refused up front.
    env.publish(MODELS_DIR / "kjv-textgen")
    with pytest.raises(InvalidArgument, match="chat template"):
        env.engine.stream(request("kjv-textgen", messages=[("user", "x")]),
                          model=await env.load("kjv-textgen"))


# -------------------------------------------------------------------------- publishing


async def test_an_optimum_export_folder_publishes_unchanged(env: Env, capsys) -> None:
    import importlib.util

    folder = write_model_folder(env.tmp / "Exported-Model", layers=2, heads=2, head_dim=8,
                                seed=9)
    (folder / "model.json").unlink()  # as optimum-cli writes it: no Tether manifest
    spec = importlib.util.spec_from_file_location("publish_model",
                                                  REPO / "tools" / "publish_model.py")
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    replicas = [str(env.tmp / f"r{i}") for i in range(3)]
    args = [str(folder), "--db", f"sqlite:///{env.tmp / 'meta.db'}",
            "--key", str(env.tmp / "publisher.key"), "--model-id", "exported-model"]
    env.kp.save(env.tmp / "publisher.key")  # the key the env trusts
    for r in replicas:
        args += ["--replica", r]
    assert tool.main(args) == 0, capsys.readouterr().err
    record = json.loads(capsys.readouterr().out)
    roles = {a["role"]: a for a in record["artifacts"]}
    assert set(roles) == {"model", "tokenizer", "config", "generation_config",
                          "tokenizer_config"}
    assert record["capabilities"]["task"] == "TASK_TEXT_GENERATION"
    stored = env.catalog.resolve("exported-model")
    for ref in stored.artifacts:  # every file byte for byte
        name = {"model": "model.onnx", "tokenizer": "tokenizer.json"}.get(
            ref.role, ref.role + ".json")
        assert env.artifacts.fetch(ref.digest).data == (folder / name).read_bytes()
    tok = tokenizer(env, "Exported-Model")
    want = reference_greedy(folder, tok.encode("The quick").ids, 12)
    pieces, _ = await generate(env, request("exported-model", "The quick", max_tokens=12,
                                            temperature_value=0))
    assert "".join(pieces) == tok.decode(want)
