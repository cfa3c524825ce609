"""Train Tether's small text-generation model and export it to ONNX.

The corpus is the King James Version of the Bible (translated 1611, public domain), as shipped
by Debian's ``bible-kjv`` package (``apt-get install -y bible-kjv``; its ``bible`` command prints
the text). The model is a word-level GRU language model; words, not characters, so whatever it
says is made of real English words.

The ONNX graph is step-wise: ``input_ids`` [1, T] int64 and ``state`` [1, 1, H] float32 in,
``logits`` [1, V] (for the last position) and ``state_out`` [1, 1, H] out. A prompt goes in
one call; each further token is one call with T = 1, so the worker streams one token per step.

Training needs PyTorch (``pip install torch==2.13.0``); running the model does not. The graph
is written with ``onnx.helper`` from the trained weights, and checked against PyTorch's own
output before it is saved.

    python tools/train_textgen.py --out worker/models/kjv-textgen --minutes 8
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WORD_RE = re.compile(r"[a-z]+(?:'[a-z]+)?|[.,;:?!]")
SPECIALS = ["<pad>", "<unk>", "<eos>"]


def read_corpus() -> str:
    """Return the whole KJV text, one verse a line, without the verse references."""
    if shutil.which("bible") is None:
        raise SystemExit("the `bible` command is missing: apt-get install -y bible-kjv")
    out = subprocess.run(
        ["bible", "-f", "Gen1:1-Rev22:21"], check=True, capture_output=True, text=True
    ).stdout
    verses = [line.split(" ", 1)[1] for line in out.splitlines() if " " in line]
    return "\n".join(verses)


def tokenize(text: str) -> list[str]:
    return WORD_RE.findall(text.lower())


def build_vocab(tokens: list[str], size: int) -> list[str]:
    counts = collections.Counter(tokens)
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    return SPECIALS + words[: size - len(SPECIALS)]


def encode_corpus(text: str, index: dict[str, int]) -> np.ndarray:
    ids: list[int] = []
    unk, eos = index["<unk>"], index["<eos>"]
    for verse in text.splitlines():
        ids.extend(index.get(t, unk) for t in tokenize(verse))
        ids.append(eos)
    return np.asarray(ids, dtype=np.int64)


def train(ids: np.ndarray, vocab_size: int, args: argparse.Namespace):  # type: ignore[no-untyped-def]
    import torch
    from torch import nn

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)

    class WordGRU(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab_size, args.embed)
            self.gru = nn.GRU(args.embed, args.hidden, batch_first=True)
            self.head = nn.Linear(args.hidden, vocab_size)

        def forward(self, x, h=None):  # type: ignore[no-untyped-def]
            y, h = self.gru(self.embed(x), h)
            return self.head(y), h

    model = WordGRU()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    loss_fn = nn.CrossEntropyLoss()
    data = torch.from_numpy(ids)
    n = (len(data) - 1) // args.seq
    deadline = time.monotonic() + args.minutes * 60
    rng = np.random.default_rng(args.seed)
    step = 0
    while time.monotonic() < deadline:
        starts = rng.integers(0, n, size=args.batch) * args.seq
        x = torch.stack([data[s : s + args.seq] for s in starts])
        y = torch.stack([data[s + 1 : s + 1 + args.seq] for s in starts])
        logits, _ = model(x)
        loss = loss_fn(logits.reshape(-1, vocab_size), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 100 == 0:
            left = deadline - time.monotonic()
            print(f"step {step} loss {loss.item():.3f} ({left:.0f} s left)", flush=True)
    model.eval()
    return model


def reorder_gates(w: np.ndarray, hidden: int) -> np.ndarray:
    """PyTorch stacks GRU gates (r, z, n); ONNX wants (z, r, h)."""
    r, z, n = w[:hidden], w[hidden : 2 * hidden], w[2 * hidden :]
    return np.concatenate([z, r, n], axis=0)


def export_onnx(model, vocab_size: int, hidden: int) -> onnx.ModelProto:  # type: ignore[no-untyped-def]
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    w = reorder_gates(sd["gru.weight_ih_l0"], hidden)[None]
    r = reorder_gates(sd["gru.weight_hh_l0"], hidden)[None]
    b = np.concatenate(
        [reorder_gates(sd["gru.bias_ih_l0"], hidden), reorder_gates(sd["gru.bias_hh_l0"], hidden)]
    )[None]
    inits = [
        numpy_helper.from_array(sd["embed.weight"], "embed.weight"),
        numpy_helper.from_array(w, "gru.W"),
        numpy_helper.from_array(r, "gru.R"),
        numpy_helper.from_array(b, "gru.B"),
        numpy_helper.from_array(np.ascontiguousarray(sd["head.weight"].T), "head.weight"),
        numpy_helper.from_array(sd["head.bias"], "head.bias"),
        numpy_helper.from_array(np.asarray([0], dtype=np.int64), "axis0"),
        numpy_helper.from_array(np.asarray([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.asarray([-1], dtype=np.int64), "last"),
        numpy_helper.from_array(np.asarray([2**62], dtype=np.int64), "end"),
    ]
    nodes = [
        # [1, T] -> [T] -> [T, E] -> [T, 1, E]
        helper.make_node("Squeeze", ["input_ids", "axis0"], ["ids"]),
        helper.make_node("Gather", ["embed.weight", "ids"], ["emb"]),
        helper.make_node("Unsqueeze", ["emb", "axis1"], ["x"]),
        helper.make_node(
            "GRU",
            ["x", "gru.W", "gru.R", "gru.B", "", "state"],
            ["y", "state_out"],
            hidden_size=hidden,
            linear_before_reset=1,
        ),
        # y: [T, 1, 1, H]; keep the last step only -> [1, H]
        helper.make_node("Slice", ["y", "last", "end", "axis0"], ["y_last"]),
        helper.make_node("Reshape", ["y_last", "hshape"], ["h_last"]),
        helper.make_node("MatMul", ["h_last", "head.weight"], ["mm"]),
        helper.make_node("Add", ["mm", "head.bias"], ["logits"]),
    ]
    inits.append(numpy_helper.from_array(np.asarray([1, hidden], dtype=np.int64), "hshape"))
    graph = helper.make_graph(
        nodes,
        "kjv-textgen",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "T"]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [1, 1, hidden]),
        ],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, vocab_size]),
            helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [1, 1, hidden]),
        ],
        inits,
    )
    opset = [helper.make_opsetid("", 17)]
    m = helper.make_model(graph, opset_imports=opset, producer_name="tether")
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def check_against_torch(model, onnx_model: onnx.ModelProto, hidden: int) -> None:  # type: ignore[no-untyped-def]
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    ids = np.asarray([[5, 17, 42, 7, 3]], dtype=np.int64)
    state = np.zeros((1, 1, hidden), dtype=np.float32)
    logits, state_out = sess.run(None, {"input_ids": ids, "state": state})
    with torch.no_grad():
        ref, h = model(torch.from_numpy(ids))
    np.testing.assert_allclose(logits[0], ref[0, -1].numpy(), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(state_out[0, 0], h[0, 0].numpy(), rtol=1e-3, atol=1e-3)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("worker/models/kjv-textgen"))
    p.add_argument("--minutes", type=float, default=8.0)
    p.add_argument("--vocab", type=int, default=6000)
    p.add_argument("--embed", type=int, default=128)
    p.add_argument("--hidden", type=int, default=384)
    p.add_argument("--seq", type=int, default=48)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=1611)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    text = read_corpus()
    vocab = build_vocab(tokenize(text), args.vocab)
    index = {w: i for i, w in enumerate(vocab)}
    ids = encode_corpus(text, index)
    print(f"corpus: {len(ids)} tokens, vocabulary {len(vocab)}", flush=True)
    model = train(ids, len(vocab), args)
    onnx_model = export_onnx(model, len(vocab), args.hidden)
    check_against_torch(model, onnx_model, args.hidden)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "model.onnx").write_bytes(onnx_model.SerializeToString())
    tokenizer = {"kind": "word", "pattern": WORD_RE.pattern, "vocab": vocab, "eos": "<eos>",
                 "unk": "<unk>"}
    (args.out / "tokenizer.json").write_text(json.dumps(tokenizer, indent=0) + "\n")
    print(f"wrote {args.out / 'model.onnx'} and {args.out / 'tokenizer.json'}")


if __name__ == "__main__":
    main()
