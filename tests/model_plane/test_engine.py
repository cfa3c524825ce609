"""The worker's execution engine on ONNX Runtime (CPU) with the shipped models: text streams
token by token, embeddings match sentence-transformers, tensor models check their inputs,
cancellation is prompt, and bad input is refused with INVALID_ARGUMENT."""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass

import numpy as np
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from model_plane_support import MODELS_DIR, CountingBackend, tensor_model_bytes

from registry.catalog import Catalog
from registry.publish import ModelPackage, publish_package
from tether import limits
from tether.artifacts import ArtifactStore, LocalDirectoryStore, sha256_hex
from tether.errors import Cancelled, InvalidArgument, NotFound
from tether.keys import KeyPair
from tether.metadata import MetadataStore
from tether.rpc import ServerContext
from tether.v1 import infer_pb2, tensor_pb2
from worker.engine import CancelFlag, ExecutionEngine, OnnxRuntimeBackend
from worker.engine.backends import IOSpec
from worker.engine.engine import tensors_to_feeds
from worker.engine.lora import read_adapter, write_adapter
from worker.engine.runtime import WorkerEngine
from worker.engine.tokenizers import load_tokenizer
from worker.loader import ModelLoader
from worker.service import WorkerConfig, WorkerService

REF = json.loads((MODELS_DIR / "all-minilm-l6-v2" / "reference_embeddings.json").read_text())
TEXTGEN = "kjv-textgen"
MINILM = "all-minilm-l6-v2"


@dataclass
class Env:
    catalog: Catalog
    artifacts: ArtifactStore
    backend: CountingBackend
    loader: ModelLoader
    engine: ExecutionEngine


