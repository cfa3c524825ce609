"""The end of a run-loop tick: where writes made during the tick go out together.

trio runs the tasks that are runnable in batches; after each batch, before it polls for
I/O, it calls its instruments' ``before_io_wait``. One instrument per run (installed on
first use) calls, there:

1. the callbacks registered with :func:`at_tick_end` during this tick, once each, in
   order (a connection's messages written by several tasks in one tick leave as one
   frame: see ``protomux.Mux``'s coalescing);
2. then the hooks added with :func:`add_hook`, on every tick (a UDX socket's pure ACKs,
   which a data packet sent by step 1 may have carried already).

Nothing waits for a tick to fill: a tick ends as soon as the tasks runnable at its start
have run (Node's ``process.nextTick`` plays this part in Node's protomux ``cork``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

log = logging.getLogger("p2p_transport.tick")

Hook = Callable[[float], None]


class _TickEnd(trio.abc.Instrument):
    def __init__(self) -> None:
        self.pending: list[Callable[[], None]] = []
        self.hooks: list[Hook] = []

    def before_io_wait(self, timeout: float) -> None:
        # A callback may register another (bounded: each runs once per registration).
        for _ in range(16):
            if not self.pending:
                break
            pending, self.pending = self.pending, []
            for callback in pending:
                _call(callback)
        for hook in list(self.hooks):
            _call(hook, timeout)


def _call(fn: Callable[..., None], *args: float) -> None:
    # An exception escaping an instrument makes trio remove it: every later tick's
    # callbacks would never run (writes left queued). A failing callback is logged alone.
    try:
        fn(*args)
    except Exception:
        log.exception("tick-end callback %r failed", fn)


_INSTRUMENT: trio.lowlevel.RunVar[_TickEnd] = trio.lowlevel.RunVar("p2p_transport_tick")


def _instrument() -> _TickEnd:
    try:
        return _INSTRUMENT.get()
    except LookupError:
        inst = _TickEnd()
        trio.lowlevel.add_instrument(inst)
        _INSTRUMENT.set(inst)
        return inst


def at_tick_end(callback: Callable[[], None]) -> None:
    """Call ``callback()`` once, when the tasks runnable now have run (before the run loop
    next polls for I/O)."""
    _instrument().pending.append(callback)


def add_hook(hook: Hook) -> None:
    """Call ``hook(timeout)`` at the end of every tick, after the :func:`at_tick_end`
    callbacks (``timeout`` is how long the loop will then wait: 0 while tasks are
    runnable)."""
    _instrument().hooks.append(hook)


def remove_hook(hook: Hook) -> None:
    """Stop calling ``hook`` (no-op if it is not there)."""
    inst = _instrument()
    if hook in inst.hooks:
        inst.hooks.remove(hook)
