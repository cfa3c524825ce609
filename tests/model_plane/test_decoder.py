"""Decoder-only language models in the Hugging Face Optimum ONNX layout on the worker engine.

Generality: tiny random-weight decoders (``tools/tiny_decoder.py``) of different layer and head
counts (one with grouped-query attention), with and without ``position_ids``, with fp32 and
fp16 KV caches, are published like any model folder and run by the unchanged engine; its greedy
tokens equal those of a plain ONNX Runtime loop over the same graph, written here independently
of the engine. Also: sampling (seed, temperature 0, top-k, top-p, repetition penalty, stop
strings) and chat templates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnxruntime as ort
import pytest
import trio
from model_plane_support import MODELS_DIR, REPO, CountingBackend
from tokenizers import Tokenizer

from registry.catalog import Catalog
from registry.publish import ModelPackage, publish_package
from tether.artifacts import ArtifactStore, LocalDirectoryStore
from tether.errors import Cancelled, FailedPrecondition, InvalidArgument, ResourceExhausted
from tether.keys import KeyPair
from tether.metadata import MetadataStore
from tether.v1 import infer_pb2
from tools.tiny_decoder import write_model_folder
from worker.engine import CancelFlag, ExecutionEngine, OnnxRuntimeBackend
from worker.engine.decoder import decoder_layout
from worker.loader import LoadedModel, ModelLoader

# (model id, layers, heads, head_dim, position_ids, kv dtype)
SHAPES = [
    ("dec-a", 2, 4, 8, True, "float32"),
    ("dec-b", 3, 2, 16, False, "float16"),
    ("dec-c", 1, 1, 8, True, "float16"),
    ("dec-d", 4, 3, 4, False, "float32"),
]
# Grouped-query attention: query heads sharing fewer KV heads.
KV_HEADS = {"dec-d": 1}
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
                                     kv_dtype=kv, seed=i, kv_heads=KV_HEADS.get(model_id)))
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
    assert (layout.layers, layout.kv_heads, layout.head_dim) == (
        layers, KV_HEADS.get(model_id, heads), head_dim)
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
    session: Any = model.session  # the backend's session counts its runs
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
    # No template: the client's error (it chose the model), never dead-lettered.
    with pytest.raises(InvalidArgument, match="no chat template"):
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


# ------------------------------------------------------------------ continuous batching


async def run_concurrently(engine: ExecutionEngine, jobs) -> list[list[str]]:
    """Each (request, model) streamed by its own task, all at once; pieces per job."""
    results: list[list[str]] = [[] for _ in jobs]

    async def one(i: int, req, model) -> None:
        async for p in engine.stream(req, model=model):
            results[i].append(p.text)

    async with trio.open_nursery() as nursery:
        for i, (req, model) in enumerate(jobs):
            nursery.start_soon(one, i, req, model)
    return results


def batch_engine(env: Env, **kwargs) -> ExecutionEngine:
    """An engine whose steps all run in worker threads: while one runs, the other streams'
    tasks get their turns and join the batch. (Steps run inline on the event loop let others
    in every YIELD_EVERY_S; these tiny models would finish first.)"""
    kwargs.setdefault("inline_step_s", 0.0)
    return ExecutionEngine(env.loader, **kwargs)


@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
async def test_a_batch_generates_what_each_sequence_would_alone(env: Env, shape) -> None:
    model_id = shape[0]
    engine = batch_engine(env)
    model = await env.load(model_id)
    tok = tokenizer(env, model_id)
    prompts = [*PROMPTS, "Tokens stream one at a time, and every", "A"]
    before = cast(Any, model.session).calls
    results = await run_concurrently(engine, [
        (request(model_id, p, max_tokens=20, temperature_value=0), model) for p in prompts])
    batcher = engine.batcher_of(model)
    assert batcher.largest_batch >= 3  # really batched...
    solo_calls = 0
    for prompt, pieces in zip(prompts, results, strict=True):
        want = reference_greedy(env.tmp / model_id, tok.encode(prompt).ids, 20)
        assert "".join(pieces) == tok.decode(want), prompt  # ...and exactly the same tokens
        solo_calls += len(want) + (len(want) < 20)
    assert cast(Any, model.session).calls - before < solo_calls
    assert engine.capacity.sequences == 0 and engine.capacity.kv_used_bytes == 0


def record_calls(session: Any) -> list[tuple[int, int]]:
    """Wrap ``session.run`` (undone with ``del session.run``) to record each call's
    input_ids shape: (rows, new tokens per row)."""
    shapes: list[tuple[int, int]] = []
    real_run = session.run

    def run(feeds):
        shapes.append(tuple(feeds["input_ids"].shape))
        return real_run(feeds)

    session.run = run
    return shapes


@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
async def test_prompts_of_different_lengths_are_prefilled_in_one_call(env: Env, shape) -> None:
    """The requests that arrive while a step runs join at the next one: all their prompts
    (left-padded, masked) in one call, each row's tokens exactly those it would get alone."""
    model_id = shape[0]
    engine = batch_engine(env)
    model = await env.load(model_id)
    tok = tokenizer(env, model_id)
    prompts = [*PROMPTS, "Once upon", "Tokens stream one at a time, and every one of them"]
    lengths = [len(tok.encode(p).ids) for p in prompts]
    assert min(lengths) > 1 and len(set(lengths)) >= 3  # prompts, of different lengths
    shapes = record_calls(model.session)
    try:
        # The first request leads a step alone; the others arrive while it runs.
        results = await run_concurrently(engine, [
            (request(model_id, p, max_tokens=12, temperature_value=0), model)
            for p in prompts])
    finally:
        del cast(Any, model.session).run
    # Whichever task trio runs first leads a step alone; the others' prompts are one call.
    prefills = [s for s in shapes if s[1] > 1]
    assert [rows for rows, _ in prefills] == [1, len(prompts) - 1]
    leader = lengths.index(prefills[0][1])
    assert prefills[1][1] == max(n for i, n in enumerate(lengths) if i != leader)
    for prompt, pieces in zip(prompts, results, strict=True):
        want = reference_greedy(env.tmp / model_id, tok.encode(prompt).ids, 12)
        assert "".join(pieces) == tok.decode(want), prompt
    assert engine.capacity.sequences == 0 and engine.capacity.kv_used_bytes == 0


