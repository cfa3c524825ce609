"""Tokens per second of the shipped pretrained LLM (SmolLM2-135M-Instruct, fp32 ONNX) on the
worker engine against a plain ONNX Runtime loop over the same session.

Both paths decode greedily with the end of text banned, so each run generates exactly
``--tokens`` tokens after the same prompt: the direct path is ``bench/engine_overhead.py``'s
loop of ``session.run`` calls (the KV cache fed back by name), the engine path is
``ExecutionEngine.stream``. Rounds alternate the order of the two paths; figures are medians
over rounds. Also: 4 concurrent streams with continuous batching. Needs the built model
(``tools/build_smollm2.py``). The last line printed is JSON with every figure.

    python bench/pretrained_decoder.py [--repeats 5] [--tokens 48] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from engine_overhead import batched_decoder, direct_decoder, engine_decoder  # noqa: E402

from registry.catalog import Catalog  # noqa: E402
from registry.publish import ModelPackage, publish_package  # noqa: E402
from tether.artifacts import ArtifactStore, LocalDirectoryStore  # noqa: E402
from tether.keys import KeyPair  # noqa: E402
from tether.metadata import MetadataStore  # noqa: E402
from worker.engine import ExecutionEngine, OnnxRuntimeBackend  # noqa: E402
from worker.loader import LoadedModel, ModelLoader  # noqa: E402

MODEL_ID = "smollm2-135m-instruct"


async def load_pretrained(threads: int) -> tuple[ModelLoader, LoadedModel]:
    """The model published to a throwaway registry and loaded as a worker loads it."""
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        kp = KeyPair.generate()
        store = MetadataStore.sqlite(tmp / "meta.db")
        store.migrate()
        artifacts = ArtifactStore([LocalDirectoryStore(tmp / f"r{i}") for i in range(3)],
                                  trusted_keys={kp.public_key})
        catalog = Catalog(store)
        publish_package(ModelPackage.load(REPO / "worker" / "models" / MODEL_ID), catalog,
                        artifacts, kp)
        loader = ModelLoader(artifacts, OnnxRuntimeBackend(intra_op_threads=threads),
                             budget_bytes=2 << 30)
        model = await loader.load(catalog.resolve(MODEL_ID))
        store.close()
    return loader, model


async def run(args: argparse.Namespace) -> dict:
    loader, model = await load_pretrained(args.threads)
    engine = ExecutionEngine(loader)

    direct, eng, d_first, e_first = [], [], [], []
    for i in range(args.repeats + 1):  # the first round warms up
        if i % 2 == 0:
            e = await engine_decoder(engine, model, args.tokens)
            d = direct_decoder(model, args.tokens)
        else:
            d = direct_decoder(model, args.tokens)
            e = await engine_decoder(engine, model, args.tokens)
        assert d[2] == e[2] == args.tokens, "both paths must generate every token"
        if i:
            direct.append(d[2] / d[0])
            eng.append(e[2] / e[0])
            d_first.append(d[1])
            e_first.append(e[1])
    batched = [await batched_decoder(loader, model, args.tokens, 4, 4)
               for _ in range(max(2, args.repeats // 2))]
    med = statistics.median
    return {
        "bench": "pretrained_decoder",
        "model": MODEL_ID,
        "runtime": "onnxruntime-cpu",
        "intra_op_threads": args.threads,
        "tokens_per_run": args.tokens,
        "repeats": args.repeats,
        "tokens_per_s_direct": round(med(direct), 2),
        "tokens_per_s_engine": round(med(eng), 2),
        "engine_over_direct": round(med(eng) / med(direct), 3),
        "ttft_ms_direct": round(med(d_first) * 1e3, 1),
        "ttft_ms_engine": round(med(e_first) * 1e3, 1),
        "tokens_per_s_4_streams_batched": round(med(batched), 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--tokens", type=int, default=48)
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    args = p.parse_args()
    started = time.perf_counter()
    result = trio.run(run, args)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    for key, value in result.items():
        print(f"{key:32} {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
