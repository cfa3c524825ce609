"""Check the TensorRT engine against ONNX Runtime on a machine with an NVIDIA GPU.

Needs the ``tensorrt`` and ``pycuda`` Python packages (NVIDIA's index) and a CUDA driver.
For each shipped model it builds a TensorRT engine from the same ONNX bytes the CPU path runs
(through ``worker.engine.tensorrt.TensorRTBackend``, so the plan cache is exercised too: the
second load must not rebuild), runs identical inputs on both engines and compares outputs.

    python tools/gpu_check.py [--cache-dir var/trt-cache] [--atol 2e-3]

Exit status: 0 all outputs match; 1 a mismatch or a failure; 2 no TensorRT or no GPU here.
The last line printed is JSON with the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tether.artifacts import sha256_hex  # noqa: E402
from worker.engine.backends import OnnxRuntimeBackend, Session  # noqa: E402
from worker.engine.detect import detect  # noqa: E402
from worker.engine.engine import embedding_feeds  # noqa: E402
from worker.engine.tensorrt import TensorRTBackend  # noqa: E402
from worker.engine.tokenizers import WordPieceTokenizer, WordTokenizer, load_tokenizer  # noqa: E402

TEXTGEN = REPO / "worker" / "models" / "kjv-textgen"
MINILM = REPO / "var" / "models" / "all-minilm-l6-v2"


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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cache-dir", type=Path, default=REPO / "var" / "trt-cache")
    p.add_argument("--atol", type=float, default=2e-3)
    args = p.parse_args()
    caps, trt, cuda = detect()
    if trt is None:
        print(json.dumps({"gpu_check": "skipped", "reason": caps.reason}))
        return 2
    result: dict[str, object] = {"gpu_check": "ok", "gpu_class": caps.gpu_class,
                                 "vram_gb": caps.vram_gb, "tensorrt": caps.tensorrt_version}
    models = [("kjv-textgen", TEXTGEN, textgen_inputs)]
    if (MINILM / "model.onnx").is_file():
        models.append(("all-minilm-l6-v2", MINILM, minilm_inputs))
    ok = True
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