@pytest.fixture(scope="module")
def env(tmp_path_factory, minilm_dir) -> Env:
    tmp = tmp_path_factory.mktemp("engine")
    kp = KeyPair.from_seed(b"\x05" * 32)
    store = MetadataStore.sqlite(tmp / "meta.db")
    store.migrate()
    artifacts = ArtifactStore([LocalDirectoryStore(tmp / f"r{i}", f"r{i}") for i in range(3)],
                              trusted_keys={kp.public_key})
    catalog = Catalog(store)
    publish_package(ModelPackage.load(MODELS_DIR / TEXTGEN), catalog, artifacts, kp)
    publish_package(ModelPackage.load(MODELS_DIR / MINILM), catalog, artifacts, kp)
    tensor_dir = tmp / "tensor-model"
    tensor_dir.mkdir()
    (tensor_dir / "model.onnx").write_bytes(tensor_model_bytes(np.eye(4) * 2))
    (tensor_dir / "model.json").write_text(json.dumps({
        "model_id": "doubler", "version": "1.0", "task": "tensor", "max_input_length": 64,
        "files": {"model": "model.onnx"},
        "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, 4]}]}))
    publish_package(ModelPackage.load(tensor_dir), catalog, artifacts, kp)
    backend = CountingBackend(OnnxRuntimeBackend(intra_op_threads=1))
    loader = ModelLoader(artifacts, backend, budget_bytes=1 << 30)
    return Env(catalog, artifacts, backend, loader, ExecutionEngine(loader))


def text_request(prompt: str, **params) -> infer_pb2.Infer.Request:
    return infer_pb2.Infer.Request(tenant_id="acme", model_id=TEXTGEN, correlation_id="c1",
                                   input=infer_pb2.Input(text=prompt),
                                   params=infer_pb2.GenerationParams(**params))


async def load(env: Env, model_id: str):
    return await env.loader.load(env.catalog.resolve(model_id))


async def collect(env: Env, request, model_id: str, cancel=None):
    model = await load(env, model_id)
    stream = env.engine.stream(request, model=model, cancel=cancel)
    return [p async for p in stream], stream.usage


async def test_text_generation_streams_words_one_step_at_a_time(env: Env) -> None:
    model = await load(env, TEXTGEN)
    session = model.session
    stream = env.engine.stream(text_request("And God said", max_tokens=40, seed=7), model=model)
    calls_at_payload = []
    pieces = []
    before = session.calls
    async for p in stream:
        calls_at_payload.append(session.calls - before)
        pieces.append(p.text)
    # Prompt in one call, then one call per token: payload n arrives after n + 1 calls.
    assert calls_at_payload == list(range(1, len(pieces) + 1))
    assert stream.usage.output_tokens == len(pieces) >= 5
    assert stream.usage.input_tokens == 3
    text = "".join(pieces)
    words = text.replace(",", " ").replace(".", " ").replace(":", " ").replace(";", " ").split()
    assert all(w.isalpha() or "'" in w or w in "?!" for w in words), text
    # Recognizably English: common function words of the corpus appear.
    again, _ = await collect(env, text_request("And God said", max_tokens=40, seed=7), TEXTGEN)
    assert "".join(p.text for p in again) == text  # seeded: deterministic
    long, _ = await collect(env, text_request("the lord spake unto moses", max_tokens=200,
                                              seed=3, temperature=0.7), TEXTGEN)
    vocab = set("".join(p.text for p in long).split())
    assert {"the", "and", "of"} & vocab, vocab


async def test_min_tokens_holds_the_end_of_text_back(env: Env) -> None:
    # Verses are short: sampled freely, most of these end before 60 tokens...
    ended = []
    for seed in range(1, 6):
        items, usage = await collect(
            env, text_request("and he said", max_tokens=60, seed=seed), TEXTGEN)
        ended.append(usage.output_tokens < 60)
        # ...and with min_tokens each one is exactly as long as asked.
        items, usage = await collect(
            env, text_request("and he said", max_tokens=60, min_tokens=60, seed=seed), TEXTGEN)
        assert usage.output_tokens == len(items) == 60
        assert all(not p.text.strip().startswith("<") for p in items)  # no special tokens
    assert any(ended)


async def test_generation_stops_promptly_on_cancel_flag_and_trio_cancel(env: Env) -> None:
    model = await load(env, TEXTGEN)
    flag = CancelFlag()
    before = model.session.calls
    got = []
    with pytest.raises(Cancelled):
        async for p in env.engine.stream(text_request("in the beginning", max_tokens=200,
                                                      seed=1), model=model, cancel=flag):
            got.append(p)
            if len(got) == 3:
                flag.cancel()
    assert len(got) == 3 and model.session.calls - before == 3

    before = model.session.calls
    with trio.CancelScope() as scope:
        async for _ in env.engine.stream(text_request("in the beginning", max_tokens=200,
                                                      seed=1), model=model):
            scope.cancel()
    assert scope.cancelled_caught and model.session.calls - before == 1


@pytest.mark.parametrize(
    ("request_", "words"),
    [
        (infer_pb2.Infer.Request(model_id=TEXTGEN, input=infer_pb2.Input(
            texts=tensor_pb2.TextBatch(texts=["x"]))), "send input.text"),
        (text_request("word " * 129), "at most 128"),
        (text_request("hi", max_tokens=100_000), "over the limit"),
        (text_request("hi", temperature=-1.0), "temperature"),
        (text_request("hi", top_p=1.5), "top_p"),
        (text_request("hi", max_tokens=8, min_tokens=9), "min_tokens 9 is over max_tokens 8"),
    ],
)
async def test_bad_text_requests_are_refused(env: Env, request_, words) -> None:
    model = await load(env, TEXTGEN)
    with pytest.raises(InvalidArgument, match=words):
        env.engine.stream(request_, model=model)


def embed_request(texts) -> infer_pb2.Infer.Request:
    return infer_pb2.Infer.Request(model_id=MINILM, input=infer_pb2.Input(
        texts=tensor_pb2.TextBatch(texts=texts)))


async def test_embeddings_match_sentence_transformers(env: Env) -> None:
    payloads, usage = await collect(env, embed_request(REF["sentences"]), MINILM)
    assert [p.embedding.index for p in payloads] == list(range(len(REF["sentences"])))
    got = np.asarray([p.embedding.values for p in payloads])
    want = np.asarray(REF["embeddings"])
    assert got.shape == (5, 384)
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert usage.input_tokens == sum(len(ids) for ids in REF["input_ids"])
    tok = (await load(env, MINILM)).tokenizer
    assert [tok.encode(s) for s in REF["sentences"]] == REF["input_ids"]


async def test_embedding_streams_in_batches_and_refuses_bad_input(env: Env) -> None:
    model = await load(env, MINILM)
    texts = [f"sentence number {i}" for i in range(40)]
    before = model.session.calls
    payloads, _ = await collect(env, embed_request(texts), MINILM)
    assert len(payloads) == 40 and model.session.calls - before == 3  # batches of 16
    with pytest.raises(InvalidArgument, match="at most 256"):
        env.engine.stream(embed_request(["fine", "word " * 300]), model=model)
    with pytest.raises(InvalidArgument, match="empty"):
        env.engine.stream(embed_request([]), model=model)
    with pytest.raises(InvalidArgument, match=r"send input\.texts"):
        env.engine.stream(text_request("x"), model=model)


def tensor_request(*tensors) -> infer_pb2.Infer.Request:
    return infer_pb2.Infer.Request(model_id="doubler", input=infer_pb2.Input(
        tensors=tensor_pb2.TensorMap(tensors=list(tensors))))


def f32(name, arr, dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=None):
    arr = np.asarray(arr, dtype=np.float32)
    return tensor_pb2.Tensor(name=name, dtype=dtype, shape=shape or list(arr.shape),
                             data=arr.tobytes())


async def test_tensor_model_runs_and_checks_inputs(env: Env) -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    payloads, usage = await collect(env, tensor_request(f32("x", x)), "doubler")
    (p,) = payloads
    assert p.tensor.name == "y" and list(p.tensor.shape) == [2, 4]
    np.testing.assert_allclose(np.frombuffer(p.tensor.data, np.float32).reshape(2, 4),
                               x * 2 + 0.5)
    assert usage.input_tokens == 8
    model = await load(env, "doubler")
    bad = [
        (tensor_request(f32("x", x, dtype=tensor_pb2.DATA_TYPE_INT64)),
         "must be DATA_TYPE_FLOAT32"),
        (tensor_request(f32("x", np.ones((2, 3)))), "shape"),
        (tensor_request(f32("x", x, shape=[4, 4])), "carries 32 bytes"),
        (tensor_request(f32("z", x)), "unknown input tensor 'z'"),
        (tensor_request(), "missing input"),
        (tensor_request(f32("x", x), f32("x", x)), "given twice"),
        (tensor_request(f32("x", np.ones((20, 4)))), "at most 64"),
    ]
    for req, words in bad:
        with pytest.raises(InvalidArgument, match=words):
            env.engine.stream(req, model=model)


async def test_worker_engine_adapter_resolves_streams_and_reports_cache(env: Env) -> None:
    records = [env.catalog.resolve(TEXTGEN), env.catalog.resolve(MINILM)]
    adapter = WorkerEngine(env.loader, records, engine=env.engine)
    await adapter.warm(pin=True)
    assert [(k.model_id, k.version) for k in adapter.supported()] == [
        (MINILM, "1.0"), (TEXTGEN, "1.0")]
    items = [i async for i in adapter.stream(text_request("and he said", max_tokens=5,
                                                              seed=2))]
    assert all(u is None for _, u in items[:-1])
    last_payload, usage = items[-1]
    assert usage is not None
    assert last_payload.WhichOneof("kind") is None and usage.output_tokens == len(items) - 1
    manifest = {m.model_id: m for m in adapter.cache_manifest()}
    assert manifest[TEXTGEN].pinned and manifest[TEXTGEN].engine == "onnxruntime-cpu"
    assert manifest[MINILM].digest == next(a.digest for a in records[1].artifacts
                                           if a.role == "model")
    with pytest.raises(NotFound):
        adapter.resolve(TEXTGEN, "2")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.builds(
    tensor_pb2.Tensor, name=st.sampled_from(["x", "y", ""]), dtype=st.integers(0, 9),
    shape=st.lists(st.integers(-2, 6), max_size=3), data=st.binary(max_size=40)), max_size=3))
def test_fuzz_tensor_inputs(tensors) -> None:
    specs = [IOSpec("x", tensor_pb2.DATA_TYPE_FLOAT32, (-1, 2))]
    try:
        feeds = tensors_to_feeds(tensor_pb2.TensorMap(tensors=tensors), specs, 16)
    except InvalidArgument:
        return
    assert feeds["x"].dtype == np.float32 and feeds["x"].shape[1] == 2


SEEDS = [
    b'{"kind": "word", "pattern": "[a-z]+", "vocab": ["<unk>", "<eos>", "a"]}',
    b'{"model": {"type": "WordPiece", "vocab": {"[UNK]": 0}}}',
    write_adapter({"W": (np.ones((1, 2)), np.ones((2, 1)), None)})[:120],
]


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=120), st.sampled_from(SEEDS).map(bytes)))
def test_fuzz_tokenizer_and_adapter_decoders(blob: bytes) -> None:
    """Any bytes are a tokenizer/adapter or INVALID_ARGUMENT, fed whole and as every prefix."""
    for decode in (load_tokenizer, read_adapter):
        for chunk in (blob[:n] for n in range(len(blob) + 1)):
            with contextlib.suppress(InvalidArgument):
                decode(chunk)


