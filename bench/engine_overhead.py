"""Worker engine overhead against calling ONNX Runtime directly, and time to first token.

For each shipped model, and a random-weight decoder in the Hugging Face Optimum layout
(``tools/tiny_decoder.py``: 4 layers, 8 heads of 32, fp16 KV cache), the same ONNX Runtime
session runs the same input two ways:

* direct — a plain loop of ``session.run`` calls (text generation: the prompt, then one call
  per token with the same sampling, the decoder's KV cache fed back by name; embedding: one
  call per batch);
* engine — ``ExecutionEngine.stream`` under trio, which adds input checks, a worker-thread hop
  per runtime call, cancellation checks and protobuf payloads.

The ratio engine/direct (median over rounds of the per-round ratio) is the overhead; the
goal is <= 1.05. Continuous batching: 8 concurrent decoder streams, tokens per second with
batches of up to 8 against the same engine limited to batches of 1.
The overhead is given for wall time and for process CPU time (``time.process_time``,
all threads), which a busy shared machine disturbs less. Time to first token is measured from
the stream's creation to its first payload. The last line printed is JSON with every figure.

    python bench/engine_overhead.py [--repeats 15] [--tokens 64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import trio

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from registry.catalog import Catalog  # noqa: E402
from registry.publish import ModelPackage, publish_package  # noqa: E402
from tether.artifacts import ArtifactStore, LocalDirectoryStore  # noqa: E402
from tether.keys import KeyPair  # noqa: E402
from tether.metadata import MetadataStore  # noqa: E402
from tether.v1 import infer_pb2, tensor_pb2  # noqa: E402
from tools.tiny_decoder import write_model_folder  # noqa: E402
from worker.engine import ExecutionEngine, OnnxRuntimeBackend  # noqa: E402
from worker.engine.backends import DTYPES  # noqa: E402
from worker.engine.engine import embedding_feeds, sample  # noqa: E402
from worker.engine.tokenizers import HFTokenizer, WordPieceTokenizer, WordTokenizer  # noqa: E402
from worker.loader import LoadedModel, ModelLoader  # noqa: E402

PROMPT = "and the lord spake unto moses, saying"
SENTENCES = [f"The {i}th sentence of the benchmark talks about peer to peer inference."
             for i in range(32)]


def paired(engine: list[float], direct: list[float]) -> float:
    """Median of the per-round ratios: each round runs both paths back to back, so a burst of
    load from elsewhere on the machine hits both sides of one ratio."""
    return round(statistics.median(e / d for e, d in zip(engine, direct, strict=True)), 4)


def direct_text(model: LoadedModel, tokens: int, seed: int) -> tuple[float, float, int]:
    """(total seconds, seconds to first token, tokens) with plain session.run calls."""
    tok = model.tokenizer
    assert isinstance(tok, WordTokenizer)
    state_shape = next(i.shape for i in model.session.inputs if i.name == "state")
    rng = np.random.default_rng(seed)
    banned = np.asarray(sorted(tok.special_ids - {tok.eos_id}), dtype=np.int64)
    t0 = time.perf_counter()
    ids = np.asarray([[tok.eos_id, *tok.encode(PROMPT)]], dtype=np.int64)
    state = np.zeros(state_shape, dtype=np.float32)
    first = 0.0
    n = 0
    for _ in range(tokens):
        out = model.session.run({"input_ids": ids, "state": state})
        state = out["state_out"]
        token = sample(out["logits"][0], rng, 0.8, 0.95, banned)
        if token == tok.eos_id:
            break
        tok.decode_piece(token, first=n == 0)
        if n == 0:
            first = time.perf_counter() - t0
        n += 1
        ids = np.asarray([[token]], dtype=np.int64)
    return time.perf_counter() - t0, first, n


async def engine_text(engine: ExecutionEngine, model: LoadedModel, tokens: int,
                      seed: int) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    req = infer_pb2.Infer.Request(model_id=model.model_id, input=infer_pb2.Input(text=PROMPT),
                                  params=infer_pb2.GenerationParams(max_tokens=tokens, seed=seed))
    stream = engine.stream(req, model=model)
    n = 0
    async for _ in stream:
        n += 1
    assert stream.first_payload_s is not None
    return time.perf_counter() - t0, stream.first_payload_s, n


def direct_greedy(model: LoadedModel, tokens: int,
                  prompt: str = PROMPT) -> tuple[list[int], list[float], float]:
    """Greedy decoding with the end of text banned, by plain session.run calls: the tokens,
    each token's time since the start, and the total seconds."""
    tok = model.tokenizer
    assert isinstance(tok, HFTokenizer)
    eos = json.loads(model.files["generation_config"])["eos_token_id"]
    inputs = {i.name: i for i in model.session.inputs}
    t0 = time.perf_counter()
    past = {n: np.zeros((1, i.shape[1], 0, i.shape[3]), dtype=DTYPES[i.dtype])
            for n, i in inputs.items() if n.startswith("past_key_values.")}
    ids = tok.encode(prompt)
    prompt_ids, seen, stamps, out = list(ids), 0, [], []
    for _ in range(tokens):
        feeds = {"input_ids": np.array([ids], dtype=np.int64),
                 "attention_mask": np.ones((1, seen + len(ids)), dtype=np.int64), **past}
        if "position_ids" in inputs:
            feeds["position_ids"] = np.arange(seen, seen + len(ids), dtype=np.int64)[None]
        result = model.session.run(feeds)
        logits = result["logits"][0, -1].astype(np.float64)
        logits[eos] = -np.inf
        token = int(np.argmax(logits))
        out.append(token)
        tok.decode(prompt_ids[-6:] + out[-6:])  # what streaming text costs, roughly
        stamps.append(time.perf_counter() - t0)
        seen += len(ids)
        ids = [token]
        past = {k: result[k.replace("past_key_values.", "present.")] for k in past}
    return out, stamps, time.perf_counter() - t0


