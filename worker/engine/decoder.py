"""Decoder-only language models in the Hugging Face Optimum / ONNX Runtime export layout.

A graph is a decoder when it declares ``past_key_values.<i>.key|value`` inputs. Everything the
engine needs is read from the graph itself, never configured: the layer count (how many
``past_key_values.<i>.key`` inputs), KV heads and head size (dims 1 and 3 of those inputs;
``config.json`` only when an export left them symbolic), the KV dtype, and whether
``position_ids``, ``attention_mask`` and ``use_cache_branch`` (merged decoders) are declared.
Outputs are ``logits`` [batch, sequence, vocab] and ``present.<i>.key|value``.

:class:`DecoderModel` bundles that :class:`DecoderLayout` with the folder's other files
(``tokenizer.json`` through the ``tokenizers`` library, ``generation_config.json``,
``tokenizer_config.json``) and builds the runtime feeds. A sequence's KV cache is its own
list of arrays [1, heads, length, head_dim]; :func:`batch_feeds` left-pads several sequences'
caches to one length and masks the padding, so sequences at different positions step in one
call, and :func:`split_presents` hands each sequence its new cache back. A cache entry may be
any array-like with ``shape`` and ``nbytes`` that ``np.asarray`` reads, such as the TensorRT
backend's device-resident tensors: a sequence stepped alone passes its cache back to the
runtime untouched; a batch is padded and split on the host.
:class:`DecodeSequence` is one request's generation state and :func:`decode_step` advances
any number of them by one runtime call.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tether.errors import FailedPrecondition, InvalidArgument
from worker.engine.backends import DTYPES, Session
from worker.engine.sampling import SamplingParams, StopFilter, sample
from worker.engine.tokenizers import HFTokenizer

PAST_PREFIX = "past_key_values."


@dataclass(frozen=True)
class DecoderLayout:
    layers: int
    kv_heads: int
    head_dim: int
    kv_dtype: np.dtype
    position_ids: bool
    attention_mask: bool
    use_cache_branch: bool
    logits: str = "logits"

    def empty_cache(self, batch: int = 1) -> list[np.ndarray]:
        """A zero-length cache: key and value per layer, [batch, heads, 0, head_dim]."""
        shape = (batch, self.kv_heads, 0, self.head_dim)
        return [np.zeros(shape, dtype=self.kv_dtype) for _ in range(2 * self.layers)]

    @property
    def past_names(self) -> list[str]:
        return [f"{PAST_PREFIX}{i}.{kind}" for i in range(self.layers) for kind in ("key", "value")]

    @property
    def present_names(self) -> list[str]:
        return [f"present.{i}.{kind}" for i in range(self.layers) for kind in ("key", "value")]


def is_decoder(session: Session) -> bool:
    return any(i.name.startswith(PAST_PREFIX) for i in session.inputs)


def decoder_layout(session: Session, config: Mapping[str, Any] | None = None) -> DecoderLayout:
    """The layout of a decoder graph (FAILED_PRECONDITION when the graph is not one)."""
    inputs = {i.name: i for i in session.inputs}
    outputs = {o.name: o for o in session.outputs}
    layers = 0
    while f"{PAST_PREFIX}{layers}.key" in inputs:
        layers += 1
    if not layers:
        raise FailedPrecondition("the graph has no past_key_values.0.key input")
    if "input_ids" not in inputs or "logits" not in outputs:
        raise FailedPrecondition("a decoder graph needs an input_ids input and a logits output")
    specs = []
    for i in range(layers):
        for kind in ("key", "value"):
            name = f"{PAST_PREFIX}{i}.{kind}"
            if name not in inputs or f"present.{i}.{kind}" not in outputs:
                raise FailedPrecondition(f"the graph declares {PAST_PREFIX}{i}.key but not "
                                         f"{name} and present.{i}.{kind}")
            specs.append(inputs[name])
    first = specs[0]
    if len(first.shape) != 4:
        raise FailedPrecondition(f"{PAST_PREFIX}0.key has rank {len(first.shape)}, not 4")
    if any(s.dtype != first.dtype or s.shape != first.shape for s in specs):
        raise FailedPrecondition("past_key_values inputs differ in dtype or shape across layers")
    if first.dtype not in DTYPES:
        raise FailedPrecondition(f"unsupported KV cache dtype {first.dtype}")
    cfg = config or {}
    heads, head_dim = first.shape[1], first.shape[3]
    if heads < 0:  # symbolic in the export: the config says
        heads = int(cfg.get("num_key_value_heads") or cfg.get("num_attention_heads") or -1)
    if head_dim < 0:
        n = cfg.get("num_attention_heads")
        head_dim = int(cfg.get("head_dim") or (cfg["hidden_size"] // n if n and
                                               cfg.get("hidden_size") else -1))
    if heads <= 0 or head_dim <= 0:
        raise FailedPrecondition("the KV heads or head size are symbolic in the graph and "
                                 "config.json does not give them")
    return DecoderLayout(layers=layers, kv_heads=heads, head_dim=head_dim,
                         kv_dtype=DTYPES[first.dtype], position_ids="position_ids" in inputs,
                         attention_mask="attention_mask" in inputs,
                         use_cache_branch="use_cache_branch" in inputs)


def _json(files: Mapping[str, bytes], role: str) -> dict[str, Any]:
    blob = files.get(role)
    if blob is None:
        return {}
    try:
        value = json.loads(blob)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"the model's {role} artifact is not JSON") from exc
    if not isinstance(value, dict):
        raise InvalidArgument(f"the model's {role} artifact is not a JSON object")
    return value


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, list) else [value])]


def _token_text(value: Any) -> str:
    """A special token in tokenizer_config.json: a string or an AddedToken object."""
    if isinstance(value, dict):
        return str(value.get("content", ""))
    return str(value) if value is not None else ""


@dataclass
class DecoderModel:
    """A loaded decoder: its layout, tokenizer and generation defaults."""

    layout: DecoderLayout
    tokenizer: HFTokenizer
    generation: dict[str, Any]
    config: dict[str, Any]
    tokenizer_config: dict[str, Any]
    eos_ids: frozenset[int]
    bos_token: str = ""
    eos_token: str = ""
    chat_template: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_files(cls, session: Session, tokenizer: HFTokenizer,
                   files: Mapping[str, bytes]) -> DecoderModel:
        config = _json(files, "config")
        generation = _json(files, "generation_config")
        tok_config = _json(files, "tokenizer_config")
        layout = decoder_layout(session, config)
        eos = _ids(generation.get("eos_token_id", config.get("eos_token_id")))
        eos_token = _token_text(tok_config.get("eos_token"))
        if not eos and eos_token:
            eos = _ids(tokenizer.token_to_id(eos_token))
        template = tok_config.get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        return cls(layout=layout, tokenizer=tokenizer, generation=generation, config=config,
                   tokenizer_config=tok_config, eos_ids=frozenset(eos),
                   bos_token=_token_text(tok_config.get("bos_token")), eos_token=eos_token,
                   chat_template=template if isinstance(template, str) else None)

    def sampling_defaults(self) -> dict[str, Any]:
        """Sampling defaults from generation_config.json, as ``transformers`` reads them:
        without ``do_sample`` decoding is greedy."""
        g = self.generation
        if not g.get("do_sample", False):
            return {"temperature": 0.0,
                    "repetition_penalty": float(g.get("repetition_penalty") or 1.0)}
        return {"temperature": float(g.get("temperature", 1.0)),
                "top_p": float(g.get("top_p") or 1.0), "top_k": int(g.get("top_k") or 0),
                "repetition_penalty": float(g.get("repetition_penalty") or 1.0)}

    @property
    def pad_id(self) -> int:
        pad = _ids(self.generation.get("pad_token_id", self.config.get("pad_token_id")))
        if pad:
            return pad[0]
        return min(self.eos_ids) if self.eos_ids else 0


def batch_feeds(layout: DecoderLayout, new_ids: Sequence[Sequence[int]],
                caches: Sequence[list[np.ndarray]], pad_id: int) -> dict[str, np.ndarray]:
    """Feeds for one call over several sequences.

    Sequence ``b`` feeds ``new_ids[b]`` after its cache ``caches[b]``. Sequences are
    left-padded to a common cache length and a common new-token count; the attention mask is 0
    on padding and position ids count only real tokens, so each row computes what it would
    alone.
    """
    batch = len(new_ids)
    past = [int(c[0].shape[2]) for c in caches]
    width = max(len(n) for n in new_ids)
    past_len = max(past)
    ids = np.full((batch, width), pad_id, dtype=np.int64)
    mask = np.zeros((batch, past_len + width), dtype=np.int64)
    positions = np.zeros((batch, width), dtype=np.int64)
    for b, (n, p) in enumerate(zip(new_ids, past, strict=True)):
        ids[b, width - len(n):] = n
        mask[b, past_len - p: past_len] = 1
        mask[b, past_len + width - len(n):] = 1
        positions[b, width - len(n):] = np.arange(p, p + len(n))
    feeds: dict[str, np.ndarray] = {"input_ids": ids}
    if layout.attention_mask:
        feeds["attention_mask"] = mask
    if layout.position_ids:
        feeds["position_ids"] = positions
    if layout.use_cache_branch:
        feeds["use_cache_branch"] = np.array([past_len > 0], dtype=np.bool_)
    for j, name in enumerate(layout.past_names):
        if batch == 1:
            feeds[name] = caches[0][j]
            continue
        shape = (batch, layout.kv_heads, past_len, layout.head_dim)
        stacked = np.zeros(shape, dtype=layout.kv_dtype)
        for b, p in enumerate(past):
            if p:
                stacked[b, :, past_len - p:] = np.asarray(caches[b][j])[0]
        feeds[name] = stacked
    return feeds


def split_presents(layout: DecoderLayout, out: Mapping[str, np.ndarray],
                   new_ids: Sequence[Sequence[int]],
                   caches: Sequence[list[np.ndarray]]) -> list[list[np.ndarray]]:
    """Each sequence's new cache from one call's ``present.*`` outputs, padding dropped."""
    width = max(len(n) for n in new_ids)
    if len(new_ids) == 1 and len(new_ids[0]) == width:
        return [[out[name] for name in layout.present_names]]
    past_len = max(int(c[0].shape[2]) for c in caches)
    # np.asarray: a backend may leave presents in device memory; a batch is split on the host.
    presents = [np.asarray(out[name]) for name in layout.present_names]
    result = []
    for b, (n, c) in enumerate(zip(new_ids, caches, strict=True)):
        p = int(c[0].shape[2])
        keep = np.r_[past_len - p: past_len, past_len + width - len(n): past_len + width]
        result.append([np.ascontiguousarray(a[b: b + 1, :, keep]) for a in presents])
    return result


def last_logits(out: Mapping[str, np.ndarray], layout: DecoderLayout) -> np.ndarray:
    """[batch, vocab] float logits of each row's last position."""
    logits = out[layout.logits]
    if logits.ndim == 3:
        logits = logits[:, -1, :]
    return logits