async def test_generation_in_worker_threads_matches_inline_steps(env: Env) -> None:
    model = await load(env, TEXTGEN)
    threaded = ExecutionEngine(env.loader, inline_step_s=0.0)  # every step in a thread
    req = text_request("and the lord said", max_tokens=30, seed=5)
    a = [p.text async for p in threaded.stream(req, model=model)]
    b = [p.text async for p in env.engine.stream(req, model=model)]
    assert a == b and len(a) >= 3


def test_minilm_build_is_deterministic(minilm_dir) -> None:
    """The build writes the same bytes every time; model.json records them."""
    spec = json.loads((MODELS_DIR / MINILM / "model.json").read_text())
    for role, name in spec["files"].items():
        assert sha256_hex((minilm_dir / name).read_bytes()) == spec["sha256"][role], role


GOOD_ADAPTER = write_adapter({"W": (np.ones((1, 2)), np.ones((2, 1)), 2.0)})


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(GOOD_ADAPTER) - 1), st.binary(min_size=1, max_size=8))
def test_fuzz_mutated_adapter_archive(pos: int, noise: bytes) -> None:
    blob = bytearray(GOOD_ADAPTER)
    blob[pos : pos + len(noise)] = noise
    try:
        factors = read_adapter(bytes(blob))
    except InvalidArgument:
        return
    assert all(a.ndim == 2 and b.ndim == 2 for a, b, _ in factors.values())


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(
        st.sampled_from(["kind", "pattern", "vocab", "unk", "eos", "model", "type", "x"]), c,
        max_size=5),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(JSONISH, st.sampled_from(["word", "WordPiece"]))
