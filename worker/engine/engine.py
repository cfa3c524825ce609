"""ExecutionEngine: runs one ``Infer.Request`` on a loaded model and streams payloads.

The worker service calls :meth:`ExecutionEngine.stream`, which returns an
:class:`InferenceStream`: an async iterator of ``tether.v1.Payload`` whose ``usage`` is complete
once it is exhausted. The runtime is called one step at a time: in a worker thread
(``trio.to_thread``) when a step may be long, on the event loop when the model's measured step
time says it is short (see ``INLINE_STEP_S``). Between two steps the stream checks trio's
cancellation and its :class:`CancelFlag`, so cancellation is prompt either way. Text
generation requests of one model share their steps (continuous batching,
:mod:`worker.engine.batching`), within ``max_batch`` sequences per model and the engine's
KV-cache budget (``capacity``, reported in the worker's heartbeat).

Tasks and the model contracts they rely on (see ``worker/models/README.md``):

* text generation, two contracts told apart by the graph's inputs:

  - decoder-only language models in the Hugging Face Optimum export layout (inputs
    ``past_key_values.<i>.key|value``; see :mod:`worker.engine.decoder`), with the folder's
    ``tokenizer.json``, ``generation_config.json`` and ``tokenizer_config.json`` (its chat
    template renders ``input.messages``, see :mod:`worker.engine.chat`);
  - the GRU contract — inputs ``input_ids`` [1, T] int64, ``state``; outputs ``logits``
    [1, V], ``state_out`` — with a word tokenizer.

  The prompts of the sequences joining the batch are one call, then each step advances every
  sequence of the batch by one token in one call (KV cache or state carried over); text is
  streamed as soon as it is sampled. Sampling is in
  :mod:`worker.engine.sampling`: greedy (temperature 0), temperature, top-k, top-p,
  repetition penalty, stop strings, and a per-request seed.
* embedding — inputs ``input_ids``, ``attention_mask`` (and ``token_type_ids`` if declared)
  [B, S] int64; first output [B, D] float32. One payload per input text.
* tensor — named tensors checked against the session's inputs (name, type, shape, byte
  length); one payload per output tensor.

Bad input raises :class:`tether.errors.InvalidArgument` before any compute starts.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import Any

import numpy as np
import trio

from tether import limits
from tether.errors import (
    Cancelled,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    TetherError,
)
from tether.v1 import infer_pb2, registry_pb2, tensor_pb2
from worker.engine.backends import DTYPES, IOSpec, data_type_of
from worker.engine.batching import BatchCapacity, Batcher
from worker.engine.chat import render_chat
from worker.engine.decoder import (
    DecoderModel,
    DecodeSequence,
    decode_each,
    decode_step,
    is_decoder,
)
from worker.engine.gru import (
    BATCHED_STEP,
    GruSequence,
    batched_step_graph,
    gru_decode,
    gru_prefill,
    gru_prefill_each,
)
from worker.engine.sampling import SamplingParams, sample
from worker.engine.tokenizers import HFTokenizer, WordPieceTokenizer, WordTokenizer
from worker.loader import LoadedModel, ModelLoader

__all__ = ["CancelFlag", "ExecutionEngine", "InferenceStream", "embedding_feeds", "sample",
           "sampling_params", "tensors_to_feeds"]

# Sampling defaults of the GRU contract (a decoder's come from its generation_config.json).
GRU_DEFAULTS = {"temperature": 0.8, "top_p": 0.95}
LEGACY_GREEDY_BELOW = 1e-4  # GenerationParams.temperature below this decodes greedily
# Sequences of one model stepped together. Large enough that a burst of requests all get a
# seat at once (time to first token stays flat); the KV budget bounds it further, since each
# sequence reserves its whole cache (prompt + max_tokens) before it joins.
DEFAULT_MAX_BATCH = 32
DEFAULT_KV_BUDGET_BYTES = 1 << 30  # KV caches of every running sequence, all models
# Generation steps expected to take less than this run on the event loop rather than in a
# thread: small models skip a thread round trip (~0.1 ms). A stream running inline gives the
# scheduler a turn at least every YIELD_EVERY_S, so the loop stalls for at most that plus one
# step; consumers that send each payload over the network yield more often anyway.
INLINE_STEP_S = 0.002
YIELD_EVERY_S = 0.01
EMBEDDING_BATCH = 16  # texts per runtime call: bounds the time between cancellation checks


class CancelFlag:
    """Set from anywhere to stop a stream at its next step."""

    def __init__(self) -> None:
        self._cancelled = False

    def cancel(self) -> None:
        self._cancelled = True

    @property
    def cancelled(self) -> bool:
        return self._cancelled


class InferenceStream:
    """Payloads of one request, then ``usage`` (filled as the stream runs)."""

    def __init__(self, gen: Callable[[InferenceStream], AsyncGenerator[infer_pb2.Payload, None]],
                 usage: infer_pb2.Usage) -> None:
        self._usage = usage
        self.compute_s = 0.0
        #: Why a text generation ended ("stop" or "length"), once it has.
        self.finish_reason = ""
        self.first_payload_s: float | None = None
        self.last_yield_s = time.perf_counter()  # the caller just yielded to get here
        self._started = time.perf_counter()
        #: Whether the next payload (or the end) is there now, so that ``__anext__`` will
        #: not wait: its consumer may then take it too and send both at once. A stream
        #: that cannot tell says False.
        self.ready: Callable[[], bool] = lambda: False
        self._gen = gen(self)

    def progress(self, output_tokens: int, compute_s: float) -> None:
        """Record what the run has produced so far: its output tokens and compute time."""
        self._usage.output_tokens = output_tokens
        self.compute_s = compute_s

    @property
    def usage(self) -> infer_pb2.Usage:
        """Tokens in and out so far, and compute time (complete once the stream is over)."""
        self._usage.compute_ms = int(self.compute_s * 1000)
        return self._usage

    def __aiter__(self) -> InferenceStream:
        return self

    async def __anext__(self) -> infer_pb2.Payload:
        payload = await self._gen.__anext__()
        if self.first_payload_s is None:
            self.first_payload_s = time.perf_counter() - self._started
        return payload

    async def aclose(self) -> None:
        await self._gen.aclose()


class ExecutionEngine:
    def __init__(self, loader: ModelLoader, *, inline_step_s: float = INLINE_STEP_S,
                 max_batch: int = DEFAULT_MAX_BATCH,
                 kv_budget_bytes: int = DEFAULT_KV_BUDGET_BYTES) -> None:
        self.loader = loader
        self.inline_step_s = inline_step_s
        self.capacity = BatchCapacity(max_batch=max_batch, kv_budget_bytes=kv_budget_bytes)

    async def load(self, record: registry_pb2.ModelRecord) -> LoadedModel:
        return await self.loader.load(record)

    def stream(self, request: infer_pb2.Infer.Request, *,
               model: LoadedModel | None = None,
               cancel: CancelFlag | None = None) -> InferenceStream:
        """Run ``request`` on ``model`` (default: the loaded model it names)."""
        m = model if model is not None else self.loader.get(request.model_id, request.version)
        flag = cancel or CancelFlag()
        usage = infer_pb2.Usage(tenant_id=request.tenant_id, model_id=m.model_id,
                                version=m.version)
        task = m.task
        run: Callable[..., AsyncGenerator[infer_pb2.Payload, None]]
        if task == registry_pb2.TASK_TEXT_GENERATION:
            prepared: Any = (self._prepare_decoder(request, m) if self.decoder_of(m) is not None
                             else self._prepare_text(request, m))
            self._check_fits(m, prepared)
            run = self._run_batched
        elif task == registry_pb2.TASK_EMBEDDING:
            prepared = self._prepare_embedding(request, m)
            run = self._run_embedding
        elif task == registry_pb2.TASK_TENSOR:
            prepared = self._prepare_tensor(request, m)
            run = self._run_tensor
        else:
            raise FailedPrecondition(f"{m.model_id} declares no runnable task")

        def gen(s: InferenceStream) -> AsyncGenerator[infer_pb2.Payload, None]:
            return run(s, m, prepared, flag)

        return InferenceStream(gen, usage)

    # --------------------------------------------------------------- helpers

    @staticmethod
    async def _call(s: InferenceStream, flag: CancelFlag, fn: Callable[..., Any], *args: Any,
                    inline: bool = False) -> Any:
        """One runtime call, in a worker thread (or inline for short steps), timed."""
        if flag.cancelled:
            raise Cancelled("inference cancelled")
        t0 = time.perf_counter()
        if not inline:
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                return await trio.to_thread.run_sync(fn, *args)
            finally:
                s.compute_s += time.perf_counter() - t0
        # Cancellation is checked at every step; the scheduler gets control back at least
        # every YIELD_EVERY_S (a scheduler pass per token measured ~15 us a token here).
        if t0 - s.last_yield_s >= YIELD_EVERY_S:
            s.last_yield_s = t0
            await trio.lowlevel.checkpoint()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        out = fn(*args)
        s.compute_s += time.perf_counter() - t0
        return out

    # ------------------------------------------------------- text generation

    @staticmethod
    def decoder_of(m: LoadedModel) -> DecoderModel | None:
        """The model's decoder view when its graph is in the decoder layout (else None)."""
        if "decoder" not in m.extra:
            decoder = None
            if is_decoder(m.session):
                if not isinstance(m.tokenizer, HFTokenizer):
                    raise FailedPrecondition(f"{m.model_id} is a decoder without a Hugging "
                                             "Face tokenizer.json artifact")
                decoder = DecoderModel.from_files(m.session, m.tokenizer, m.files)
            m.extra["decoder"] = decoder
        return m.extra["decoder"]

    def _check_lengths(self, m: LoadedModel, prompt_tokens: int,
                       p: infer_pb2.GenerationParams) -> int:
        """The request's max_tokens, after checking the prompt and length limits."""
        limit = m.record.capabilities.max_input_length or limits.DEFAULT_MAX_INPUT
        if prompt_tokens > limit:
            raise InvalidArgument(f"prompt is {prompt_tokens} tokens, {m.model_id} takes at "
                                  f"most {limit}", details={"limit": str(limit)})
        return limits.check_generation(p)

    def _prepare_decoder(self, req: infer_pb2.Infer.Request, m: LoadedModel) -> DecodeSequence:
        d = self.decoder_of(m)
        assert d is not None
        kind = req.input.WhichOneof("kind")
        if kind == "text":
            ids = d.tokenizer.encode(req.input.text)
        elif kind == "messages":
            prompt = render_chat(d.chat_template,
                                 [(msg.role, msg.content) for msg in req.input.messages.messages],
                                 bos_token=d.bos_token, eos_token=d.eos_token)
            ids = d.tokenizer.encode(prompt, add_special_tokens=False)
        else:
            raise InvalidArgument(f"{m.model_id} generates text: send input.text (a prompt) "
                                  "or input.messages (a conversation)")
        if not ids:
            raise InvalidArgument("the prompt is empty")
        max_tokens = self._check_lengths(m, len(ids), req.params)
        params = sampling_params(req.params, d.sampling_defaults())
        return DecodeSequence(d, ids, params, max_tokens=max_tokens,
                              min_tokens=req.params.min_tokens, stops=check_stops(req.params))

    def _prepare_text(self, req: infer_pb2.Infer.Request, m: LoadedModel) -> GruSequence:
        kind = req.input.WhichOneof("kind")
        if kind == "messages":
            raise InvalidArgument(f"{m.model_id} has no chat template: send a prompt "
                                  "(input.text, /v1/completions) instead of messages",
                                  details={"field": "messages"})
        if kind != "text":
            raise InvalidArgument(f"{m.model_id} generates text: send input.text (a prompt)")
        tok = m.tokenizer
        if not isinstance(tok, WordTokenizer):
            raise FailedPrecondition(f"{m.model_id} has no word tokenizer")
        ids = [tok.eos_id, *tok.encode(req.input.text)]
        p = req.params
        max_tokens = self._check_lengths(m, len(ids) - 1, p)
        params = sampling_params(p, GRU_DEFAULTS)
        state_spec = next((i for i in m.session.inputs if i.name == "state"), None)
        if state_spec is None or any(d < 0 for d in state_spec.shape):
            raise FailedPrecondition(f"{m.model_id} lacks a fixed-shape 'state' input")
        return GruSequence(tok, ids, params, state_shape=state_spec.shape,
                           max_tokens=max_tokens, min_tokens=p.min_tokens,
                           stops=check_stops(p))

    # ------------------------------------------------------ continuous batching

    def batcher_of(self, m: LoadedModel) -> Batcher:
        """The model's batcher (made on first use): decoder or GRU steps."""
        # Per engine and model: two engines over one loader keep their own limits.
        batchers = m.extra.setdefault("batchers", weakref.WeakKeyDictionary())
        b = batchers.get(self)
        if b is None:
            session = m.session
            decoder = self.decoder_of(m)
            if decoder is not None and decoder.layout.attention_mask:
                # Prompts of different lengths batch like decode steps: left-padded, masked.
                b = Batcher(lambda qs: decode_step(session, qs),
                            lambda qs: decode_step(session, qs), self.capacity)
            elif decoder is not None:  # padding cannot be masked: one call per sequence
                b = Batcher(lambda qs: decode_each(session, qs),
                            lambda qs: decode_each(session, qs), self.capacity)
            else:
                b = Batcher(lambda qs: gru_prefill_each(session, qs),
                            lambda qs: self._gru_decode(m, qs), self.capacity)
            batchers[self] = b
        return b

    def _gru_decode(self, m: LoadedModel, seqs: Sequence[GruSequence]) -> None:
        """One token for each GRU sequence: alone through the shipped graph, several through
        the derived batched-step graph (per sequence when it cannot be made)."""
        batched = m.extra.get(BATCHED_STEP)
        if len(seqs) > 1 and batched is None:
            try:
                batched = self.loader.derive(m, BATCHED_STEP, batched_step_graph)
            except TetherError:
                batched = False
            m.extra[BATCHED_STEP] = batched
        if len(seqs) == 1 or not batched:
            for q in seqs:
                gru_prefill(m.session, q)
        else:
            gru_decode(batched, seqs)

    async def _run_batched(self, s: InferenceStream, m: LoadedModel,
                           seq: DecodeSequence | GruSequence,
                           flag: CancelFlag) -> AsyncGenerator[infer_pb2.Payload, None]:
        s.usage.input_tokens = seq.prompt_tokens

        # Steps expected to be short run on the event loop: a thread round trip (~0.1 ms)
        # would cost a small model a third of its step. The expectation is the model's last
        # observed time per token, kept apart for prompts and for single-token steps (none
        # yet: a thread), times the tokens fed in.
        async def call(run_step: Callable[[list[Any], list[Any]], None], joining: list[Any],
                       running: list[Any]) -> None:
            width = sum(len(q.pending) for q in joining) + len(running)
            key = "prompt_s_per_token" if joining else "step_s"
            per_token = m.extra.get(key)
            inline = per_token is not None and per_token * width < self.inline_step_s
            spent = 0.0

            def timed(joining: list[Any], running: list[Any]) -> None:
                # The step's own time, not a thread round trip's: on a loaded machine the
                # round trip alone would keep a small model's steps in threads for good.
                nonlocal spent
                t0 = time.perf_counter()
                try:
                    run_step(joining, running)
                finally:
                    spent = time.perf_counter() - t0

            await self._call(s, flag, timed, joining, running, inline=inline)
            m.extra[key] = spent / width

        pieces = self.batcher_of(m).generate(seq, self.kv_bytes(m, seq), call,
                                             lambda: flag.cancelled)
        # Pieces the batch made while this stream's consumer was away wait in seq.pieces;
        # the generator hands them (then its end) over without waiting.
        s.ready = lambda: bool(seq.pieces) or seq.done
        try:
            async for piece in pieces:
                s.progress(seq.generated, seq.compute_s)
                yield infer_pb2.Payload(text=piece)
        finally:
            await pieces.aclose()
            s.progress(seq.generated, seq.compute_s)
            s.finish_reason = seq.finish_reason

    def kv_bytes(self, m: LoadedModel, seq: DecodeSequence | GruSequence) -> int:
        """What ``seq`` reserves of the KV budget: its whole cache at max_tokens."""
        if isinstance(seq, GruSequence):
            return int(seq.state.nbytes)
        layout = seq.model.layout
        per_token = 2 * layout.layers * layout.kv_heads * layout.head_dim * \
            layout.kv_dtype.itemsize
        return per_token * (seq.prompt_tokens + seq.max_tokens)

    def _check_fits(self, m: LoadedModel, seq: DecodeSequence | GruSequence) -> None:
        need = self.kv_bytes(m, seq)
        if need > self.capacity.kv_budget_bytes:
            raise ResourceExhausted(
                f"the prompt and max_tokens need {need} bytes of KV cache; this worker's "
                f"budget is {self.capacity.kv_budget_bytes}",
                details={"kv_bytes": str(need),
                         "budget_bytes": str(self.capacity.kv_budget_bytes)})

    # -------------------------------------------------------------- embedding

    def _prepare_embedding(self, req: infer_pb2.Infer.Request, m: LoadedModel) -> list[list[int]]:
        if req.input.WhichOneof("kind") != "texts":
            raise InvalidArgument(f"{m.model_id} embeds texts: send input.texts")
        texts = list(req.input.texts.texts)
        if not texts:
            raise InvalidArgument("input.texts is empty")
        if len(texts) > limits.MAX_TEXTS:
            raise InvalidArgument(f"{len(texts)} texts in one request; at most "
                                  f"{limits.MAX_TEXTS}")
        tok = m.tokenizer
        if not isinstance(tok, WordPieceTokenizer):
            raise FailedPrecondition(f"{m.model_id} has no WordPiece tokenizer")
        limit = m.record.capabilities.max_input_length or limits.DEFAULT_MAX_INPUT
        encoded = [tok.encode(t) for t in texts]
        for i, e in enumerate(encoded):
            if len(e) > limit:
                raise InvalidArgument(f"text {i} is {len(e)} tokens, {m.model_id} takes at "
                                      f"most {limit}", details={"index": str(i),
                                                                "limit": str(limit)})
        return encoded

    async def _run_embedding(self, s: InferenceStream, m: LoadedModel, encoded: list[list[int]],
                             flag: CancelFlag) -> AsyncGenerator[infer_pb2.Payload, None]:
        names = {i.name for i in m.session.inputs}
        out_name = m.session.outputs[0].name
        s.usage.input_tokens = sum(len(e) for e in encoded)
        for start in range(0, len(encoded), EMBEDDING_BATCH):
            batch = encoded[start : start + EMBEDDING_BATCH]
            feeds = embedding_feeds(batch, names)
            out = await self._call(s, flag, m.session.run, feeds)
            for j, vec in enumerate(out[out_name]):
                yield infer_pb2.Payload(embedding=tensor_pb2.Embedding(
                    index=start + j, values=vec.astype(np.float32).tolist()))

    # ----------------------------------------------------------------- tensor

    def _prepare_tensor(self, req: infer_pb2.Infer.Request,
                        m: LoadedModel) -> dict[str, np.ndarray]:
        if req.input.WhichOneof("kind") != "tensors":
            raise InvalidArgument(f"{m.model_id} takes tensors: send input.tensors")
        return tensors_to_feeds(req.input.tensors, m.session.inputs,
                                m.record.capabilities.max_input_length)

    async def _run_tensor(self, s: InferenceStream, m: LoadedModel, feeds: dict[str, np.ndarray],
                          flag: CancelFlag) -> AsyncGenerator[infer_pb2.Payload, None]:
        s.usage.input_tokens = sum(int(a.size) for a in feeds.values())
        out = await self._call(s, flag, m.session.run, feeds)
        for spec in m.session.outputs:
            yield infer_pb2.Payload(tensor=array_to_tensor(spec.name, out[spec.name]))


