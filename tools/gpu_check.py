"""Check the TensorRT engine against ONNX Runtime. Needs a GPU machine: an NVIDIA GPU with
its CUDA driver and the ``tensorrt`` and ``pycuda`` Python packages (NVIDIA's index); without
them it refuses (exit status 2) and says why.

For each model it builds a TensorRT engine from the same ONNX bytes the CPU path runs
(through ``worker.engine.tensorrt.TensorRTBackend``, so the plan cache is exercised too: the
second load must not rebuild) and compares with ONNX Runtime:

* ``kjv-textgen`` and ``all-minilm-l6-v2`` (when built): identical inputs, outputs within
  ``--atol``;
* decoders, a random-weight one from ``tools/tiny_decoder.py`` and SmolLM2-135M-Instruct (when
  built in ``var/models``): engines with the decoder optimization profile (batch 1 ..
  ``--max-batch``, context up to ``--max-length``), greedy decoding of ``--tokens`` tokens per
  prompt through the engine's own decoder steps (the KV cache left on the device between a
  sequence's steps), alone and batched; the tokens must equal ONNX Runtime's. Figures: build
  and cached-load seconds, milliseconds per token on each runtime.

    python tools/gpu_check.py [--cache-dir var/trt-cache] [--atol 2e-3] [--tokens 32]
        [--models kjv-textgen,all-minilm-l6-v2,tiny-decoder,smollm2-135m-instruct]

Exit status: 0 all outputs match; 1 a mismatch or a failure; 2 no TensorRT or no GPU here.
The last line printed is JSON with the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tether.artifacts import sha256_hex  # noqa: E402
from tools.tiny_decoder import write_model_folder  # noqa: E402
from worker.engine.backends import OnnxRuntimeBackend, Session  # noqa: E402
from worker.engine.decoder import DecoderModel, DecodeSequence, decode_step  # noqa: E402
from worker.engine.detect import detect  # noqa: E402
from worker.engine.engine import embedding_feeds  # noqa: E402
from worker.engine.sampling import SamplingParams  # noqa: E402
from worker.engine.tensorrt import TensorRTBackend  # noqa: E402
from worker.engine.tokenizers import (  # noqa: E402
    HFTokenizer,
    WordPieceTokenizer,
    WordTokenizer,
    load_tokenizer,
)

TEXTGEN = REPO / "worker" / "models" / "kjv-textgen"
MINILM = REPO / "var" / "models" / "all-minilm-l6-v2"
SMOLLM2 = REPO / "var" / "models" / "smollm2-135m-instruct"
MODELS = ("kjv-textgen", "all-minilm-l6-v2", "tiny-decoder", "smollm2-135m-instruct")
PROMPTS = ["and the lord spake unto moses, saying", "The capital of France is"]


def textgen_inputs(folder: Path) -> list[dict[str, np.ndarray]]:
    tok = load_tokenizer((folder / "tokenizer.json").read_bytes())
    assert isinstance(tok, WordTokenizer)
    ids = [tok.eos_id, *tok.encode("and god said, let there be light")]
    rng = np.random.default_rng(0)
    return [
        {"input_ids": np.asarray([ids], np.int64), "state": np.zeros((1, 1, 384), np.float32)},
        {"input_ids": np.asarray([[ids[-1]]], np.int64),
         "state": rng.normal(size=(1, 1, 384)).astype(np.float32) * 0.5},
    ]


def minilm_inputs(folder: Path) -> list[dict[str, np.ndarray]]:
    tok = load_tokenizer((folder / "tokenizer.json").read_bytes())
    assert isinstance(tok, WordPieceTokenizer)
    texts = ["In the beginning God created the heaven and the earth.", "short",
             "A peer-to-peer network streams inference results in chunks."]
    return [embedding_feeds([tok.encode(t) for t in texts],
                            {"input_ids", "attention_mask", "token_type_ids"})]


def compare(cpu: Session, gpu: Session, feeds: list[dict[str, np.ndarray]]) -> float:
    worst = 0.0
    for f in feeds:
        a, b = cpu.run(f), gpu.run(f)
        for name in a:
            worst = max(worst, float(np.max(np.abs(a[name] - b[name].astype(a[name].dtype)))))
    return worst


def decoder_model(folder: Path, session: Session) -> DecoderModel:
    files = {role: (folder / f"{role}.json").read_bytes()
             for role in ("config", "generation_config", "tokenizer_config")
             if (folder / f"{role}.json").is_file()}
    tok = HFTokenizer((folder / "tokenizer.json").read_text())
    return DecoderModel.from_files(session, tok, files)


def greedy_tokens(session: Session, model: DecoderModel, prompts: list[list[int]], tokens: int,
                  *, batched: bool) -> tuple[list[list[int]], float]:
    """Greedy decoding of exactly ``tokens`` tokens per prompt with the engine's decoder steps:
    each prompt prefilled alone, then one call per token for all of them (``batched``) or one
    call per sequence. Returns the tokens and the seconds spent."""
    seqs = [DecodeSequence(model, p, SamplingParams(temperature=0.0), max_tokens=tokens,
                           min_tokens=tokens) for p in prompts]
    t0 = time.perf_counter()
    for seq in seqs:
        decode_step(session, [seq])
    for _ in range(tokens):  # bounded: each round generates a token per live sequence
        live = [s for s in seqs if not s.done]
        if not live:
            break
        if batched:
            decode_step(session, live)
        else:
            for seq in live:
                decode_step(session, [seq])
    elapsed = time.perf_counter() - t0
    return [s.history[s.prompt_tokens:] for s in seqs], elapsed


def check_decoder(folder: Path, trt: object, cuda: object, gpu_class: str,
                  args: argparse.Namespace) -> dict[str, object]:
    onnx_bytes = (folder / "model.onnx").read_bytes()
    digest = sha256_hex(onnx_bytes)
    cpu = OnnxRuntimeBackend().load(onnx_bytes, digest=digest)

    def backend() -> TensorRTBackend:
        return TensorRTBackend(trt, cuda, gpu_class=gpu_class, cache_dir=args.cache_dir,
                               max_batch=args.max_batch, max_length=args.max_length)

    first = backend()
    t0 = time.perf_counter()
    gpu = first.load(onnx_bytes, digest=digest)
    build_s = time.perf_counter() - t0
    again = backend()
    t0 = time.perf_counter()
    again.load(onnx_bytes, digest=digest)
    reload_s = time.perf_counter() - t0
    model = decoder_model(folder, cpu)
    prompts = [model.tokenizer.encode(p) for p in PROMPTS]
    figures: dict[str, object] = {"build_s": round(build_s, 3),
                                  "cached_load_s": round(reload_s, 3),
                                  "rebuilt_from_cache": again.builds, "tokens": args.tokens,
                                  "plan": first.plan_path(digest).name}
    match = again.builds == 0
    for label, batch in (("alone", prompts[:1]), ("batched", prompts)):
        ort_tokens, ort_s = greedy_tokens(cpu, model, batch, args.tokens, batched=True)
        trt_tokens, trt_s = greedy_tokens(gpu, model, batch, args.tokens, batched=True)
        n = args.tokens * len(batch)
        same = ort_tokens == trt_tokens
        match = match and same
        figures[label] = {"sequences": len(batch), "tokens_match": same,
                          "ms_per_token_onnxruntime": round(ort_s / n * 1e3, 3),
                          "ms_per_token_tensorrt": round(trt_s / n * 1e3, 3)}
        if not same:
            figures[label]["onnxruntime_tokens"] = ort_tokens  # type: ignore[index]
            figures[label]["tensorrt_tokens"] = trt_tokens  # type: ignore[index]
    figures["match"] = match
    return figures


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cache-dir", type=Path, default=REPO / "var" / "trt-cache")
    p.add_argument("--atol", type=float, default=2e-3)
    p.add_argument("--tokens", type=int, default=32, help="greedy tokens per decoder prompt")
    p.add_argument("--max-batch", type=int, default=4)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--models", default=",".join(MODELS))
    args = p.parse_args()
    wanted = set(args.models.split(","))
    if unknown := wanted - set(MODELS):
        p.error(f"unknown models {sorted(unknown)}; choose from {', '.join(MODELS)}")
    caps, trt, cuda = detect()
    if trt is None:
        print(json.dumps({"gpu_check": "skipped", "reason": caps.reason,
                          "needs": "a GPU machine: an NVIDIA GPU, its CUDA driver, and the "
                                   "tensorrt and pycuda packages"}))
        return 2
    result: dict[str, object] = {"gpu_check": "ok", "gpu_class": caps.gpu_class,
                                 "vram_gb": caps.vram_gb, "tensorrt": caps.tensorrt_version}
    models = [("kjv-textgen", TEXTGEN, textgen_inputs)] if "kjv-textgen" in wanted else []
    if "all-minilm-l6-v2" in wanted and (MINILM / "model.onnx").is_file():
        models.append(("all-minilm-l6-v2", MINILM, minilm_inputs))
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        decoders = []
        if "tiny-decoder" in wanted:
            decoders.append(("tiny-decoder", write_model_folder(
                Path(tmp) / "tiny-decoder", layers=2, heads=4, head_dim=16)))
        if "smollm2-135m-instruct" in wanted and (SMOLLM2 / "model.onnx").is_file():
            decoders.append(("smollm2-135m-instruct", SMOLLM2))
        for name, folder in decoders:
            figures = check_decoder(folder, trt, cuda, caps.gpu_class, args)
            ok = ok and bool(figures["match"])
            result[name] = figures
    for name, folder, make_inputs in models:
        onnx_bytes = (folder / "model.onnx").read_bytes()
        digest = sha256_hex(onnx_bytes)
        cpu = OnnxRuntimeBackend().load(onnx_bytes, digest=digest)
        backend = TensorRTBackend(trt, cuda, gpu_class=caps.gpu_class, cache_dir=args.cache_dir)
        t0 = time.perf_counter()
        gpu = backend.load(onnx_bytes, digest=digest)
        build_s = time.perf_counter() - t0
        again = TensorRTBackend(trt, cuda, gpu_class=caps.gpu_class, cache_dir=args.cache_dir)
        t0 = time.perf_counter()
        again.load(onnx_bytes, digest=digest)
        reload_s = time.perf_counter() - t0
        err = compare(cpu, gpu, make_inputs(folder))
        match = err <= args.atol and again.builds == 0
        ok = ok and match
        result[name] = {"max_abs_diff": err, "match": match, "build_s": round(build_s, 3),
                        "cached_load_s": round(reload_s, 3), "rebuilt_from_cache": again.builds}
    if not ok:
        result["gpu_check"] = "mismatch"
    print(json.dumps(result))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