@pytest.mark.parametrize("model_id", ["dec-a", "dec-b"])
async def test_requests_joining_during_decoding_are_prefilled_together(env: Env,
                                                                       model_id: str) -> None:
    """Two requests arrive while a sequence is decoding: their prompts are one call in a step
    that also decodes the running sequence, and every sequence gets its tokens alone."""
    engine = batch_engine(env)
    model = await env.load(model_id)
    tok = tokenizer(env, model_id)
    results: dict[str, str] = {}
    shapes = record_calls(model.session)

    async def one(prompt: str, started: trio.Event | None = None) -> None:
        pieces = []
        async for p in engine.stream(request(model_id, prompt, max_tokens=16,
                                             temperature_value=0), model=model):
            pieces.append(p.text)
            if started is not None and len(pieces) == 3:
                started.set()
        if started is not None:
            started.set()  # ended early: let the others come anyway
        results[prompt] = "".join(pieces)

    try:
        async with trio.open_nursery() as nursery:
            first = trio.Event()
            nursery.start_soon(one, PROMPTS[0], first)
            await first.wait()  # the first sequence is decoding...
            for p in PROMPTS[1:]:  # ...when two more arrive at once
                nursery.start_soon(one, p)
    finally:
        del cast(Any, model.session).run
    lengths = [len(tok.encode(p).ids) for p in PROMPTS]
    joined = shapes.index((2, max(lengths[1:])))  # both prompts in one call...
    assert shapes[joined - 1] == (1, 1)  # ...right after the running sequence's decode
    assert engine.batcher_of(model).largest_batch >= 2
    for prompt in PROMPTS:
        want = reference_greedy(env.tmp / model_id, tok.encode(prompt).ids, 16)
        assert results[prompt] == tok.decode(want), prompt