class DecodeSequence:
    """One request's generation: its KV cache, the ids to feed next, sampling and text."""

    def __init__(self, model: DecoderModel, prompt: list[int], params: SamplingParams, *,
                 max_tokens: int, min_tokens: int = 0, stops: Sequence[str] = ()) -> None:
        self.model = model
        self.params = params
        self.max_tokens = max_tokens
        self.min_tokens = min_tokens
        self.cache = model.layout.empty_cache()
        self.pending = list(prompt)  # fed at the next step: the prompt, then one token
        self.history = list(prompt)  # for the repetition penalty
        self.rng = np.random.default_rng(params.seed)
        self._text = model.tokenizer.stream(prompt)
        self._stop = StopFilter(stops)
        self._eos = np.asarray(sorted(model.eos_ids), dtype=np.int64)
        self._none = np.zeros(0, dtype=np.int64)
        self.prompt_tokens = len(prompt)
        self.generated = 0
        self.finish_reason = ""  # "stop" or "length" once done
        self.pieces: list[str] = []  # text ready to send, taken by the consumer
        self.error: Exception | None = None  # the runtime failed a step this sequence was in
        self.compute_s = 0.0  # this sequence's share of the runtime calls it rode

    @property
    def done(self) -> bool:
        return bool(self.finish_reason)

    @property
    def prefilled(self) -> bool:
        return int(self.cache[0].shape[2]) > 0

    @property
    def cache_bytes(self) -> int:
        return sum(int(a.nbytes) for a in self.cache)

    def advance(self, logits: np.ndarray, cache: list[np.ndarray]) -> None:
        """Take one step's logits row and new cache; sample and decode the next token."""
        self.cache = cache
        p = self.params
        banned = self._eos if self.generated < self.min_tokens else self._none
        token = sample(logits, self.rng, p.temperature, p.top_p, banned, top_k=p.top_k,
                       repetition_penalty=p.repetition_penalty, history=self.history)
        if token in self.model.eos_ids:
            self._finish("stop")
            return
        self.generated += 1
        self.history.append(token)
        self.pending = [token]
        piece = self._stop.push(self._text.push(token))
        if piece:
            self.pieces.append(piece)
        if self._stop.stopped:
            self._finish("stop")
        elif self.generated >= self.max_tokens:
            self._finish("length")

    def _finish(self, reason: str) -> None:
        self.finish_reason = reason
        self.pending = []
        tail = self._stop.push(self._text.flush()) + self._stop.flush()
        if tail:
            self.pieces.append(tail)


def decode_step(session: Session, seqs: Sequence[DecodeSequence]) -> None:
    """One runtime call that advances every sequence in ``seqs`` (same model) by a token."""
    model = seqs[0].model
    layout = model.layout
    new_ids = [s.pending for s in seqs]
    caches = [s.cache for s in seqs]
    out = session.run(batch_feeds(layout, new_ids, caches, model.pad_id))
    logits = last_logits(out, layout)
    for seq, cache, row in zip(seqs, split_presents(layout, out, new_ids, caches), logits,
                               strict=True):
        seq.advance(row, cache)


def decode_each(session: Session, seqs: Sequence[DecodeSequence]) -> None:
    """One call per sequence: for graphs whose padding cannot be masked (no attention_mask)."""
    for seq in seqs:
        decode_step(session, [seq])
