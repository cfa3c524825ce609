#!/usr/bin/env python3
"""Tiny random-weight decoder-only language models in the Hugging Face Optimum ONNX layout.

Test fixtures, not language models: the weights are random. The graph has the inputs and
outputs that ``optimum-cli export onnx --task text-generation-with-past`` gives a decoder:

- inputs ``input_ids`` int64 [batch, sequence], ``attention_mask`` int64
  [batch, past_sequence + sequence], ``position_ids`` int64 [batch, sequence] (optional; when
  absent the graph derives positions from the mask), and per layer
  ``past_key_values.<i>.key|value`` [batch, heads, past_sequence, head_dim] in fp32 or fp16;
- outputs ``logits`` float32 [batch, sequence, vocab] and ``present.<i>.key|value``
  [batch, heads, past_sequence + sequence, head_dim] in the KV dtype.

Each layer is a pre-norm block: scaled dot-product attention with a causal and padding mask
(from ``attention_mask``) over the past KV concatenated with the new one (grouped-query when
``kv_heads`` is below ``heads``), then a ReLU MLP.
:func:`write_model_folder` writes the graph with a byte-level BPE ``tokenizer.json`` (trained
with the ``tokenizers`` library on a small text), ``config.json``, ``generation_config.json``,
``tokenizer_config.json`` (with a chat template) and a ``model.json``.

    python tools/tiny_decoder.py OUT_DIR --layers 2 --heads 4 --head-dim 8
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + message['role']) }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = (
    "In the beginning was the word, and the word was with the model. The quick brown fox "
    "jumps over the lazy dog; zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich. "
    "Tokens stream one at a time, and every sequence in a batch steps together. "
) * 20


class DecoderGraph:
    """Graph-building pieces shared by the decoders written here (this module's random-weight
    fixtures and the converted pretrained models of ``tools/build_smollm2.py``): the sizes and
    the causal-and-padding mask from ``attention_mask``, attention over the past KV cache
    concatenated with the new one (grouped-query when ``kv_heads < heads``), and the Optimum
    inputs and outputs."""

    def __init__(self, *, layers: int, heads: int, head_dim: int, kv_heads: int | None = None,
                 kv_dtype: str = "float32") -> None:
        self.layers, self.heads, self.head_dim = layers, heads, head_dim
        self.kv_heads = kv_heads or heads
        if heads % self.kv_heads:
            raise ValueError(f"{heads} query heads do not group over {self.kv_heads} KV heads")
        self.kv_dtype = kv_dtype
        self.kv_type = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}[kv_dtype]
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.const("one", np.array(1, dtype=np.int64))
        self.const("zero", np.array(0, dtype=np.int64))
        self.const("axis1", np.array([1], dtype=np.int64))
        self.const("axis2", np.array([2], dtype=np.int64))
        self.const("neg", np.array(-1e9, dtype=np.float32))
        self.const("scale", np.array(1 / np.sqrt(head_dim), dtype=np.float32))
        self.const("split_heads", np.array([0, 0, heads, head_dim], dtype=np.int64))
        self.const("split_kv_heads", np.array([0, 0, self.kv_heads, head_dim], dtype=np.int64))
        # Query heads grouped by the KV head they share: [B, kv_heads, group, S, head_dim].
        self.const("group_heads", np.array([0, self.kv_heads, heads // self.kv_heads, -1,
                                            head_dim], dtype=np.int64))
        self.const("merge_groups", np.array([0, heads, -1, head_dim], dtype=np.int64))
        self.const("merge_heads", np.array([0, 0, heads * head_dim], dtype=np.int64))

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.array(value, order="C"), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    def sizes_and_mask(self) -> None:
        """``S`` new tokens, ``P`` past, ``T`` = P + S, and ``visible`` [B, 1, S, T]: key j is
        visible to query i when j <= P + i and attention_mask[j] = 1."""
        node = self.node
        node("Shape", ["input_ids"], "ids_shape")
        node("Gather", ["ids_shape", "one"], "S", axis=0)
        node("Shape", ["attention_mask"], "mask_shape")
        node("Gather", ["mask_shape", "one"], "T", axis=0)
        node("Sub", ["T", "S"], "P")
        node("Range", ["zero", "S", "one"], "q_idx")
        node("Add", ["q_idx", "P"], "q_abs")
        node("Unsqueeze", ["q_abs", "axis1"], "q_col")
        node("Range", ["zero", "T", "one"], "k_idx")
        node("LessOrEqual", ["k_idx", "q_col"], "causal")
        node("Cast", ["attention_mask"], "pad_bool", to=TensorProto.BOOL)
        node("Unsqueeze", ["pad_bool", self.const("axes12", np.array([1, 2], np.int64))], "pad4")
        node("And", ["causal", "pad4"], "visible")
        node("Unsqueeze", ["visible", "axis2"], "visible5")  # [B, 1, 1, S, T] for the groups

    def positions_from_mask(self) -> str:
        """Positions counted from the mask (left padding keeps real tokens at 0, 1, ...)."""
        node = self.node
        node("CumSum", ["attention_mask", "one"], "mask_cumsum")
        node("Sub", ["mask_cumsum", "one"], "pos_all")
        node("Max", ["pos_all", "zero"], "pos_nonneg")
        node("Unsqueeze", ["P", self.const("axis0", np.array([0], dtype=np.int64))], "P1")
        self.const("big", np.array([1 << 30], dtype=np.int64))
        return node("Slice", ["pos_nonneg", "P1", "big", "axis1"], "pos")

    def split(self, x: str, name: str, kv: bool = False) -> str:
        """[B, S, heads * head_dim] -> [B, heads, S, head_dim]."""
        self.node("Reshape", [x, "split_kv_heads" if kv else "split_heads"], name + "_4")
        return self.node("Transpose", [name + "_4"], name + "_h", perm=[0, 2, 1, 3])

    def attention(self, i: int, q: str, k: str, v: str) -> str:
        """Layer ``i``'s attention: ``q`` [B, heads, S, D], ``k`` and ``v`` [B, kv_heads, S, D]
        (fp32) join the past cache as ``present.<i>.*``; returns [B, S, heads * D]."""
        node, p = self.node, f"l{i}_"
        if self.kv_dtype != "float32":
            k = node("Cast", [k], p + "k_kv", to=self.kv_type)
            v = node("Cast", [v], p + "v_kv", to=self.kv_type)
        k_all = node("Concat", [f"past_key_values.{i}.key", k], f"present.{i}.key", axis=2)
        v_all = node("Concat", [f"past_key_values.{i}.value", v], f"present.{i}.value", axis=2)
        if self.kv_dtype != "float32":
            k_all = node("Cast", [k_all], p + "k_f", to=TensorProto.FLOAT)
            v_all = node("Cast", [v_all], p + "v_f", to=TensorProto.FLOAT)
        # Each KV head serves a group of query heads: broadcasting over the group axis shares
        # it without copying the cache.
        node("Reshape", [q, "group_heads"], p + "q_g")
        node("Transpose", [k_all], p + "kT", perm=[0, 1, 3, 2])
        node("Unsqueeze", [p + "kT", "axis2"], p + "kT_g")
        node("Unsqueeze", [v_all, "axis2"], p + "v_g")
        node("MatMul", [p + "q_g", p + "kT_g"], p + "scores_raw")
        node("Mul", [p + "scores_raw", "scale"], p + "scores")
        node("Where", ["visible5", p + "scores", "neg"], p + "masked")
        node("Softmax", [p + "masked"], p + "probs", axis=-1)
        node("MatMul", [p + "probs", p + "v_g"], p + "ctx_g")
        node("Reshape", [p + "ctx_g", "merge_groups"], p + "ctx_h")
        node("Transpose", [p + "ctx_h"], p + "ctx_t", perm=[0, 2, 1, 3])
        return node("Reshape", [p + "ctx_t", "merge_heads"], p + "ctx")

    def model(self, name: str, vocab: int, *, position_ids: bool = True,
              producer: str = "tether") -> onnx.ModelProto:
        """The graph with the Optimum inputs and outputs (the nodes must write ``logits``)."""
        kv_shape: list[str | int] = ["batch", self.kv_heads, "past_sequence", self.head_dim]
        present_shape: list[str | int] = ["batch", self.kv_heads, "total_sequence",
                                          self.head_dim]
        inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64,
                                                ["batch", "sequence"]),
                  helper.make_tensor_value_info("attention_mask", TensorProto.INT64,
                                                ["batch", "total_sequence"])]
        if position_ids:
            inputs.append(helper.make_tensor_value_info("position_ids", TensorProto.INT64,
                                                        ["batch", "sequence"]))
        outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                 ["batch", "sequence", vocab])]
        for i in range(self.layers):
            for kind in ("key", "value"):
                inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}",
                                                            self.kv_type, kv_shape))
                outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}",
                                                             self.kv_type, present_shape))
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                  producer_name=producer)
        model.ir_version = 8
        return model


def build_decoder(*, layers: int = 2, heads: int = 4, head_dim: int = 8, vocab: int = 300,
                  position_ids: bool = True, kv_dtype: str = "float32", max_positions: int = 512,
                  seed: int = 0, kv_heads: int | None = None) -> bytes:
    """The ONNX bytes of a random-weight decoder (see the module docstring for its layout);
    ``kv_heads`` below ``heads``: grouped-query attention."""
    rng = np.random.default_rng(seed)
    hidden = heads * head_dim
    g = DecoderGraph(layers=layers, heads=heads, head_dim=head_dim, kv_heads=kv_heads,
                     kv_dtype=kv_dtype)
    kv_width = g.kv_heads * head_dim
    node = g.node

    def weight(name: str, shape: tuple[int, ...], scale: float) -> str:
        return g.const(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    g.sizes_and_mask()
    pos = "position_ids" if position_ids else g.positions_from_mask()
    x = node("Gather", [weight("tok_emb", (vocab, hidden), 1.0), "input_ids"], "x_tok")
    node("Gather", [weight("pos_emb", (max_positions, hidden), 0.5), pos], "x_pos")
    x = node("Add", [x, "x_pos"], "x0")

    ones = g.const("ln_scale", np.ones(hidden, dtype=np.float32))
    zeros = g.const("ln_bias", np.zeros(hidden, dtype=np.float32))
    w_scale = 1 / np.sqrt(hidden)
    for i in range(layers):
        p = f"l{i}_"
        h = node("LayerNormalization", [x, ones, zeros], p + "ln1", axis=-1)
        heads_of: dict[str, str] = {}
        for part in ("q", "k", "v"):
            width = hidden if part == "q" else kv_width
            node("MatMul", [h, weight(p + "W" + part, (hidden, width), w_scale)], p + part)
            heads_of[part] = g.split(p + part, p + part, kv=part != "q")
        ctx = g.attention(i, heads_of["q"], heads_of["k"], heads_of["v"])
        node("MatMul", [ctx, weight(p + "Wo", (hidden, hidden), w_scale)], p + "attn")
        x = node("Add", [x, p + "attn"], p + "x1")
        h = node("LayerNormalization", [x, ones, zeros], p + "ln2", axis=-1)
        node("MatMul", [h, weight(p + "W1", (hidden, 2 * hidden), w_scale)], p + "up")
        node("Relu", [p + "up"], p + "act")
        node("MatMul", [p + "act", weight(p + "W2", (2 * hidden, hidden), w_scale / 1.4)],
             p + "down")
        x = node("Add", [x, p + "down"], p + "x2")
    h = node("LayerNormalization", [x, ones, zeros], "ln_f", axis=-1)
    node("MatMul", [h, weight("lm_head", (hidden, vocab), 2 * w_scale)], "logits")
    model = g.model("tiny-decoder", vocab, position_ids=position_ids,
                    producer="tether-tiny-decoder")
    return model.SerializeToString()


def build_tokenizer(vocab: int = 300, corpus: str = CORPUS) -> str:
    """A byte-level BPE ``tokenizer.json`` (GPT-2 style) with at most ``vocab`` entries."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([corpus], trainer=trainer)
    if tok.get_vocab_size() > vocab:
        raise ValueError(f"the tokenizer has {tok.get_vocab_size()} entries, over {vocab}")
    return tok.to_str()