def embedding_feeds(batch: list[list[int]], names: set[str]) -> dict[str, np.ndarray]:
    width = max(len(e) for e in batch)
    ids = np.zeros((len(batch), width), dtype=np.int64)
    mask = np.zeros((len(batch), width), dtype=np.int64)
    for row, e in enumerate(batch):
        ids[row, : len(e)] = e
        mask[row, : len(e)] = 1
    feeds = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in names:
        feeds["token_type_ids"] = np.zeros_like(ids)
    return feeds


def sampling_params(p: infer_pb2.GenerationParams,
                    defaults: Mapping[str, Any]) -> SamplingParams:
    """A request's sampling, its unset fields taken from ``defaults`` (the model's).

    ``temperature_value`` (with presence) wins; else the legacy ``temperature``: 0 means the
    default and below LEGACY_GREEDY_BELOW greedy. Temperature 0 is greedy decoding.
    """
    if p.HasField("temperature_value"):
        temperature = p.temperature_value
    elif p.temperature:
        temperature = 0.0 if 0 <= p.temperature < LEGACY_GREEDY_BELOW else p.temperature
    else:
        temperature = float(defaults.get("temperature", 0.0))
    if temperature < 0 or not math.isfinite(temperature):
        raise InvalidArgument("temperature must be a finite number >= 0")
    if not 0 <= p.top_p <= 1:
        raise InvalidArgument("top_p must be within [0, 1]")
    penalty = (p.repetition_penalty if p.HasField("repetition_penalty")
               else float(defaults.get("repetition_penalty", 1.0)))
    if penalty <= 0 or not math.isfinite(penalty):
        raise InvalidArgument("repetition_penalty must be a finite number > 0")
    return SamplingParams(temperature=float(temperature),
                          top_p=float(p.top_p or defaults.get("top_p", 1.0)),
                          top_k=int(p.top_k or defaults.get("top_k", 0)),
                          repetition_penalty=float(penalty), seed=p.seed or None)


