"""Token sampling and stop strings for text generation.

:func:`sample` picks the next token from one row of logits, in the order Hugging Face's
``generate`` applies its processors: repetition penalty (over every token already in the
sequence, prompt included), then greedy argmax when the temperature is 0, else temperature,
top-k, top-p (nucleus) and a draw from the request's own random generator, so one seed always
gives the same tokens whatever else the worker runs at the time.

:class:`StopFilter` holds back generated text that could still become a stop string, and cuts
the text where one appears.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

TOP_K_CANDIDATES = 256  # partial sort before nucleus sampling (see sample())


@dataclass(frozen=True)
class SamplingParams:
    """How one request samples; ``temperature`` 0 is greedy decoding."""

    temperature: float
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k cut
    repetition_penalty: float = 1.0  # 1: off
    seed: int | None = None  # None: a fresh seed

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def sample(logits: np.ndarray, rng: np.random.Generator, temperature: float, top_p: float,
           banned: np.ndarray, *, top_k: int = 0, repetition_penalty: float = 1.0,
           history: Sequence[int] | np.ndarray = ()) -> int:
    """One token from ``logits`` [vocab]; ``banned`` ids are never picked.

    Temperature 0 is greedy (argmax). The nucleus is looked for among the TOP_K_CANDIDATES
    likeliest tokens first (a partial sort); only when they hold less than ``top_p`` of the
    mass is the whole vocabulary sorted. Either way the result is exact nucleus sampling.
    """
    if temperature == 0 and not banned.size and (repetition_penalty == 1.0 or not len(history)):
        return int(np.argmax(logits))  # plain greedy: no copy of a large vocabulary
    z = logits.astype(np.float64)  # a copy: edited in place below
    if repetition_penalty != 1.0 and len(history):
        seen = np.unique(np.asarray(history, dtype=np.int64))
        seen = seen[(seen >= 0) & (seen < z.size)]
        vals = z[seen]
        z[seen] = np.where(vals > 0, vals / repetition_penalty, vals * repetition_penalty)
    if banned.size:
        z[banned] = -np.inf
    if temperature == 0:
        return int(np.argmax(z))
    z = z / temperature
    if 0 < top_k < z.size:
        cut = np.partition(z, z.size - top_k)[z.size - top_k]
        z[z < cut] = -np.inf
    z -= z.max()
    p = np.exp(z)
    p /= p.sum()
    k = min(TOP_K_CANDIDATES, p.size)
    head = np.argpartition(-p, k - 1)[:k] if k < p.size else np.arange(p.size)
    order = head[np.argsort(-p[head], kind="stable")]
    cum = np.cumsum(p[order])
    if cum[-1] < top_p and k < p.size:
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
    keep = order[: int(np.searchsorted(cum, top_p)) + 1]
    keep = keep[p[keep] > 0]
    q = p[keep] / p[keep].sum()
    return int(keep[rng.choice(len(keep), p=q)])


class StopFilter:
    """Generated text in, text safe to send out; stops at the first stop string."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self._held = ""
        self.stopped = False

    def push(self, piece: str) -> str:
        """The part of ``piece`` (with what was held) that is certainly output."""
        if self.stopped:
            return ""
        text = self._held + piece
        if not self.stops:
            return text
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._held = ""
            return text[:cut]
        # Hold back the longest tail that is the start of some stop string.
        hold = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(text)), hold, -1):
                if text.endswith(s[:n]):
                    hold = n
                    break
        self._held = text[len(text) - hold:] if hold else ""
        return text[: len(text) - hold]

    def flush(self) -> str:
        text, self._held = self._held, ""
        return "" if self.stopped else text