def test_fuzz_structured_tokenizer_specs(obj, kind: str) -> None:
    if isinstance(obj, dict):
        if kind == "word":
            obj["kind"] = "word"
        else:
            obj["model"] = {"type": "WordPiece", **(obj if isinstance(obj, dict) else {})}
    try:
        tok = load_tokenizer(json.dumps(obj).encode())
    except InvalidArgument:
        return
    assert tok.encode("a b") is not None


async def test_inline_generation_gives_other_tasks_turns(env: Env, monkeypatch) -> None:
    """Steps run on the event loop hand the scheduler a turn every YIELD_EVERY_S (zero here:
    every step), so a stream whose consumer never awaits anything else starves no one."""
    import worker.engine.engine as engine_module

    monkeypatch.setattr(engine_module, "YIELD_EVERY_S", 0.0)
    model = await load(env, TEXTGEN)
    ticks_at_payload: list[int] = []
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        async for _ in env.engine.stream(text_request("and he said", max_tokens=20, seed=4),
                                         model=model):
            ticks_at_payload.append(ticks)
        done = True
    assert len(ticks_at_payload) >= 3
    assert ticks_at_payload[-1] > ticks_at_payload[0]


async def test_the_final_chunk_says_whether_generation_hit_its_token_limit(env: Env) -> None:
    """finish_reason LENGTH when the request's max_tokens, or the default limit when it
    names none, ended the answer; STOP when the model ended it."""
    record = env.catalog.resolve(TEXTGEN, "", tenant_id="acme")
    worker = WorkerService(WorkerConfig(worker_id="w1", region="local"),
                           WorkerEngine(env.loader, [record], engine=env.engine),
                           KeyPair.generate())

    async def final(request: infer_pb2.Infer.Request) -> infer_pb2.Infer.Chunk:
        chunks = [c async for c in worker.chunks(request, ServerContext("Infer", {}))]
        # One final chunk, the last, and nothing after it.
        assert [c.done for c in chunks] == [False] * (len(chunks) - 1) + [True]
        assert [c.seq for c in chunks] == list(range(len(chunks)))
        return chunks[-1]

    # No max_tokens: the default limit, reached (min_tokens holds the end back).
    last = await final(text_request("and he said", min_tokens=limits.DEFAULT_MAX_TOKENS,
                                    seed=1))
    assert last.usage.output_tokens == limits.DEFAULT_MAX_TOKENS
    assert last.finish_reason == infer_pb2.FINISH_REASON_LENGTH
    last = await final(text_request("and he said", max_tokens=5, seed=1))
    assert (last.usage.output_tokens, last.finish_reason) == (5, infer_pb2.FINISH_REASON_LENGTH)
    # A verse that ends on its own (sampled freely, most end well before 60 tokens).
    for seed in range(1, 20):
        last = await final(text_request("and he said", max_tokens=60, seed=seed))
        if last.usage.output_tokens < 60:
            assert last.finish_reason == infer_pb2.FINISH_REASON_STOP
            break
    else:
        pytest.fail("no seed ended before 60 tokens")


