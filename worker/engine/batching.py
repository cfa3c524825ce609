"""Continuous batching: the active sequences of one model step together, one call per step.

Iteration-level scheduling, per loaded model (:class:`Batcher`). A request's sequence waits
until the batch has room: fewer than ``max_batch`` sequences, and its KV cache (its prompt plus
``max_tokens``, reserved up front so a running sequence never runs out) fits the worker's
:class:`BatchCapacity`, which every model's batcher shares and the heartbeat reports. Between
two steps new sequences join, and finished or cancelled ones leave at once, their reservation
released.

Each step advances every running sequence by one token in one call, then prefills the prompts
of all the sequences that joined since the last step in one more call (a model that cannot
batch prompts takes them one call each; each row computes what it would alone). A step thus
holds one decode call and at most one prefill call: joining sequences wait at most one step
for their first token, running ones at most one prefill for their next. There is no
scheduler task: the consumers of the streams drive the steps. Whichever of them asks for its
next piece when no step is running leads the next one (in a worker thread, or on the event loop
when the model's steps are short); the others wait for that step's end, then take their
pieces. A slow consumer only leaves its pieces waiting in its own sequence (at most
``max_tokens`` of them) while the others keep stepping the batch, its sequence included.
Cancellation stays prompt: a waiting consumer is cancelled at once, a leading one after its
step, and its sequence leaves the batch.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any

import trio

from tether import metrics
from tether.errors import Cancelled


class BatchCapacity:
    """The worker's batching limits and what is in use, shared by every model's batcher."""

    def __init__(self, *, max_batch: int, kv_budget_bytes: int) -> None:
        if max_batch < 1 or kv_budget_bytes < 1:
            raise ValueError("max_batch and kv_budget_bytes must be positive")
        self.max_batch = max_batch
        self.kv_budget_bytes = kv_budget_bytes
        self.kv_used_bytes = 0
        self.sequences = 0
        self._released = trio.Event()

    def take(self, kv_bytes: int) -> bool:
        if self.kv_used_bytes + kv_bytes > self.kv_budget_bytes:
            return False
        self.kv_used_bytes += kv_bytes
        self.sequences += 1
        return True

    def give_back(self, kv_bytes: int) -> None:
        self.kv_used_bytes -= kv_bytes
        self.sequences -= 1
        released, self._released = self._released, trio.Event()
        released.set()

    async def wait_release(self) -> None:
        await self._released.wait()


# The engine's runtime call: call(run_step, joining, running) runs the step synchronously,
# timed and cancellable, in a worker thread or on the event loop as the engine decides.
Call = Callable[[Callable[[list[Any], list[Any]], None], list[Any], list[Any]],
                Awaitable[None]]


class Batcher:
    """Iteration-level scheduling of one loaded model's sequences."""

    def __init__(self, prefill: Callable[[Sequence[Any]], None],
                 decode: Callable[[Sequence[Any]], None], capacity: BatchCapacity) -> None:
        self._prefill = prefill  # the prompts of several joining sequences, in one call
        self._decode = decode  # one token for each of several sequences, in one call
        self.capacity = capacity
        self.active: list[Any] = []
        self.waiting: list[tuple[Any, int]] = []  # (sequence, KV bytes it reserves), FIFO
        self._reserved: dict[int, int] = {}
        self._stepping = False
        self._step_done = trio.Event()
        self.steps = 0
        self.largest_batch = 0

    async def generate(self, seq: Any, kv_bytes: int, call: Call,
                       cancelled: Callable[[], bool]) -> AsyncGenerator[str, None]:
        """The text pieces of ``seq`` as the batch produces them; ``seq`` reserves
        ``kv_bytes`` of the KV budget while it is in the batch."""
        self.waiting.append((seq, kv_bytes))
        try:
            while True:
                while seq.pieces:
                    yield seq.pieces.pop(0)
                if seq.error is not None:
                    raise seq.error
                if seq.done:
                    return
                if cancelled():
                    raise Cancelled("inference cancelled")
                if self._stepping:
                    await self._step_done.wait()
                elif not await self._lead(call):
                    # Nothing could run: this sequence waits for KV budget another model holds.
                    await self.capacity.wait_release()
        finally:
            self._leave(seq)

    def _admit(self) -> None:
        while self.waiting and len(self.active) < self.capacity.max_batch:
            seq, kv_bytes = self.waiting[0]
            if not self.capacity.take(kv_bytes):
                return
            self.waiting.pop(0)
            self.active.append(seq)
            self._reserved[id(seq)] = kv_bytes

    def _leave(self, seq: Any) -> None:
        self.waiting = [(q, n) for q, n in self.waiting if q is not seq]
        if any(q is seq for q in self.active):
            self.active = [q for q in self.active if q is not seq]
            self.capacity.give_back(self._reserved.pop(id(seq)))

    async def _lead(self, call: Call) -> bool:
        """Run one step for the batch; False when there was nothing to run."""
        self._stepping = True
        try:
            self._admit()
            joining = [q for q in self.active if not q.prefilled and not q.done]
            running = [q for q in self.active if q.prefilled and not q.done]
            if not joining and not running:
                return False
            self.largest_batch = max(self.largest_batch, len(running))
            metrics.batch_size(len(joining) + len(running))
            try:
                await call(self._run_step, joining, running)
            except Exception as exc:
                # The runtime failed this step: every sequence in it fails with the error,
                # each in its own stream, and leaves (a retry would most likely fail again).
                for q in (*joining, *running):
                    q.error = exc
                raise
            finally:
                # Finished sequences leave now, their text kept for their consumers.
                for q in [q for q in self.active if q.done or q.error is not None]:
                    self._leave(q)
            self.steps += 1
            return True
        finally:
            self._stepping = False
            done, self._step_done = self._step_done, trio.Event()
            done.set()

    def _run_step(self, joining: list[Any], running: list[Any]) -> None:
        if running:
            t0 = time.perf_counter()
            self._decode(running)
            share = (time.perf_counter() - t0) / len(running)  # usage bills each its part
            for q in running:
                q.compute_s += share
        if joining:
            t0 = time.perf_counter()
            self._prefill(joining)
            # Usage bills each prompt its share of the call, by prompt length.
            spent = time.perf_counter() - t0
            weights = [max(q.prompt_tokens, 1) for q in joining]
            for q, w in zip(joining, weights, strict=True):
                q.compute_s += spent * w / sum(weights)