def check_stops(p: infer_pb2.GenerationParams) -> list[str]:
    limits.check_stops(p)
    return list(p.stop)


def tensors_to_feeds(tmap: tensor_pb2.TensorMap, specs: list[IOSpec],
                     max_elements: int = 0) -> dict[str, np.ndarray]:
    """Check named tensors against a session's inputs and turn them into arrays."""
    by_name: Mapping[str, IOSpec] = {s.name: s for s in specs}
    feeds: dict[str, np.ndarray] = {}
    for t in tmap.tensors:
        spec = by_name.get(t.name)
        if spec is None:
            raise InvalidArgument(f"unknown input tensor {t.name!r}; the model takes "
                                  + ", ".join(sorted(by_name)))
        if t.name in feeds:
            raise InvalidArgument(f"input tensor {t.name!r} given twice")
        if t.dtype != spec.dtype:
            raise InvalidArgument(
                f"input {t.name!r} must be {tensor_pb2.DataType.Name(spec.dtype)}, "
                f"got {tensor_pb2.DataType.Name(t.dtype) if t.dtype in DTYPES else t.dtype}")
        shape = tuple(t.shape)
        if len(shape) != len(spec.shape) or any(
                d < 0 or (want >= 0 and d != want) for d, want in zip(shape, spec.shape,
                                                                       strict=True)):
            raise InvalidArgument(f"input {t.name!r} has shape {list(shape)}, the model wants "
                                  f"{[d if d >= 0 else '?' for d in spec.shape]}")
        dtype = DTYPES[t.dtype]
        count = math.prod(shape)
        if max_elements and count > max_elements:
            raise InvalidArgument(f"input {t.name!r} has {count} elements, at most "
                                  f"{max_elements}")
        if len(t.data) != count * dtype.itemsize:
            raise InvalidArgument(f"input {t.name!r} carries {len(t.data)} bytes; shape "
                                  f"{list(shape)} of {dtype} needs {count * dtype.itemsize}")
        feeds[t.name] = np.frombuffer(t.data, dtype=dtype).reshape(shape)
    missing = sorted(set(by_name) - set(feeds))
    if missing:
        raise InvalidArgument("missing input tensor(s): " + ", ".join(missing))
    return feeds


def array_to_tensor(name: str, arr: np.ndarray) -> tensor_pb2.Tensor:
    code = data_type_of(arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype)
    data = np.ascontiguousarray(arr, dtype=DTYPES[code]).tobytes()
    return tensor_pb2.Tensor(name=name, dtype=code, shape=list(arr.shape), data=data)  # type: ignore[arg-type]
