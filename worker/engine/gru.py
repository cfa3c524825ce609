"""The GRU text-generation contract (``worker/models/kjv-textgen``), one sequence at a time or
batched.

The shipped graph takes ``input_ids`` [1, T] and ``state`` [1, 1, H]: batch 1 only. To step
several sequences in one call, :func:`batched_step_graph` derives from it a graph for one
token of B sequences — the same initializers (embedding, GRU weights, output head) and the
same GRU node, with input_ids [B, 1], state [1, B, H], logits [B, V], state_out [1, B, H].
Prompts still go through the shipped graph, one sequence per call.

:class:`GruSequence` is one request's generation state; :func:`gru_prefill` and
:func:`gru_decode` advance sequences, as :mod:`worker.engine.decoder` does for decoders.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tether.errors import FailedPrecondition
from worker.engine.backends import Session
from worker.engine.sampling import SamplingParams, StopFilter, sample
from worker.engine.tokenizers import WordTokenizer

BATCHED_STEP = "gru-batched-step"  # name of the derived session (ModelLoader.derive)


def is_gru(session: Session) -> bool:
    return {i.name for i in session.inputs} == {"input_ids", "state"}


def batched_step_graph(onnx_bytes: bytes) -> bytes:
    """A graph that runs one token for B sequences with the weights of the shipped GRU graph."""
    model = onnx.load_from_string(onnx_bytes)
    g = model.graph
    by_op = {n.op_type: n for n in g.node}
    if not {"Gather", "GRU", "MatMul", "Add"} <= set(by_op):
        raise FailedPrecondition("the graph is not the GRU text-generation graph")
    gru, gather = by_op["GRU"], by_op["Gather"]
    matmul, add = by_op["MatMul"], by_op["Add"]
    hidden = next(helper.get_attribute_value(a) for a in gru.attribute
                  if a.name == "hidden_size")
    used = {gather.input[0], *gru.input[1:4], matmul.input[1], add.input[1]}
    inits = [i for i in g.initializer if i.name in used]
    inits += [numpy_helper.from_array(np.array([1], dtype=np.int64), "b_axis1"),
              numpy_helper.from_array(np.array([0], dtype=np.int64), "b_axis0"),
              numpy_helper.from_array(np.array([-1, hidden], dtype=np.int64), "b_hshape")]
    vocab = next(i for i in g.initializer if i.name == add.input[1]).dims[-1]
    nodes = [
        helper.make_node("Squeeze", ["input_ids", "b_axis1"], ["b_ids"]),  # [B]
        helper.make_node("Gather", [gather.input[0], "b_ids"], ["b_emb"]),  # [B, E]
        helper.make_node("Unsqueeze", ["b_emb", "b_axis0"], ["b_x"]),  # [1, B, E]
        helper.make_node("GRU", ["b_x", *gru.input[1:4], "", "state"], ["b_y", "state_out"],
                         hidden_size=hidden, **{a.name: helper.get_attribute_value(a)
                                                for a in gru.attribute
                                                if a.name != "hidden_size"}),
        helper.make_node("Reshape", ["b_y", "b_hshape"], ["b_h"]),  # [B, H]
        helper.make_node("MatMul", ["b_h", matmul.input[1]], ["b_mm"]),
        helper.make_node("Add", ["b_mm", add.input[1]], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "gru-batched-step",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["B", 1]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [1, "B", hidden])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", vocab]),
         helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [1, "B", hidden])],
        inits)
    out = helper.make_model(graph, opset_imports=list(model.opset_import),
                            producer_name="tether-batched-step")
    out.ir_version = model.ir_version
    return out.SerializeToString()


class GruSequence:
    """One request's generation on the GRU contract."""

    def __init__(self, tokenizer: WordTokenizer, prompt: list[int], params: SamplingParams, *,
                 state_shape: tuple[int, ...], max_tokens: int, min_tokens: int = 0,
                 stops: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.params = params
        self.max_tokens = max_tokens
        self.min_tokens = min_tokens
        self.state = np.zeros(state_shape, dtype=np.float32)
        self.pending = list(prompt)  # the eos-prefixed prompt, then one token per step
        self.history = list(prompt)
        self.prompt_tokens = len(prompt) - 1  # without the leading <eos>
        self.rng = np.random.default_rng(params.seed)
        self._banned = np.asarray(sorted(tokenizer.special_ids - {tokenizer.eos_id}),
                                  dtype=np.int64)
        self._banned_early = np.asarray(sorted(tokenizer.special_ids), dtype=np.int64)
        self._stop = StopFilter(stops)
        self.generated = 0
        self.finish_reason = ""
        self.pieces: list[str] = []
        self.error: Exception | None = None  # the runtime failed a step this sequence was in
        self.compute_s = 0.0

    @property
    def done(self) -> bool:
        return bool(self.finish_reason)

    @property
    def prefilled(self) -> bool:
        return len(self.history) > len(self.pending)

    def advance(self, logits: np.ndarray, state: np.ndarray) -> None:
        self.state = state
        p = self.params
        token = sample(logits, self.rng, p.temperature, p.top_p,
                       self._banned if self.generated >= self.min_tokens else self._banned_early,
                       top_k=p.top_k, repetition_penalty=p.repetition_penalty,
                       history=self.history)
        if token == self.tokenizer.eos_id:
            self._finish("stop")
            return
        # The first word of an answer to an empty prompt starts the text: no space before it.
        first = self.generated == 0 and self.prompt_tokens == 0
        piece = self._stop.push(self.tokenizer.decode_piece(token, first=first))
        if piece:
            self.pieces.append(piece)
        self.generated += 1
        self.history.append(token)
        self.pending = [token]
        if self._stop.stopped:
            self._finish("stop")
        elif self.generated >= self.max_tokens:
            self._finish("length")

    def _finish(self, reason: str) -> None:
        self.finish_reason = reason
        self.pending = []
        tail = self._stop.flush()  # text held back for a stop string that did not come
        if tail:
            self.pieces.append(tail)


def gru_prefill(session: Session, seq: GruSequence) -> None:
    """The prompt (or, alone, the next token) of one sequence through the shipped graph."""
    out = session.run({"input_ids": np.asarray([seq.pending], dtype=np.int64),
                       "state": seq.state})
    seq.advance(out["logits"][0], out["state_out"])


def gru_prefill_each(session: Session, seqs: Sequence[GruSequence]) -> None:
    """The prompts of several sequences, one call each (the shipped graph takes batch 1)."""
    for seq in seqs:
        gru_prefill(session, seq)


def gru_decode(batched: Session, seqs: Sequence[GruSequence]) -> None:
    """One token for each of ``seqs`` in one call of the batched step graph."""
    ids = np.asarray([s.pending for s in seqs], dtype=np.int64)
    state = np.concatenate([s.state for s in seqs], axis=1)
    out = batched.run({"input_ids": ids, "state": state})
    for b, seq in enumerate(seqs):
        seq.advance(out["logits"][b], out["state_out"][:, b: b + 1])