def direct_decoder(model: LoadedModel, tokens: int) -> tuple[float, float, int]:
    """(total seconds, seconds to first token, tokens) of :func:`direct_greedy`."""
    out, stamps, total = direct_greedy(model, tokens)
    return total, stamps[0], len(out)


async def engine_decoder(engine: ExecutionEngine, model: LoadedModel,
                         tokens: int) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    req = infer_pb2.Infer.Request(model_id=model.model_id, input=infer_pb2.Input(text=PROMPT),
                                  params=infer_pb2.GenerationParams(
                                      max_tokens=tokens, min_tokens=tokens,
                                      temperature_value=0.0))
    stream = engine.stream(req, model=model)
    async for _ in stream:
        pass
    assert stream.first_payload_s is not None
    return time.perf_counter() - t0, stream.first_payload_s, stream.usage.output_tokens


async def batched_decoder(loader: ModelLoader, model: LoadedModel, tokens: int, streams: int,
                          max_batch: int) -> float:
    """Tokens per second of ``streams`` concurrent greedy streams, batches of ``max_batch``."""
    engine = ExecutionEngine(loader, max_batch=max_batch, inline_step_s=0.0)
    total = 0

    async def one(i: int) -> None:
        nonlocal total
        stream = engine.stream(infer_pb2.Infer.Request(
            model_id=model.model_id, input=infer_pb2.Input(text=f"{PROMPT} {i}"),
            params=infer_pb2.GenerationParams(max_tokens=tokens, min_tokens=tokens,
                                              temperature_value=0.0)), model=model)
        async for _ in stream:
            pass
        total += stream.usage.output_tokens

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(streams):
            nursery.start_soon(one, i)
    return total / (time.perf_counter() - t0)


def direct_embed(model: LoadedModel) -> float:
    tok = model.tokenizer
    assert isinstance(tok, WordPieceTokenizer)
    names = {i.name for i in model.session.inputs}
    t0 = time.perf_counter()
    encoded = [tok.encode(s) for s in SENTENCES]
    for start in range(0, len(encoded), 16):
        out = model.session.run(embedding_feeds(encoded[start:start + 16], names))
        for vec in out[model.session.outputs[0].name]:
            vec.astype(np.float32).tolist()
    return time.perf_counter() - t0


async def engine_embed(engine: ExecutionEngine, model: LoadedModel) -> float:
    t0 = time.perf_counter()
    req = infer_pb2.Infer.Request(model_id=model.model_id, input=infer_pb2.Input(
        texts=tensor_pb2.TextBatch(texts=SENTENCES)))
    async for _ in engine.stream(req, model=model):
        pass
    return time.perf_counter() - t0