async def test_sixteen_concurrent_requests_all_get_a_seat_by_default(env: Env) -> None:
    """The default max_batch seats a burst of 16 at once (no request waits for another to
    finish before its first token), each reserving its KV cache, all given back at the end."""
    engine = batch_engine(env)
    model = await env.load("dec-c")
    batcher = engine.batcher_of(model)
    tok = tokenizer(env, "dec-c")
    prompts = [f"{PROMPTS[i % 3]} {i}" for i in range(16)]
    reqs = [request("dec-c", p, max_tokens=8, min_tokens=8, temperature_value=0)
            for p in prompts]
    layout = decoder_layout(model.session)
    per_token = 2 * layout.layers * layout.kv_heads * layout.head_dim * layout.kv_dtype.itemsize
    reserved = sum(per_token * (len(tok.encode(p).ids) + 8) for p in prompts)
    held: list[int] = []
    shapes = record_calls(model.session)

    async def one(i: int) -> None:
        async for _ in engine.stream(reqs[i], model=model):
            held.append(engine.capacity.kv_used_bytes)

    try:
        async with trio.open_nursery() as nursery:
            for i in range(16):
                nursery.start_soon(one, i)
    finally:
        del cast(Any, model.session).run
    assert batcher.largest_batch == 16 and not batcher.waiting
    assert len([s for s in shapes if s[1] > 1]) == 2  # the leader's prompt, then the others'
    assert max(held) == reserved  # every sequence's whole cache, reserved once
    assert engine.capacity.sequences == 0 and engine.capacity.kv_used_bytes == 0


async def test_seeded_sampling_in_a_batch_equals_sampling_alone(env: Env) -> None:
    engine = batch_engine(env)
    model = await env.load("dec-a")
    reqs = [request("dec-a", p, max_tokens=16, min_tokens=16, temperature_value=1.0,
                    top_k=50, top_p=0.9, repetition_penalty=1.2, seed=100 + i)
            for i, p in enumerate(PROMPTS)]
    from tests.services.harness import metrics_reader, points

    reader = metrics_reader()

    def batches_of(size: int) -> int:  # steps that advanced ``size`` sequences
        [hist] = points(reader, "tether.worker.batch.size") or [None]
        if hist is None:
            return 0
        bounds = list(hist.explicit_bounds)
        return int(hist.bucket_counts[next(i for i, b in enumerate(bounds) if size <= b)])

    alone = [(await run_concurrently(engine, [(r, model)]))[0] for r in reqs]
    before = batches_of(len(reqs))
    together = await run_concurrently(engine, [(r, model) for r in reqs])
    assert together == alone
    assert engine.batcher_of(model).largest_batch == len(reqs)
    assert batches_of(len(reqs)) > before  # the batch size metric saw the full batch


async def test_new_requests_join_between_steps_and_the_batch_is_bounded(env: Env) -> None:
    engine = batch_engine(env, max_batch=2)
    model = await env.load("dec-d")
    batcher = engine.batcher_of(model)
    tok = tokenizer(env, "dec-d")
    sizes: list[int] = []
    results: dict[str, str] = {}

    async def one(prompt: str, started: trio.Event | None = None) -> None:
        pieces = []
        async for p in engine.stream(request("dec-d", prompt, max_tokens=16, min_tokens=16,
                                             temperature_value=0), model=model):
            pieces.append(p.text)
            sizes.append(len(batcher.active))
            if started is not None and len(pieces) == 3:
                started.set()
        results[prompt] = "".join(pieces)

    async with trio.open_nursery() as nursery:
        first = trio.Event()
        nursery.start_soon(one, PROMPTS[0], first)
        await first.wait()  # the first sequence is generating...
        for p in PROMPTS[1:]:  # ...when two more arrive: one joins, one waits for room
            nursery.start_soon(one, p)
    assert max(sizes) == 2 and batcher.largest_batch == 2
    for prompt in PROMPTS:
        want = reference_greedy(env.tmp / "dec-d", tok.encode(prompt).ids, 16)
        if len(want) == 16:  # min_tokens bans eos in the engine only; compare where it held
            assert results[prompt] == tok.decode(want)


