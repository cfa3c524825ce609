"""Tokenizers for the shipped models.

* :class:`WordTokenizer` — the word-level vocabulary of the text-generation model, stored as
  ``{"kind": "word", "pattern": ..., "vocab": [...]}`` by ``tools/train_textgen.py``.
* :class:`WordPieceTokenizer` — BERT WordPiece from a Hugging Face ``tokenizer.json`` (the file
  the MiniLM package ships), run by the ``tokenizers`` library so ids match the model's own.
* :class:`HFTokenizer` — any other Hugging Face ``tokenizer.json`` (byte-level BPE, Unigram,
  ...), for decoder-only language models, also run by the ``tokenizers`` library; its
  :class:`TextStream` turns generated ids into text piece by piece.

:func:`load_tokenizer` picks one from the artifact bytes.
"""

from __future__ import annotations

import json
import re
from typing import Protocol

import numpy as np
from tokenizers import Tokenizer

from tether.errors import InvalidArgument


class TextTokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...


class WordTokenizer:
    _NO_SPACE_BEFORE = frozenset(".,;:?!'")

    def __init__(self, spec: dict) -> None:
        self.pattern = re.compile(spec["pattern"])
        self.vocab: list[str] = list(spec["vocab"])
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.unk_id = self.index[spec.get("unk", "<unk>")]
        self.eos_id = self.index[spec.get("eos", "<eos>")]
        self.special_ids = {i for i, w in enumerate(self.vocab) if w.startswith("<")}

    def encode(self, text: str) -> list[int]:
        return [self.index.get(w, self.unk_id) for w in self.pattern.findall(text.lower())]

    def decode_piece(self, token_id: int, *, first: bool) -> str:
        """Text for one generated token, with the space that goes before it."""
        if not 0 <= token_id < len(self.vocab):
            raise InvalidArgument(f"token id {token_id} is outside the vocabulary")
        word = self.vocab[token_id]
        if token_id in self.special_ids:
            return ""
        if first or word[0] in self._NO_SPACE_BEFORE:
            return word
        return " " + word


class WordPieceTokenizer:
    def __init__(self, tokenizer_json: str) -> None:
        self._tok = Tokenizer.from_str(tokenizer_json)
        self._tok.no_truncation()
        self._tok.no_padding()

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text).ids)

    def encode_batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Ids and attention mask, padded with 0 to the longest text."""
        encs = [self.encode(t) for t in texts]
        width = max(len(e) for e in encs)
        ids = np.zeros((len(encs), width), dtype=np.int64)
        mask = np.zeros((len(encs), width), dtype=np.int64)
        for row, e in enumerate(encs):
            ids[row, : len(e)] = e
            mask[row, : len(e)] = 1
        return ids, mask


class HFTokenizer:
    """A Hugging Face ``tokenizer.json`` for text generation."""

    def __init__(self, tokenizer_json: str) -> None:
        self._tok = Tokenizer.from_str(tokenizer_json)
        self._tok.no_truncation()
        self._tok.no_padding()

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids, skip_special_tokens=True))

    def token_to_id(self, token: str) -> int | None:
        found = self._tok.token_to_id(token)
        return int(found) if found is not None else None

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def stream(self, prompt_ids: list[int]) -> TextStream:
        return TextStream(self, prompt_ids)


class TextStream:
    """Generated ids to text, a piece at a time.

    Decoding a token alone loses what depends on its neighbours (a byte-level BPE character
    split across tokens, a SentencePiece leading space), so each new piece is the difference
    between decoding a short window of context with and without the new tokens. A piece that
    ends in an incomplete UTF-8 character is held back until the character is complete.
    """

    CONTEXT = 6  # ids of context decoded before the new ones

    def __init__(self, tokenizer: HFTokenizer, prompt_ids: list[int]) -> None:
        self._tok = tokenizer
        self._ids = list(prompt_ids[-self.CONTEXT:])
        self._read = len(self._ids)  # ids from here on are not emitted yet
        self._before = tokenizer.decode(self._ids)  # the text of ids[:read]

    def push(self, token: int) -> str:
        """The text that ``token`` completes ("" while a character is incomplete)."""
        self._ids.append(token)
        after = self._tok.decode(self._ids)
        piece = after[len(self._before):] if len(after) > len(self._before) else ""
        if not piece or piece.endswith("\ufffd"):
            return ""
        self._read = len(self._ids)
        self._before = after
        if len(self._ids) > 4 * self.CONTEXT:  # keep the decoded window short
            self._ids = self._ids[-self.CONTEXT:]
            self._read = len(self._ids)
            self._before = self._tok.decode(self._ids)
        return piece

    def flush(self) -> str:
        """Whatever is held back, at the end of generation."""
        after = self._tok.decode(self._ids)
        piece = after[len(self._before):] if len(after) > len(self._before) else ""
        self._read = len(self._ids)
        self._before = after
        return piece


def load_tokenizer(blob: bytes) -> WordTokenizer | WordPieceTokenizer | HFTokenizer:
    try:
        spec = json.loads(blob)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument("tokenizer artifact is not JSON") from exc
    if isinstance(spec, dict) and spec.get("kind") == "word":
        try:
            return WordTokenizer(spec)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, re.error) as exc:
            raise InvalidArgument(f"word tokenizer artifact is malformed: {exc!r}") from exc
    model = spec.get("model") if isinstance(spec, dict) else None
    if isinstance(model, dict) and model.get("type") == "WordPiece":
        try:
            return WordPieceTokenizer(blob.decode())
        except Exception as exc:  # the tokenizers library raises bare Exception on bad JSON
            raise InvalidArgument(f"WordPiece tokenizer artifact is malformed: {exc}") from exc
    if isinstance(model, dict) and isinstance(spec.get("added_tokens", []), list):
        try:
            return HFTokenizer(blob.decode())
        except Exception as exc:  # the tokenizers library raises bare Exception on bad JSON
            raise InvalidArgument(f"tokenizer.json artifact is malformed: {exc}") from exc
    raise InvalidArgument("tokenizer artifact is neither a word vocabulary nor a Hugging Face "
                          "tokenizer.json")