async def run(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        kp = KeyPair.generate()
        store = MetadataStore.sqlite(tmp / "meta.db")
        store.migrate()
        artifacts = ArtifactStore([LocalDirectoryStore(tmp / f"r{i}") for i in range(3)],
                                  trusted_keys={kp.public_key})
        catalog = Catalog(store)
        for name in ("kjv-textgen", "all-minilm-l6-v2"):
            publish_package(ModelPackage.load(REPO / "worker" / "models" / name), catalog,
                            artifacts, kp)
        decoder_dir = write_model_folder(tmp / "bench-decoder", model_id="bench-decoder",
                                         layers=4, heads=8, head_dim=32, kv_dtype="float16")
        publish_package(ModelPackage.load(decoder_dir), catalog, artifacts, kp)
        backend = OnnxRuntimeBackend(intra_op_threads=args.threads)
        loader = ModelLoader(artifacts, backend, budget_bytes=1 << 30)
        engine = ExecutionEngine(loader)
        text_model = await loader.load(catalog.resolve("kjv-textgen"))
        emb_model = await loader.load(catalog.resolve("all-minilm-l6-v2"))
        dec_model = await loader.load(catalog.resolve("bench-decoder"))
        store.close()

    d_tot, d_first, e_tot, e_first, d_emb, e_emb = [], [], [], [], [], []
    d_cpu, e_cpu, d_emb_cpu, e_emb_cpu = [], [], [], []
    # Text generation rounds first, then embedding rounds, so one model's working set does
    # not evict the other's from the CPU caches in between. Within a round both paths run
    # back to back, in alternating order.
    for i in range(args.repeats + 2):  # the first two rounds warm up
        seed = 1000 + i
        c0 = time.process_time()
        if i % 2 == 0:
            et = await engine_text(engine, text_model, args.tokens, seed)
            c1 = time.process_time()
            dt = direct_text(text_model, args.tokens, seed)
            c2 = time.process_time()
            ec, dc = c1 - c0, c2 - c1
        else:
            dt = direct_text(text_model, args.tokens, seed)
            c1 = time.process_time()
            et = await engine_text(engine, text_model, args.tokens, seed)
            c2 = time.process_time()
            dc, ec = c1 - c0, c2 - c1
        assert dt[2] == et[2], "both paths must generate the same tokens"
        if i >= 2:
            d_tot.append(dt[0] / max(dt[2], 1))
            e_tot.append(et[0] / max(et[2], 1))
            d_cpu.append(dc / max(dt[2], 1))
            e_cpu.append(ec / max(et[2], 1))
            d_first.append(dt[1])
            e_first.append(et[1])
    dec_d, dec_e, dec_dc, dec_ec, dec_df, dec_ef = [], [], [], [], [], []
    for i in range(args.repeats + 2):
        c0 = time.process_time()
        if i % 2 == 0:
            et = await engine_decoder(engine, dec_model, args.tokens)
            c1 = time.process_time()
            dt = direct_decoder(dec_model, args.tokens)
            c2 = time.process_time()
            ec, dc = c1 - c0, c2 - c1
        else:
            dt = direct_decoder(dec_model, args.tokens)
            c1 = time.process_time()
            et = await engine_decoder(engine, dec_model, args.tokens)
            c2 = time.process_time()
            dc, ec = c1 - c0, c2 - c1
        assert dt[2] == et[2] == args.tokens, "both paths must generate every token"
        if i >= 2:
            dec_d.append(dt[0] / dt[2])
            dec_e.append(et[0] / et[2])
            dec_dc.append(dc / dt[2])
            dec_ec.append(ec / et[2])
            dec_df.append(dt[1])
            dec_ef.append(et[1])
    for i in range(args.repeats + 2):
        c0 = time.process_time()
        if i % 2 == 0:
            ee = await engine_embed(engine, emb_model)
            c1 = time.process_time()
            de = direct_embed(emb_model)
            c2 = time.process_time()
            ec, dc = c1 - c0, c2 - c1
        else:
            de = direct_embed(emb_model)
            c1 = time.process_time()
            ee = await engine_embed(engine, emb_model)
            c2 = time.process_time()
            dc, ec = c1 - c0, c2 - c1
        if i >= 2:
            d_emb.append(de)
            e_emb.append(ee)
            d_emb_cpu.append(dc)
            e_emb_cpu.append(ec)
    batched, serial = [], []
    for _ in range(max(3, args.repeats // 3)):
        batched.append(await batched_decoder(loader, dec_model, args.tokens, 8, 8))
        serial.append(await batched_decoder(loader, dec_model, args.tokens, 8, 1))
    med = statistics.median
    return {
        "bench": "engine_overhead",
        "runtime": "onnxruntime-cpu",
        "tokens_per_run": args.tokens,
        "intra_op_threads": args.threads,
        "repeats": args.repeats,
        "textgen_ms_per_token_direct": round(med(d_tot) * 1e3, 4),
        "textgen_ms_per_token_engine": round(med(e_tot) * 1e3, 4),
        "textgen_overhead_ratio": paired(e_tot, d_tot),
        "textgen_cpu_overhead_ratio": paired(e_cpu, d_cpu),
        "ttft_ms_direct": round(med(d_first) * 1e3, 3),
        "ttft_ms_engine": round(med(e_first) * 1e3, 3),
        "decoder_ms_per_token_direct": round(med(dec_d) * 1e3, 4),
        "decoder_ms_per_token_engine": round(med(dec_e) * 1e3, 4),
        "decoder_overhead_ratio": paired(dec_e, dec_d),
        "decoder_cpu_overhead_ratio": paired(dec_ec, dec_dc),
        "decoder_ttft_ms_direct": round(med(dec_df) * 1e3, 3),
        "decoder_ttft_ms_engine": round(med(dec_ef) * 1e3, 3),
        "decoder_8_streams_tokens_per_s_batched": round(med(batched), 1),
        "decoder_8_streams_tokens_per_s_batch_of_1": round(med(serial), 1),
        "decoder_batching_speedup": round(med(batched) / med(serial), 3),
        "embedding_ms_32_texts_direct": round(med(d_emb) * 1e3, 3),
        "embedding_ms_32_texts_engine": round(med(e_emb) * 1e3, 3),
        "embedding_overhead_ratio": paired(e_emb, d_emb),
        "embedding_cpu_overhead_ratio": paired(e_emb_cpu, d_emb_cpu),
        "goal_ratio": 1.05,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    args = p.parse_args()
    result = trio.run(run, args)
    for key, value in result.items():
        print(f"{key:32} {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