async def test_a_cancelled_sequence_leaves_at_once(env: Env) -> None:
    engine = batch_engine(env)
    model = await env.load("dec-a")
    batcher = engine.batcher_of(model)
    tok = tokenizer(env, "dec-a")
    flag = CancelFlag()
    kept: list[str] = []

    async def cancelled_one() -> None:
        n = 0
        with pytest.raises(Cancelled):
            async for _ in engine.stream(request("dec-a", PROMPTS[1], max_tokens=30,
                                                 min_tokens=30, temperature_value=0),
                                         model=model, cancel=flag):
                n += 1
                if n == 2:
                    flag.cancel()
        assert len(batcher.active) <= 1 and engine.capacity.sequences <= 1

    async def kept_one() -> None:
        async for p in engine.stream(request("dec-a", PROMPTS[0], max_tokens=30,
                                             temperature_value=0), model=model):
            kept.append(p.text)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(kept_one)
        nursery.start_soon(cancelled_one)
    want = reference_greedy(env.tmp / "dec-a", tok.encode(PROMPTS[0]).ids, 30)
    assert "".join(kept) == tok.decode(want)
    assert batcher.active == [] and engine.capacity.sequences == 0


async def test_a_slow_consumer_does_not_stall_the_batch(env: Env) -> None:
    engine = batch_engine(env)
    model = await env.load("dec-c")
    batcher = engine.batcher_of(model)
    slow_req = request("dec-c", PROMPTS[0], max_tokens=20, min_tokens=20, temperature_value=0)
    fast_req = request("dec-c", PROMPTS[1], max_tokens=20, min_tokens=20, temperature_value=0)
    slow_alone = "".join((await run_concurrently(batch_engine(env), [(slow_req, model)]))[0])
    fast_alone = "".join((await run_concurrently(batch_engine(env), [(fast_req, model)]))[0])
    slow = engine.stream(slow_req, model=model)
    first = (await slow.__anext__()).text  # ...then its consumer stops reading for a while
    fast = [p.text async for p in engine.stream(fast_req, model=model)]
    assert "".join(fast) == fast_alone
    # The fast stream's 20 steps carried the slow sequence along: it is finished, out of the
    # batch, its KV budget given back, its text waiting for its consumer.
    assert batcher.active == [] and engine.capacity.sequences == 0
    rest = [p.text async for p in slow]
    assert first + "".join(rest) == slow_alone and slow.usage.output_tokens == 20
    assert batcher.largest_batch == 2


async def test_the_kv_budget_bounds_the_batch_and_big_requests_are_refused(env: Env) -> None:
    model = await env.load("dec-a")
    layout = decoder_layout(model.session)
    per_token = 2 * layout.layers * layout.kv_heads * layout.head_dim * 4
    tok = tokenizer(env, "dec-a")
    # Room for one sequence of (prompt + 16) tokens, not two.
    budget = per_token * (max(len(tok.encode(p).ids) for p in PROMPTS) + 16)
    engine = batch_engine(env, kv_budget_bytes=budget)
    results = await run_concurrently(engine, [
        (request("dec-a", p, max_tokens=16, temperature_value=0), model) for p in PROMPTS])
    assert engine.batcher_of(model).largest_batch == 1
    for prompt, pieces in zip(PROMPTS, results, strict=True):
        want = reference_greedy(env.tmp / "dec-a", tok.encode(prompt).ids, 16)
        assert "".join(pieces) == tok.decode(want)
    with pytest.raises(ResourceExhausted):
        engine.stream(request("dec-a", "The quick", max_tokens=200), model=model)


async def test_a_waiting_request_is_cancelled_promptly(env: Env) -> None:
    model = await env.load("dec-a")
    layout = decoder_layout(model.session)
    per_token = 2 * layout.layers * layout.kv_heads * layout.head_dim * 4
    engine = batch_engine(env, kv_budget_bytes=per_token * 40)
    batcher = engine.batcher_of(model)
    holder = engine.stream(request("dec-a", "The quick", max_tokens=30, min_tokens=30,
                                   temperature_value=0), model=model)
    await holder.__anext__()  # holds the whole budget
    other = request("dec-a", "A", max_tokens=30, temperature_value=0)
    with trio.CancelScope() as scope:  # as a request deadline would
        async with trio.open_nursery() as nursery:

            async def wait_for_room() -> None:
                async for _ in engine.stream(other, model=model):
                    raise AssertionError("no room: it must not run")

            nursery.start_soon(wait_for_room)
            for _ in range(1000):  # until it waits for room
                await trio.lowlevel.checkpoint()
                if batcher.waiting:
                    break
            assert batcher.waiting
            scope.cancel()
    assert scope.cancelled_caught and batcher.waiting == []
    assert len([p async for p in holder]) >= 1 and engine.capacity.sequences == 0