def write_model_folder(out: Path, *, model_id: str = "tiny-decoder", layers: int = 2,
                       heads: int = 4, head_dim: int = 8, vocab: int = 300,
                       position_ids: bool = True, kv_dtype: str = "float32",
                       seed: int = 0, chat_template: str | None = CHAT_TEMPLATE,
                       generation: dict | None = None, kv_heads: int | None = None) -> Path:
    """An Optimum-style export folder (plus ``model.json``) for a random-weight decoder."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.onnx").write_bytes(build_decoder(
        layers=layers, heads=heads, head_dim=head_dim, vocab=vocab, position_ids=position_ids,
        kv_dtype=kv_dtype, seed=seed, kv_heads=kv_heads))
    tokenizer_json = build_tokenizer(vocab)
    (out / "tokenizer.json").write_text(tokenizer_json)
    eos = json.loads(tokenizer_json)["added_tokens"][0]["id"]  # <|endoftext|>
    (out / "config.json").write_text(json.dumps({
        "architectures": ["TinyDecoderForCausalLM"], "model_type": "tiny-decoder",
        "num_hidden_layers": layers, "num_attention_heads": heads,
        "hidden_size": heads * head_dim, "vocab_size": vocab, "max_position_embeddings": 512,
        "bos_token_id": eos, "eos_token_id": eos}, indent=2))
    (out / "generation_config.json").write_text(json.dumps(
        generation if generation is not None
        else {"bos_token_id": eos, "eos_token_id": [eos, eos + 2], "pad_token_id": eos},
        indent=2))
    tok_config: dict = {"bos_token": SPECIAL_TOKENS[0], "eos_token": SPECIAL_TOKENS[0],
                        "pad_token": SPECIAL_TOKENS[0]}
    if chat_template is not None:
        tok_config["chat_template"] = chat_template
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2))
    (out / "model.json").write_text(json.dumps({
        "model_id": model_id, "version": "1.0", "task": "text_generation",
        "description": "random-weight decoder (test fixture)", "max_input_length": 256,
        "files": {"model": "model.onnx", "tokenizer": "tokenizer.json",
                  "config": "config.json", "generation_config": "generation_config.json",
                  "tokenizer_config": "tokenizer_config.json"}}, indent=2))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--model-id", default="tiny-decoder")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=None, help="grouped-query attention")
    p.add_argument("--vocab", type=int, default=300)
    p.add_argument("--no-position-ids", action="store_true")
    p.add_argument("--kv-dtype", choices=["float32", "float16"], default="float32")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    write_model_folder(a.out, model_id=a.model_id, layers=a.layers, heads=a.heads,
                       head_dim=a.head_dim, vocab=a.vocab, position_ids=not a.no_position_ids,
                       kv_dtype=a.kv_dtype, seed=a.seed, kv_heads=a.kv_heads)
    print(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
