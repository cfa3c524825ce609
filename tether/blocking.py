"""Where services run blocking calls (SQL, file I/O) from trio code.

By default a blocking call runs in a worker thread (``trio.to_thread``). Tests
that drive services under trio's virtual clock enter ``inline()`` first: calls
then run on the event loop itself, so the virtual clock cannot jump ahead
while a thread is busy and timings stay deterministic.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import trio

T = TypeVar("T")

_INLINE: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "tether_blocking_inline", default=False
)


async def run_sync(fn: Callable[[], T]) -> T:
    """Run ``fn()`` without blocking the event loop (or inline, see above)."""
    if _INLINE.get():
        await trio.lowlevel.checkpoint()
        return fn()
    return await trio.to_thread.run_sync(fn)


@contextmanager
def inline() -> Iterator[None]:
    """Run blocking calls on the event loop in this context (for tests)."""
    token = _INLINE.set(True)
    try:
        yield
    finally:
        _INLINE.reset(token)