async def test_the_engine_and_the_gateway_share_one_token_limit(env: Env) -> None:
    from gateway.service import validate

    model = await load(env, TEXTGEN)
    ok = text_request("hi", max_tokens=limits.MAX_NEW_TOKENS)
    ok.model_id = TEXTGEN
    validate(ok)
    await env.engine.stream(ok, model=model).aclose()
    over = text_request("hi", max_tokens=limits.MAX_NEW_TOKENS + 1)
    with pytest.raises(InvalidArgument) as at_gateway:
        validate(over)
    with pytest.raises(InvalidArgument) as at_engine:
        env.engine.stream(over, model=model)
    refused = {"field": "max_tokens", "limit": str(limits.MAX_NEW_TOKENS)}
    assert at_gateway.value.details == at_engine.value.details == refused


async def test_the_gru_ends_at_a_stop_string_in_the_worker(env: Env) -> None:
    """Stop strings are the engine's for both text contracts: the GRU stops computing at
    one (its text cut before it) and the final chunk says STOP."""
    record = env.catalog.resolve(TEXTGEN, "", tenant_id="acme")
    worker = WorkerService(WorkerConfig(worker_id="w1", region="local"),
                           WorkerEngine(env.loader, [record], engine=env.engine),
                           KeyPair.generate())
    free, _ = await collect(env, text_request("and he said", max_tokens=30, min_tokens=30,
                                              temperature_value=0), TEXTGEN)
    text = "".join(p.text for p in free)
    words = text.split()
    stop = f" {words[3]} {words[4]}"  # across two pieces
    cut = text.find(stop)
    assert cut > 0
    request = text_request("and he said", max_tokens=30, min_tokens=30, temperature_value=0,
                           stop=["never-in-the-corpus", stop])
    chunks = [c async for c in worker.chunks(request, ServerContext("Infer", {}))]
    assert "".join(c.payload.text for c in chunks) == text[:cut]
    assert chunks[-1].finish_reason == infer_pb2.FINISH_REASON_STOP
    assert chunks[-1].usage.output_tokens < 30  # nothing computed past the stop string


async def test_a_stop_string_on_the_last_allowed_token_is_a_stop(env: Env) -> None:
    """The final chunk carries the engine's own reason, not one inferred from the token
    count: a stop string completed by the max_tokens-th token ends with STOP."""
    record = env.catalog.resolve(TEXTGEN, "", tenant_id="acme")
    worker = WorkerService(WorkerConfig(worker_id="w1", region="local"),
                           WorkerEngine(env.loader, [record], engine=env.engine),
                           KeyPair.generate())
    free, _ = await collect(env, text_request("and he said", max_tokens=6, min_tokens=6,
                                              temperature_value=0), TEXTGEN)
    sixth = free[5].text  # one word a token
    assert sixth.strip() and "".join(p.text for p in free[:5]).find(sixth) < 0
    request = text_request("and he said", max_tokens=6, min_tokens=6, temperature_value=0,
                           stop=[sixth])
    chunks = [c async for c in worker.chunks(request, ServerContext("Infer", {}))]
    assert "".join(c.payload.text for c in chunks) == "".join(p.text for p in free[:5])
    assert chunks[-1].usage.output_tokens == 6
    assert chunks[-1].finish_reason == infer_pb2.FINISH_REASON_STOP


async def test_a_slow_thread_round_trip_does_not_keep_short_steps_in_threads(
    env: Env, monkeypatch
) -> None:
    """Whether a step runs on the event loop is decided by the model's own time per token:
    a thread round trip slowed down (a loaded machine) does not count, so a small model's
    steps run inline after the first of each kind."""
    model = await load(env, TEXTGEN)
    # Its own step estimates, and a bound a loaded machine keeps the real step under.
    engine = ExecutionEngine(env.loader, inline_step_s=0.05)
    # A warm model first (a first run's allocations can outlast the bound on a busy
    # machine), then no estimates: the counted prompts start from nothing.
    for _ in range(2):
        async for _ in engine.stream(text_request("and he said", max_tokens=1, seed=4),
                                     model=model):
            pass
    model.extra.pop("prompt_s_per_token", None)
    model.extra.pop("step_s", None)
    real = trio.to_thread.run_sync
    threaded = 0

    async def slow_round_trip(fn, *args, **kw):
        nonlocal threaded
        threaded += 1

        def slow(*a):
            time.sleep(0.1)  # twice the inline bound, outside the model's call
            return fn(*a)

        return await real(slow, *args, **kw)

    monkeypatch.setattr(trio.to_thread, "run_sync", slow_round_trip)
    for _ in range(3):
        async for _ in engine.stream(text_request("and he said", max_tokens=1, seed=4),
                                     model=model):
            pass
    assert threaded == 1  # the first prompt only: its own time put the next ones inline