async def test_the_gru_model_batches_too(env: Env) -> None:
    env.publish(MODELS_DIR / "kjv-textgen")
    model = await env.load("kjv-textgen")
    engine = batch_engine(env)
    prompts = ["and god said", "in the beginning", "the lord is my shepherd", "and he"]
    reqs = [request("kjv-textgen", p, max_tokens=24, seed=7 + i, temperature=0.8)
            for i, p in enumerate(prompts)]
    alone = [(await run_concurrently(engine, [(r, model)]))[0] for r in reqs]
    together = await run_concurrently(engine, [(r, model) for r in reqs])
    assert engine.batcher_of(model).largest_batch >= 2
    assert "gru-batched-step" in model.sessions
    # The batched step graph runs the same GRU with the same weights: the same tokens.
    assert together == alone


async def test_the_heartbeat_reports_batch_capacity_in_sequences(env: Env) -> None:
    from worker.engine.runtime import WorkerEngine
    from worker.service import WorkerConfig, WorkerService

    engine = batch_engine(env, max_batch=4, kv_budget_bytes=1 << 20)
    worker = WorkerEngine(env.loader, [env.catalog.resolve("dec-a")], engine=engine)
    service = WorkerService(WorkerConfig(worker_id="w1", region="r", slots=4), worker, env.kp)
    cap = service.health_report().capacity
    assert (cap.max_batch_size, cap.active_sequences, cap.kv_cache_budget_bytes,
            cap.kv_cache_used_bytes) == (4, 0, 1 << 20, 0)
    stream = worker.stream(request("dec-a", "The quick", max_tokens=20, min_tokens=20,
                                   temperature_value=0))
    await stream.__anext__()
    cap = service.presence().capacity  # what the signed heartbeat carries
    assert cap.active_sequences == 1 and 0 < cap.kv_cache_used_bytes <= 1 << 20
    await stream.aclose()
    assert service.health_report().capacity.active_sequences == 0


async def test_a_failed_step_fails_every_sequence_in_it(env: Env) -> None:
    engine = batch_engine(env)
    model = await env.load("dec-b")
    session = model.session
    results: list[BaseException | None] = [None, None]
    real_run = session.run
    calls = 0

    def run(feeds):
        nonlocal calls
        calls += 1
        if feeds["input_ids"].shape[0] > 1:  # the first batched step
            raise RuntimeError("runtime failure")
        return real_run(feeds)

    async def one(i: int, prompt: str) -> None:
        try:
            async for _ in engine.stream(request("dec-b", prompt, max_tokens=20, min_tokens=20,
                                                 temperature_value=0), model=model):
                pass
        except RuntimeError as exc:
            results[i] = exc

    session.run = run  # type: ignore[method-assign]
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, 0, PROMPTS[0])
            nursery.start_soon(one, 1, PROMPTS[1])
    finally:
        del session.run
    assert all(isinstance(r, RuntimeError) for r in results)
    assert engine.batcher_of(model).active == [] and engine.capacity.sequences == 0


def test_text_streams_piece_by_piece_without_broken_characters(env: Env) -> None:
    from worker.engine.tokenizers import HFTokenizer

    tok = HFTokenizer((env.tmp / "dec-a" / "tokenizer.json").read_text())
    text = " zwölf Boxkämpfer — 日本語 und 🙂 over the lazy dog, " * 4
    ids = tok.encode(text)
    prompt = tok.encode("In the beginning")
    stream = tok.stream(prompt)
    pieces = [stream.push(i) for i in ids]
    pieces.append(stream.flush())
    assert "".join(pieces) == text == tok.decode(ids)
    assert not any("\ufffd" in p for p in pieces)
    assert sum(1 for p in pieces if p == "") > 3  # multi-byte characters were held back


class StubSession:
    """Test double: a session that only declares inputs and outputs (never run)."""

    def __init__(self, inputs, outputs) -> None:
        from worker.engine.backends import IOSpec

        self.inputs = [IOSpec(n, d, s) for n, d, s in inputs]
        self.outputs = [IOSpec(n, d, s) for n, d, s in outputs]

    def run(self, feeds):
        raise AssertionError("a StubSession only declares its inputs and outputs")


