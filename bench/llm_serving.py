"""Serving the pretrained LLM (SmolLM2-135M-Instruct, fp32 ONNX) on the worker engine:
throughput and latency under concurrency, with continuous batching on and off, against ONNX
Runtime alone running the same graph in a plain loop.

Every request decodes exactly ``--tokens`` greedy tokens (the end of text banned) after its own
prompt. The plain loop (``bench/engine_overhead.py``'s ``direct_greedy``: ``session.run`` with
the KV cache fed back by name) gives each prompt's reference tokens; every engine request's
text must equal the text of its reference tokens, streamed the way the engine streams them, or
the run says so (``same_tokens``).

* per token at concurrency 1: rounds alternate the plain loop and one engine request on the
  same prompt; the ratio is the median of the rounds' engine/loop wall time per token (the
  bar), and also of process CPU time (all threads), which a busy shared machine disturbs less;
* concurrency 1, 4 and 16, batching on (the engine's default ``max_batch``) and off
  (``max_batch`` 1): ``--waves`` waves of that many requests started at once; aggregate
  tokens/s over the waves, time to first token (request start to its first text) and
  inter-token latency (the gaps between a request's tokens, a payload of k tokens counting
  as k gaps of 1/k of the time) as p50/p95 over every request or gap.

Bars (batching on): engine at concurrency 1 within 1.05x of the plain loop per token;
aggregate tokens/s at concurrency 16 at least 4x concurrency 1; time to first token p50 at
concurrency 16 at most 3x concurrency 1. Needs the built model (``tools/build_smollm2.py``).
The last line printed is JSON with every figure, the ratios and which bars are met.

    python bench/llm_serving.py [--tokens 32] [--waves 2] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trio

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from engine_overhead import PROMPT, direct_greedy  # noqa: E402
from pretrained_decoder import MODEL_ID, load_pretrained  # noqa: E402

from tether.v1 import infer_pb2  # noqa: E402
from worker.engine import ExecutionEngine  # noqa: E402
from worker.engine.engine import DEFAULT_MAX_BATCH  # noqa: E402
from worker.engine.tokenizers import HFTokenizer  # noqa: E402
from worker.loader import LoadedModel, ModelLoader  # noqa: E402

CONCURRENCY = (1, 4, 16)
BARS = {"c1_engine_over_direct_per_token": ("<=", 1.05),
        "c16_over_c1_tokens_per_s": (">=", 4.0),
        "c16_over_c1_ttft_p50": ("<=", 3.0)}


@dataclass
class Result:
    text: str = ""
    tokens: int = 0
    ttft_s: float = 0.0
    gaps_s: list[float] = field(default_factory=list)
    total_s: float = 0.0


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def streamed_text(tok: HFTokenizer, prompt: str, tokens: list[int]) -> str:
    """The text the engine streams for ``tokens`` after ``prompt``."""
    stream = tok.stream(tok.encode(prompt))
    return "".join(stream.push(t) for t in tokens) + stream.flush()


async def engine_request(engine: ExecutionEngine, model: LoadedModel, prompt: str,
                         tokens: int) -> Result:
    r = Result()
    t0 = prev = time.perf_counter()
    stream = engine.stream(infer_pb2.Infer.Request(
        model_id=model.model_id, input=infer_pb2.Input(text=prompt),
        params=infer_pb2.GenerationParams(max_tokens=tokens, min_tokens=tokens,
                                          temperature_value=0.0)), model=model)
    pieces = []
    async for payload in stream:
        now = time.perf_counter()
        pieces.append(payload.text)
        n = stream.usage.output_tokens
        if r.tokens == 0:
            r.ttft_s = now - t0
        elif n > r.tokens:
            r.gaps_s.extend([(now - prev) / (n - r.tokens)] * (n - r.tokens))
        r.tokens, prev = n, now
    r.total_s = time.perf_counter() - t0
    r.tokens = stream.usage.output_tokens
    r.text = "".join(pieces)
    return r


async def wave(engine: ExecutionEngine, model: LoadedModel, prompts: list[str],
               tokens: int) -> tuple[list[Result], float]:
    results: list[Result] = [Result() for _ in prompts]

    async def one(i: int) -> None:
        results[i] = await engine_request(engine, model, prompts[i], tokens)

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(len(prompts)):
            nursery.start_soon(one, i)
    return results, time.perf_counter() - t0


async def serve(loader: ModelLoader, model: LoadedModel, max_batch: int, *, prompts: list[str],
                expected: dict[str, str], args: argparse.Namespace) -> dict:
    engine = ExecutionEngine(loader, max_batch=max_batch)
    await engine_request(engine, model, prompts[0], 4)  # warm-up
    figures: dict = {"max_batch": max_batch}
    for c in CONCURRENCY:
        results: list[Result] = []
        wall = 0.0
        for _ in range(args.waves):
            got, seconds = await wave(engine, model, prompts[:c], args.tokens)
            results.extend(got)
            wall += seconds
        ttft = [r.ttft_s for r in results]
        gaps = [g for r in results for g in r.gaps_s]
        figures[f"c{c}"] = {
            "requests": len(results),
            "tokens_per_s": round(sum(r.tokens for r in results) / wall, 2),
            "ttft_ms_p50": round(pct(ttft, 50) * 1e3, 1),
            "ttft_ms_p95": round(pct(ttft, 95) * 1e3, 1),
            "itl_ms_p50": round(pct(gaps, 50) * 1e3, 2),
            "itl_ms_p95": round(pct(gaps, 95) * 1e3, 2),
            "same_tokens": all(r.tokens == args.tokens and r.text == expected[p]
                               for r, p in zip(results, prompts[:c] * args.waves,
                                               strict=True)),
        }
    return figures


async def run(args: argparse.Namespace) -> dict:
    loader, model = await load_pretrained(args.threads)
    tok = model.tokenizer
    assert isinstance(tok, HFTokenizer)
    prompts = [f"{PROMPT} {i}" for i in range(max(CONCURRENCY))]

    # Reference tokens: ONNX Runtime alone, once per prompt.
    expected: dict[str, str] = {}
    direct_gaps: list[float] = []
    direct_ttft: list[float] = []
    for p in prompts:
        out, stamps, _ = direct_greedy(model, args.tokens, p)
        expected[p] = streamed_text(tok, p, out)
        direct_ttft.append(stamps[0])
        direct_gaps.extend(np.diff(stamps).tolist())

    # Concurrency 1, paired rounds in alternating order: engine vs the plain loop per token.
    engine = ExecutionEngine(loader)
    await engine_request(engine, model, prompts[0], 4)  # warm-up
    ratios, cpu_ratios, d_tok, e_tok, c1_same = [], [], [], [], True
    for i in range(args.repeats):
        c0 = time.process_time()
        if i % 2 == 0:
            e = await engine_request(engine, model, prompts[0], args.tokens)
            c1 = time.process_time()
            out, _, d_total = direct_greedy(model, args.tokens, prompts[0])
            c2 = time.process_time()
            e_cpu, d_cpu = c1 - c0, c2 - c1
        else:
            out, _, d_total = direct_greedy(model, args.tokens, prompts[0])
            c1 = time.process_time()
            e = await engine_request(engine, model, prompts[0], args.tokens)
            c2 = time.process_time()
            d_cpu, e_cpu = c1 - c0, c2 - c1
        cpu_ratios.append(e_cpu / d_cpu)
        c1_same = c1_same and e.text == expected[prompts[0]] and \
            streamed_text(tok, prompts[0], out) == expected[prompts[0]]
        d_tok.append(d_total / args.tokens)
        e_tok.append(e.total_s / e.tokens)
        ratios.append(e_tok[-1] / d_tok[-1])

    on = await serve(loader, model, DEFAULT_MAX_BATCH, prompts=prompts, expected=expected,
                     args=args)
    off = await serve(loader, model, 1, prompts=prompts, expected=expected, args=args)
    med = statistics.median
    ratio = {
        "c1_engine_over_direct_per_token": round(med(ratios), 3),
        "c1_engine_over_direct_cpu_per_token": round(med(cpu_ratios), 3),
        "c16_over_c1_tokens_per_s": round(on["c16"]["tokens_per_s"] / on["c1"]["tokens_per_s"],
                                          3),
        "c16_over_c1_ttft_p50": round(on["c16"]["ttft_ms_p50"] / on["c1"]["ttft_ms_p50"], 3),
        "c16_batching_on_over_off_tokens_per_s": round(
            on["c16"]["tokens_per_s"] / off["c16"]["tokens_per_s"], 3),
    }
    bars = {name: {"bar": f"{op} {limit}", "value": ratio[name],
                   "met": ratio[name] <= limit if op == "<=" else ratio[name] >= limit}
            for name, (op, limit) in BARS.items()}
    same = c1_same and all(f[f"c{c}"]["same_tokens"] for f in (on, off) for c in CONCURRENCY)
    return {
        "bench": "llm_serving",
        "model": MODEL_ID,
        "runtime": "onnxruntime-cpu",
        "intra_op_threads": args.threads,
        "cpus": os.cpu_count(),
        "load_avg_at_start": [round(x, 2) for x in args.load_avg],
        "tokens_per_request": args.tokens,
        "waves": args.waves,
        "repeats": args.repeats,
        "direct": {"ms_per_token": round(med(d_tok) * 1e3, 2),
                   "tokens_per_s": round(1 / med(d_tok), 2),
                   "ttft_ms_p50": round(pct(direct_ttft, 50) * 1e3, 1),
                   "itl_ms_p50": round(pct(direct_gaps, 50) * 1e3, 2),
                   "itl_ms_p95": round(pct(direct_gaps, 95) * 1e3, 2)},
        "engine_c1_ms_per_token": round(med(e_tok) * 1e3, 2),
        "batching_on": on,
        "batching_off": off,
        "same_tokens": same,
        "ratios": ratio,
        "bars": bars,
        "bars_met": all(b["met"] for b in bars.values()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tokens", type=int, default=32, help="greedy tokens per request")
    p.add_argument("--waves", type=int, default=2, help="waves of requests per concurrency")
    p.add_argument("--repeats", type=int, default=5, help="paired rounds at concurrency 1")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    args = p.parse_args()
    args.load_avg = os.getloadavg()
    started = time.perf_counter()
    result = trio.run(run, args)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    for key, value in result.items():
        print(f"{key:32} {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
