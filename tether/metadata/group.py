"""Group commit for a service's hot-path writes to the Metadata Store.

One writer task runs, one after another, batches of the writes waiting when it starts,
each batch in ONE transaction (one commit, one fsync on SQLite); a write that fails is
undone alone (``MetadataStore.write_batch``). Two kinds of write:

* :meth:`GroupCommit.write` returns once its batch is committed: the orchestrator's
  admission, which must be durable before dispatch. Admissions arriving together share
  a commit.
* :meth:`GroupCommit.defer` returns at once (write-behind): the orchestrator's
  finalisation and usage. A deferred write rides with the next batch, or is flushed on its
  own after ``linger_s``; at most ``max_pending`` wait (then ``defer`` waits for room).

What a deferred write costs on a crash: a process killed before its batch committed
loses it. The orchestrator's job record still shows the job's outcome: the job stays
running under a dead owner, and the owner's restart (or a peer, after its lease) fails it
naming that orchestrator (``orchestrator.service``), giving its quota back. :meth:`flush`
waits until everything deferred so far is committed (a drain, a read of a job).

While the writer task is not running (tests that drive a service without it, or after it
stopped), writes run at once, each in its own transaction, as they would without it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import trio

from tether import blocking
from tether.metadata.store import MetadataStore

log = logging.getLogger("tether.metadata.group")

T = TypeVar("T")
#: How long a deferred write waits for a batch to ride with before it is flushed alone.
LINGER_S = 0.05
#: Deferred writes waiting at most; then ``defer`` waits for the next flush.
MAX_PENDING = 1024
#: Writes in one transaction at most.
MAX_BATCH = 256


class _Write:
    __slots__ = ("done", "op", "result")

    def __init__(self, op: Callable[[Any], Any]) -> None:
        self.op = op
        self.done = trio.Event()
        self.result: Any = None


class GroupCommit:
    """Batches of writes to ``store``, one transaction each (see the module docstring)."""

    def __init__(self, store: MetadataStore, *, linger_s: float = LINGER_S,
                 max_pending: int = MAX_PENDING, max_batch: int = MAX_BATCH) -> None:
        self.store = store
        self.linger_s = linger_s
        self.max_pending = max_pending
        self.max_batch = max_batch
        self._durable: list[_Write] = []
        self._deferred: list[_Write] = []
        self._wake = trio.Event()
        self._room = trio.Event()
        self._running = False
        self._halted = False
        self._flush_now = False
        #: The deferred writes of the batch being committed (out of ``_deferred`` by then).
        self._committing: list[_Write] = []
        #: Batches committed, and writes in them (for tests and metrics).
        self.batches = 0
        self.written = 0

    @property
    def pending(self) -> int:
        """Deferred writes not yet committed."""
        return len(self._deferred)

    async def write(self, op: Callable[[Any], T]) -> T:
        """Run ``op(session)`` in the next batch; its result once the batch is committed
        (its exception raised)."""
        if not self._running:
            return await blocking.run_sync(lambda: _unwrap(self.store.write_batch([op])[0]))
        w = _Write(op)
        self._durable.append(w)
        self._wake.set()
        # Not cancelled while its batch runs: a write that commits is one its caller knows
        # of (a cancellation then arrives at the caller's next checkpoint).
        with trio.CancelScope(shield=True):
            await w.done.wait()
        return _unwrap(w.result)

    async def defer(self, op: Callable[[Any], Any]) -> None:
        """Write ``op(session)`` behind: with the next batch, or within ``linger_s``. A
        failure is logged (the job's owner then fails it, as after a crash)."""
        if self._halted:
            return
        if not self._running:
            result = await blocking.run_sync(lambda: self.store.write_batch([op])[0])
            _log_failure(result)
            return
        while len(self._deferred) >= self.max_pending:
            self._wake.set()
            await self._room.wait()
        self._deferred.append(_Write(op))
        if len(self._deferred) == 1:
            self._wake.set()  # the writer starts its linger

    async def flush(self) -> None:
        """Return once every write deferred before this call is committed."""
        if not self._running:
            return
        if self._deferred:
            last = self._deferred[-1]
            self._flush_now = True
            self._wake.set()
        elif self._committing:  # taken by the batch being committed now
            last = self._committing[-1]
        else:
            return
        await last.done.wait()

    def halt(self) -> None:
        """Write nothing more, deferred writes included (a killed process, in tests)."""
        self._halted = True
        self._deferred.clear()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        """The writer: until cancelled; then it writes what is pending before it returns
        (unless halted), and later writes run at once."""
        self._running = True
        task_status.started()
        try:
            while not self._halted:
                if not self._durable and not self._deferred:
                    await self._next_wake()
                    continue
                # Only deferred writes: they wait, for a while, for a batch to ride with.
                with trio.move_on_after(self.linger_s):
                    while not (self._durable or self._flush_now
                               or len(self._deferred) >= self.max_pending):
                        await self._next_wake()
                self._flush_now = False
                await self._write_batch()
        finally:
            self._running = False
            if not self._halted:  # stopped, not killed: what is pending is written now
                with trio.CancelScope(shield=True):
                    while self._durable or self._deferred:
                        await self._write_batch()

    async def _next_wake(self) -> None:
        await self._wake.wait()
        self._wake = trio.Event()

    async def _write_batch(self) -> None:
        durable = self._durable[: self.max_batch]
        deferred = self._deferred[: self.max_batch - len(durable)]
        del self._durable[: len(durable)]
        del self._deferred[: len(deferred)]
        self._room.set()
        self._room = trio.Event()
        batch = durable + deferred
        if not batch:
            return
        self._committing = deferred
        with trio.CancelScope(shield=True):  # a batch begun is finished and reported
            try:
                results = await blocking.run_sync(
                    lambda: self.store.write_batch([w.op for w in batch]))
            finally:
                self._committing = []
        self.batches += 1
        self.written += len(batch)
        for w, result in zip(batch, results, strict=True):
            w.result = result
            w.done.set()
        for w in deferred:
            _log_failure(w.result)


def _unwrap(result: Any) -> Any:
    if isinstance(result, BaseException):
        raise result
    return result


def _log_failure(result: Any) -> None:
    if isinstance(result, Exception):
        log.warning("a deferred write failed (its job's owner will fail the job): %s", result)