def stub_decoder(layers: int, shape, *, extra=(), dtype=1, present=True) -> StubSession:
    ins = [("input_ids", 7, (-1, -1)), *extra]
    outs = [("logits", 1, (-1, -1, 50))]
    for i in range(layers):
        for kind in ("key", "value"):
            ins.append((f"past_key_values.{i}.{kind}", dtype, shape))
            if present:
                outs.append((f"present.{i}.{kind}", dtype, shape))
    return StubSession(ins, outs)


def test_layout_edge_cases() -> None:
    from worker.engine.decoder import batch_feeds

    # Heads and head size left symbolic by the export: config.json says (grouped-query KV).
    layout = decoder_layout(stub_decoder(2, (-1, -1, -1, -1)),
                            {"num_attention_heads": 8, "num_key_value_heads": 2,
                             "hidden_size": 64})
    assert (layout.layers, layout.kv_heads, layout.head_dim) == (2, 2, 8)
    with pytest.raises(FailedPrecondition):
        decoder_layout(stub_decoder(2, (-1, -1, -1, -1)), {})
    with pytest.raises(FailedPrecondition):  # past without present
        decoder_layout(stub_decoder(1, (-1, 2, -1, 4), present=False))
    with pytest.raises(FailedPrecondition):
        decoder_layout(StubSession([("input_ids", 7, (-1, -1))], [("logits", 1, (-1, 5))]))
    # A merged decoder (use_cache_branch) is told whether the cache is used.
    merged = decoder_layout(stub_decoder(1, (-1, 2, -1, 4), extra=[
        ("attention_mask", 7, (-1, -1)), ("use_cache_branch", 9, (1,))]))
    assert merged.use_cache_branch and not merged.position_ids
    first = batch_feeds(merged, [[5, 6]], [merged.empty_cache()], 0)
    assert first["use_cache_branch"].tolist() == [False]
    later = batch_feeds(merged, [[7]], [[np.zeros((1, 2, 2, 4), np.float32)] * 2], 0)
    assert later["use_cache_branch"].tolist() == [True]
    # Two sequences at different positions, left-padded and masked.
    pos = decoder_layout(stub_decoder(1, (-1, 2, -1, 4), extra=[
        ("attention_mask", 7, (-1, -1)), ("position_ids", 7, (-1, -1))]))
    feeds = batch_feeds(pos, [[9], [8]], [[np.ones((1, 2, 3, 4), np.float32)] * 2,
                                          [np.ones((1, 2, 1, 4), np.float32)] * 2], 0)
    assert feeds["attention_mask"].tolist() == [[1, 1, 1, 1], [0, 0, 1, 1]]
    assert feeds["position_ids"].tolist() == [[3], [1]]
    assert feeds["past_key_values.0.key"][1, :, :2].sum() == 0


def test_generation_files_are_read_as_transformers_writes_them(env: Env) -> None:
    from worker.engine.decoder import DecoderModel
    from worker.engine.tokenizers import HFTokenizer

    folder = env.tmp / "dec-a"
    tok = HFTokenizer((folder / "tokenizer.json").read_text())
    session = stub_decoder(1, (-1, 2, -1, 4))
    files = {"tokenizer_config": json.dumps({
        "eos_token": {"content": "<|im_end|>", "special": True}, "bos_token": None,
        "chat_template": [{"name": "default", "template": "{{ messages[0]['content'] }}"},
                          {"name": "tool_use", "template": "x"}]}).encode()}
    d = DecoderModel.from_files(session, tok, files)
    assert d.eos_ids == {tok.token_to_id("<|im_end|>")}  # no generation_config: the token
    assert d.chat_template == "{{ messages[0]['content'] }}" and d.bos_token == ""
    assert d.sampling_defaults() == {"temperature": 0.0, "repetition_penalty": 1.0}
    files["generation_config"] = json.dumps({"do_sample": True, "temperature": 0.6,
                                             "top_p": 0.9, "eos_token_id": 3}).encode()
    d = DecoderModel.from_files(session, tok, files)
    assert d.eos_ids == {3} and d.sampling_defaults()["temperature"] == 0.6
    with pytest.raises(InvalidArgument):
        DecoderModel.from_files(session, tok, {"config": b"not json"})
