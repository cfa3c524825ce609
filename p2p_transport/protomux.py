"""protomux: many protocol channels over one message stream, wire-compatible with the npm
package ``protomux``.

Theory of operation. Every message of the underlying stream is one frame:
``uint channelId ‖ uint type ‖ payload``. Channel 0 is the control session (0 batch, 1 open,
2 reject, 3 close). A channel is named by ``(protocol, id)``; each side opens it with its own
local id and the two opens pair up. An open that finds no local channel asks the ``pair``
callback for that name, which may create one synchronously; otherwise it is rejected at once, as
Node does. Outgoing frames queue in :attr:`Protomux.outbox` while the :class:`Protomux` core is
fed frames with :meth:`Protomux.receive`; :class:`Mux` is the trio shell that moves them.

Errors: :class:`ProtomuxError` (a remote protocol error) for frames that break the rules; sending
on a closed channel returns ``False`` in the core and raises ``trio.ClosedResourceError`` in the
shell.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import trio

from p2p_transport import tick
from p2p_transport.cenc import DecodeError, Reader, RemoteProtocolError, Writer

__all__ = [
    "Channel",
    "ChannelMessageStream",
    "MessageStream",
    "Mux",
    "Protomux",
    "ProtomuxError",
    "Uint24FramedStream",
]

log = logging.getLogger(__name__)

#: One batch frame is split before it grows past this (protomux's MAX_BATCH).
MAX_BATCH = 8 * 1024 * 1024
#: Channel ids a remote may use at once; each costs a slot here (Node sets no bound).
MAX_REMOTE_CHANNELS = 65536
#: Seconds a closing shell waits for the stream to close gracefully.
CLOSE_TIMEOUT = 5.0

_BATCH, _OPEN, _REJECT, _CLOSE = 0, 1, 2, 3


class ProtomuxError(RemoteProtocolError):
    """The remote broke the protomux protocol; the stream should be destroyed."""


def _key(protocol: str, id_: bytes | None) -> str:
    return protocol + "##" + (id_.hex() if id_ else "")


#: One-byte ``uint`` encodings, the common case for ids and types.
_SMALL_UINT = [bytes([i]) for i in range(0xFD)]


def _uint(n: int) -> bytes:
    return _SMALL_UINT[n] if 0 <= n < 0xFD else Writer().uint(n).getvalue()


@dataclass(eq=False)
class _Info:
    key: str
    opened: int = 0
    incoming: list[int] = field(default_factory=list)  # remote ids waiting for a local channel
    outgoing: list[int] = field(default_factory=list)  # local ids waiting for the remote open


@dataclass(eq=False)
class _Remote:
    handshake: bytes
    session: Channel | None


OpenCallback = Callable[["bytes | None"], None]
MessageCallback = Callable[[int, bytes], None]
CloseCallback = Callable[[bool], None]


def _noop_open(_handshake: bytes | None) -> None:
    return None


def _noop_message(_type: int, _payload: bytes) -> None:
    return None


def _noop_close(_remote: bool) -> None:
    return None


class Channel:
    """One protocol session. Create with :meth:`Protomux.create_channel`, then :meth:`open`."""

    def __init__(self, mux: Protomux, info: _Info, protocol: str, id_: bytes | None, *,
                 has_handshake: bool, on_open: OpenCallback, on_message: MessageCallback,
                 on_close: CloseCallback) -> None:
        self.mux = mux
        self.protocol = protocol
        self.id = id_
        self.has_handshake = has_handshake
        self.on_open = on_open
        self.on_message = on_message
        self.on_close = on_close
        self.opened = False
        self.closed = False
        self.remote_handshake: bytes | None = None
        self.local_id = 0
        self.remote_id = 0
        self._info = info
        self._paired_on_create = False

    def open(self, handshake: bytes | None = None) -> None:
        """Send our open (with ``handshake`` bytes when the channel has a handshake)."""
        if self.local_id or self.closed:
            raise RuntimeError("channel already opened or closed")
        mux = self.mux
        idx = mux._free.pop() if mux._free else len(mux._local)
        if idx == len(mux._local):
            mux._local.append(None)
        self._info.opened += 1
        self.local_id = idx + 1
        mux._local[idx] = self
        if self.remote_id == 0:
            self._info.outgoing.append(self.local_id)
        w = Writer().uint8(0).uint8(_OPEN).uint(self.local_id).string(self.protocol)
        w.optional_buffer(self.id)
        if self.has_handshake and handshake is not None:
            w.raw(handshake)
        mux._write0(w.getvalue())
        if self._paired_on_create:
            self._fully_open()

    def _fully_open(self) -> None:
        if self.opened or self.closed:
            return
        remote = self.mux._remote[self.remote_id - 1]
        assert remote is not None
        self.remote_handshake = remote.handshake if self.has_handshake else None
        remote.session = self
        self.opened = True
        self.on_open(self.remote_handshake)

    def send(self, type_: int, payload: bytes) -> bool:
        """Queue one message of ``type_``. False when the channel is closed."""
        if self.closed or not self.local_id:
            return False
        mux = self.mux
        if mux._batch is not None:
            mux._push_batch(self.local_id, _uint(type_) + payload)
        else:
            mux._output(_uint(self.local_id) + _uint(type_) + payload)
        return True

    def close(self) -> None:
        if self.closed:
            return
        local_id = self.local_id
        self._close(False)
        if local_id:
            self.mux._write0(bytes([0, _CLOSE]) + _uint(local_id))

    def _close(self, is_remote: bool) -> None:
        if self.closed:
            return
        self.closed = True
        mux = self.mux
        if self.local_id:
            self._info.opened -= 1
            if self.remote_id > 0:
                mux._remote[self.remote_id - 1] = None
                self.remote_id = 0
                mux._free.append(self.local_id - 1)  # the remote acked our open: reusable
            mux._local[self.local_id - 1] = None
            self.local_id = 0
        mux._gc(self._info)
        self.on_close(is_remote)

    def cork(self) -> None:
        self.mux.cork()

    def uncork(self) -> None:
        self.mux.uncork()


class Protomux:
    """The sans-IO protomux core. Outgoing messages accumulate in :attr:`outbox`."""

    def __init__(self) -> None:
        self.outbox: list[bytes] = []
        self.on_output: Callable[[], None] | None = None
        self._local: list[Channel | None] = []
        self._free: list[int] = []
        self._remote: list[_Remote | None] = []
        self._infos: dict[str, _Info] = {}
        self._notify: dict[str, Callable[[bytes | None], None]] = {}
        self._corked = 0
        self._batch: list[tuple[int, bytes]] | None = None
        self._batch_size = 0
        self.destroyed = False

    # -- public API ---------------------------------------------------------------------

    def create_channel(self, protocol: str, id_: bytes | None = None, *,
                       handshake: bool = False, unique: bool = True,
                       on_open: OpenCallback = _noop_open,
                       on_message: MessageCallback = _noop_message,
                       on_close: CloseCallback = _noop_close) -> Channel | None:
        """A new channel for ``(protocol, id_)``, or None if one is open and ``unique``."""
        if self.destroyed:
            return None
        info = self._get(protocol, id_)
        if unique and info.opened > 0:
            return None
        ch = Channel(self, info, protocol, id_, has_handshake=handshake, on_open=on_open,
                     on_message=on_message, on_close=on_close)
        if info.incoming:
            remote_id = info.incoming.pop(0)
            r = self._remote[remote_id - 1]
            if r is None:
                return None
            ch.remote_id = remote_id
            r.session = ch
            ch._paired_on_create = True
        return ch

    def pair(self, protocol: str, id_: bytes | None,
             notify: Callable[[bytes | None], None]) -> None:
        """Call ``notify(id)`` when the remote opens ``(protocol, id_)`` (``id_`` None: any)."""
        self._notify[_key(protocol, id_)] = notify

    def unpair(self, protocol: str, id_: bytes | None) -> None:
        self._notify.pop(_key(protocol, id_), None)

    @property
    def corked(self) -> bool:
        """Messages are being collected into one batch frame (see :meth:`cork`)."""
        return self._batch is not None

    def opened(self, protocol: str, id_: bytes | None = None) -> bool:
        info = self._infos.get(_key(protocol, id_))
        return info is not None and info.opened > 0

    def cork(self) -> None:
        self._corked += 1
        if self._corked == 1:
            self._batch = []
            self._batch_size = 1

    def uncork(self) -> None:
        if self._corked == 0:
            return
        self._corked -= 1
        if self._corked == 0:
            batch, self._batch = self._batch, None
            if batch:
                self._send_batch(batch)

    def receive(self, frame: bytes) -> None:
        """Process one incoming message. Raises :class:`ProtomuxError` on protocol errors."""
        if not frame or self.destroyed:
            return
        # fast path: a channel message with one-byte id and type (the hot path of RPC)
        if len(frame) >= 2 and 0 < frame[0] < 0xFD and frame[1] < 0xFD:
            rid = frame[0]
            remote = self._remote[rid - 1] if rid <= len(self._remote) else None
            if remote is not None and remote.session is not None:
                remote.session.on_message(frame[1], frame[2:])
            return
        try:
            r = Reader(frame)
            self._decode(r.uint(), r)
        except DecodeError as exc:
            raise ProtomuxError(f"malformed protomux frame: {exc}") from exc

    def shutdown(self) -> None:
        """The stream closed: close every channel (as closed by the remote)."""
        self.destroyed = True
        for ch in list(self._local):
            if ch is not None:
                ch._close(True)

    def channels(self) -> list[Channel]:
        return [c for c in self._local if c is not None]

    # -- internals ----------------------------------------------------------------------

    def _output(self, data: bytes) -> None:
        self.outbox.append(data)
        if self.on_output is not None:
            self.on_output()

    def _write0(self, frame: bytes) -> None:
        if self._batch is not None:
            self._push_batch(0, frame[1:])
        else:
            self._output(frame)

    def _push_batch(self, local_id: int, item: bytes) -> None:
        assert self._batch is not None
        if self._batch_size >= MAX_BATCH:
            self._send_batch(self._batch)
            self._batch = []
            self._batch_size = 1
        if not self._batch or self._batch[-1][0] != local_id:
            self._batch_size += 1 + len(_uint(local_id))
        self._batch_size += len(_uint(len(item))) + len(item)
        self._batch.append((local_id, item))

    def _send_batch(self, batch: list[tuple[int, bytes]]) -> None:
        if len(batch) == 1:  # a batch of one is sent as the plain message
            local_id, item = batch[0]
            self._output(_uint(local_id) + item)
            return
        prev = batch[0][0]
        w = Writer().uint8(0).uint8(_BATCH).uint(prev)
        for local_id, item in batch:
            if local_id != prev:
                prev = local_id
                w.uint8(0).uint(prev)
            w.buffer(item)
        self._output(w.getvalue())

    def _get(self, protocol: str, id_: bytes | None) -> _Info:
        key = _key(protocol, id_)
        info = self._infos.get(key)
        if info is None:
            info = self._infos[key] = _Info(key)
        return info

    def _gc(self, info: _Info) -> None:
        if info.opened == 0 and not info.outgoing and not info.incoming:
            self._infos.pop(info.key, None)

    def _decode(self, remote_id: int, r: Reader) -> None:
        type_ = r.uint()
        if remote_id == 0:
            self._on_control(type_, r)
            return
        remote = self._remote[remote_id - 1] if remote_id <= len(self._remote) else None
        if remote is None or remote.session is None:
            return  # closed channel: a message already in the pipeline
        remote.session.on_message(type_, r.raw())

    def _on_control(self, type_: int, r: Reader) -> None:
        if type_ == _BATCH:
            self._on_batch(r)
        elif type_ == _OPEN:
            self._on_open(r)
        elif type_ == _REJECT:
            self._on_reject(r)
        elif type_ == _CLOSE:
            self._on_close(r)

    def _on_batch(self, r: Reader) -> None:
        remote_id = r.uint()
        corked = False
        try:
            while r.remaining > 0:
                n = r.uint()
                if n == 0:
                    remote_id = r.uint()
                    continue
                item = r.fixed(min(n, r.remaining))
                if r.remaining > 0 and not corked:
                    self.cork()  # answer a batch with a batch
                    corked = True
                self._decode(remote_id, Reader(item))
        finally:
            if corked:
                self.uncork()

    def _on_open(self, r: Reader) -> None:
        remote_id = r.uint()
        protocol = r.string()
        id_ = r.optional_buffer()
        handshake = r.raw()
        if remote_id == 0:
            self._reject(0)
            return
        rid = remote_id - 1
        if rid >= MAX_REMOTE_CHANNELS:
            raise ProtomuxError(f"remote opened more than {MAX_REMOTE_CHANNELS} channels")
        info = self._get(protocol, id_)
        if len(self._remote) == rid:
            self._remote.append(None)
        if rid >= len(self._remote) or self._remote[rid] is not None:
            raise ProtomuxError("Invalid open message")
        if info.outgoing:
            local_id = info.outgoing.pop(0)
            session = self._local[local_id - 1]
            if session is None:
                self._free.append(local_id - 1)  # we closed it before the remote answered
                return
            self._remote[rid] = _Remote(handshake, session)
            session.remote_id = remote_id
            session._fully_open()
            return
        self._remote[rid] = _Remote(handshake, None)
        info.incoming.append(remote_id)
        notify = self._notify.get(_key(protocol, id_)) or self._notify.get(_key(protocol, None))
        if notify is not None:
            notify(id_)
        while info.incoming:
            self._reject(info.incoming.pop(0))
        self._gc(info)

    def _reject(self, remote_id: int) -> None:
        if remote_id > 0:
            self._remote[remote_id - 1] = None
        self._write0(bytes([0, _REJECT]) + _uint(remote_id))

    def _on_reject(self, r: Reader) -> None:
        local_id = r.uint()
        for info in list(self._infos.values()):
            if local_id not in info.outgoing:
                continue
            info.outgoing.remove(local_id)
            session = self._local[local_id - 1]
            self._free.append(local_id - 1)
            if session is not None:
                session._close(True)
            self._gc(info)
            return
        raise ProtomuxError("Invalid reject message")

    def _on_close(self, r: Reader) -> None:
        remote_id = r.uint()
        if remote_id == 0:
            return
        remote = self._remote[remote_id - 1] if remote_id <= len(self._remote) else None
        if remote is not None and remote.session is not None:
            remote.session._close(True)


class MessageStream(Protocol):
    """A reliable, ordered stream of whole messages (a secret-stream, or a framed test pipe).
    A cancelled ``send_message`` sends its message whole or not at all."""

    async def send_message(self, data: bytes) -> None: ...

    async def receive_message(self) -> bytes: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class PushMessageStream(Protocol):
    """A :class:`MessageStream` that can also deliver messages from its receive path and send
    without yielding (:class:`~p2p_transport.secret_stream.SecretStream`)."""

    async def deliver(self, on_message: Callable[[bytes], None]) -> None: ...

    def send_message_nowait(self, message: bytes) -> bool: ...


class Mux:
    """The trio shell of :class:`Protomux` over a :class:`MessageStream`.

    Run :meth:`run` in a nursery; it returns when the stream ends and raises
    :class:`ProtomuxError` if the remote broke the protocol (after closing the stream).
    ``nursery`` is available to layers above for their handler tasks while it runs.
    """

    def __init__(self, stream: MessageStream, *, coalesce: bool = False) -> None:
        self.stream = stream
        self.core = Protomux()
        self.core.on_output = self._on_output
        self._wake = trio.Event()
        self._inline = 0
        self.nursery: trio.Nursery | None = None
        self.closed = trio.Event()
        self._flushing = False
        self._push: PushMessageStream | None = (stream if isinstance(stream, PushMessageStream)
                                                else None)
        #: Messages sent with :meth:`send` during one run-loop tick leave together, as one
        #: batch frame, at the tick's end (see :mod:`p2p_transport.tick`): with many calls
        #: on one connection, one packet carries what they wrote in the same tick instead
        #: of one packet each. Only while the stream takes writes at once; otherwise
        #: :meth:`send` waits for room, as without.
        self._can_write: Callable[[], bool] | None = (
            getattr(stream, "can_send_nowait", None) if coalesce and self._push else None)
        self._tick_batch = False

    def _on_output(self) -> None:
        if not self._inline:
            self._wake.set()

    def send_nowait(self, channel: Channel, type_: int, payload: bytes) -> bool:
        """Queue one message and write what is queued without yielding where the stream
        allows it; whatever could not be written goes out from :meth:`flush` or the writer
        task. False when the channel is closed."""
        push, core = self._push, self.core
        if (push is not None and not core.outbox and not self._flushing and not core.corked
                and channel.local_id and not channel.closed):
            # nothing queued ahead of it: the frame goes straight to the stream
            frame = _uint(channel.local_id) + _uint(type_) + payload
            if not push.send_message_nowait(frame):
                core.outbox.append(frame)
                self._wake.set()
            return True
        self._inline += 1
        try:
            ok = channel.send(type_, payload)
        finally:
            self._inline -= 1
        self.flush_nowait()
        return ok

    def flush_nowait(self) -> bool:
        """Write queued messages without yielding, in order, as far as the stream takes them;
        the writer task is woken for the rest. True when nothing is left queued."""
        core = self.core
        if not core.outbox:
            return True
        push = self._push
        if self._flushing or push is None:
            self._wake.set()  # the running flush, or the writer, sends them in order
            return False
        outbox = core.outbox
        i = 0
        self._flushing = True  # a frame received while writing queues behind these
        try:
            while i < len(outbox):
                if not push.send_message_nowait(outbox[i]):
                    break
                i += 1
        finally:
            self._flushing = False
            del outbox[:i]
        if outbox:
            self._wake.set()
            return False
        return True

    def _on_frame(self, frame: bytes) -> None:
        self._inline += 1
        try:
            self.core.receive(frame)
        finally:
            self._inline -= 1
        if self.core.outbox:
            self.flush_nowait()  # replies queued while handling the frame

    async def send(self, channel: Channel, type_: int, payload: bytes) -> bool:
        """Queue one message and send it from this task (no hop through the writer task),
        or, coalescing, at the end of this tick. False when the channel is closed."""
        return await self.send_batch(channel, type_, [payload])

    def _coalesce(self) -> bool:
        """Batch what is sent now until the tick's end, if the stream can take it then."""
        if self._tick_batch:
            return True
        can_write = self._can_write
        if can_write is None or self.core.outbox or self._flushing or not can_write():
            return False
        self._tick_batch = True
        self.core.cork()
        tick.at_tick_end(self._end_tick)
        return True

    def _end_tick(self) -> None:
        if not self._tick_batch:
            return
        self._tick_batch = False
        self._inline += 1  # written below, not by the writer task
        try:
            self.core.uncork()
        finally:
            self._inline -= 1
        # A stream closed meanwhile: what was queued goes nowhere, as for any late send.
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            self.flush_nowait()

    async def send_batch(self, channel: Channel, type_: int, payloads: list[bytes]) -> bool:
        """Queue several messages as one batch frame (one write to the stream, one packet
        when they fit; a batch of one is the plain message) and send it as :meth:`send`
        does. False when the channel is closed."""
        core = self.core
        self._inline += 1
        core.cork()
        try:
            coalesced = self._coalesce()
            ok = all(channel.send(type_, payload) for payload in payloads)
        finally:
            core.uncork()
            self._inline -= 1
        if coalesced:
            await trio.lowlevel.cancel_shielded_checkpoint()  # queued: as good as sent
        else:
            await self.flush()
        return ok

    async def flush(self) -> None:
        """Send every queued message now. One task flushes at a time, in order; a task that
        finds a flush in progress leaves its messages to that flusher.

        A queued message is never dropped by cancelling the flushing task: the stream sends a
        message whole or not at all, and what was not sent stays queued for the writer task
        (messages of other channels are queued here too)."""
        self._end_tick()
        if self._flushing:
            await trio.lowlevel.checkpoint()
            return
        self._flushing = True
        outbox = self.core.outbox  # the core appends to this list while we send
        sent = 0
        try:
            while sent < len(outbox):
                await self.stream.send_message(outbox[sent])
                sent += 1
        finally:
            del outbox[:sent]
            self._flushing = False
            if outbox:
                self._wake.set()

    async def _writer(self) -> None:
        # A stream that broke under a write ends this task only: the receive side sees the
        # end too, and run() returns as for any ended connection.
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                await self.flush()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                nursery.start_soon(self._writer)
                task_status.started()
                try:
                    if self._push is not None:
                        # frames are handled on the network's receive path (no task switch)
                        with contextlib.suppress(trio.BrokenResourceError,
                                                 trio.ClosedResourceError):
                            await self._push.deliver(self._on_frame)
                    else:
                        await self._pull()
                    with (trio.move_on_after(5),
                          contextlib.suppress(trio.BrokenResourceError,
                                              trio.ClosedResourceError)):
                        await self.flush()
                finally:
                    self.core.shutdown()
                    nursery.cancel_scope.cancel()
        finally:
            self.nursery = None
            self.closed.set()
            # bounded: a graceful close waits for the peer, which may be gone
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                await self.stream.aclose()

    async def _pull(self) -> None:
        while True:
            try:
                frame = await self.stream.receive_message()
            except (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError):
                return
            self._inline += 1
            try:
                self.core.receive(frame)
            finally:
                self._inline -= 1
            if self.core.outbox:
                try:
                    await self.flush()  # replies queued while handling the frame
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return

    async def aclose(self) -> None:
        """Close every channel and the stream."""
        for ch in self.core.channels():
            ch.close()
        with trio.move_on_after(5):
            await self.flush()
        self.core.shutdown()
        await self.stream.aclose()


class ChannelMessageStream:
    """A protomux channel as a :class:`MessageStream`: each message is one type-0 message.

    ``receive_message`` raises ``trio.EndOfChannel`` once the channel is closed (by either
    side) and every received message was read. The receive queue is bounded by
    ``max_buffered`` messages; past it the sender is told to slow down by a closed channel.
    """

    #: Tasks may send concurrently without a lock: each message is queued whole, in the
    #: order of the calls, before the send yields.
    atomic_sends = True

    def __init__(self, mux: Mux, protocol: str, id_: bytes | None = None, *,
                 max_buffered: int = 1024) -> None:
        self.mux = mux
        self._send, self._recv = trio.open_memory_channel[bytes](max_buffered)
        self.opened = trio.Event()
        self._ended = trio.Event()
        self._deliver: Callable[[bytes], None] | None = None
        self._deliver_error: BaseException | None = None
        ch = mux.core.create_channel(protocol, id_, on_open=self._on_open,
                                     on_message=self._on_message, on_close=self._on_close)
        if ch is None:
            raise trio.BusyResourceError(f"channel {protocol!r} is already open")
        self.channel = ch

    def open(self) -> None:
        self.channel.open()

    def _on_open(self, _handshake: bytes | None) -> None:
        self.opened.set()

    def _on_message(self, type_: int, payload: bytes) -> None:
        if type_ != 0:
            return
        deliver = self._deliver
        if deliver is not None:
            try:
                deliver(payload)
            except Exception as exc:  # ends deliver(), which re-raises it
                self._deliver_error = exc
                self._deliver = None
                self._ended.set()
            return
        try:
            self._send.send_nowait(payload)
        except trio.WouldBlock:
            log.warning("channel %s receive queue full; closing it", self.channel.protocol)
            self.channel.close()
        except trio.ClosedResourceError:
            pass

    def _on_close(self, _remote: bool) -> None:
        self.opened.set()
        self._ended.set()
        self._send.close()

    async def wait_opened(self) -> None:
        await self.opened.wait()
        if self.channel.closed:
            raise trio.ClosedResourceError("channel was rejected or closed")

    async def send_message(self, data: bytes) -> None:
        if not await self.mux.send(self.channel, 0, data):
            raise trio.ClosedResourceError("channel is closed")

    async def send_messages(self, messages: list[bytes]) -> None:
        """Send several messages in one protomux batch frame: the peer receives them in
        order, as separate messages, from one write."""
        if not await self.mux.send_batch(self.channel, 0, messages):
            raise trio.ClosedResourceError("channel is closed")

    async def receive_message(self) -> bytes:
        return await self._recv.receive()

    async def deliver(self, on_message: Callable[[bytes], None]) -> None:
        """Call ``on_message(message)`` for each message until the channel closes (then
        return): those already queued first, then each straight from the network's receive
        path, without a task switch (``on_message`` must not block). Re-raises what
        ``on_message`` raised."""
        if self._deliver is not None:
            raise trio.BusyResourceError("another task is receiving")
        while True:  # what arrived before, in order
            try:
                on_message(self._recv.receive_nowait())
            except trio.WouldBlock:
                break
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return
        if self._ended.is_set():
            return
        self._deliver = on_message
        try:
            await self._ended.wait()
        finally:
            self._deliver = None
        if self._deliver_error is not None:
            error, self._deliver_error = self._deliver_error, None
            raise error

    def receive_message_nowait(self) -> bytes:
        """A message already received, without waiting (``trio.WouldBlock`` if none): a
        reader drains what is there in one go."""
        return self._recv.receive_nowait()

    async def aclose(self) -> None:
        self.channel.close()
        self._send.close()
        await trio.lowlevel.checkpoint()


class Uint24FramedStream:
    """Messages over a byte stream, each prefixed by its uint24-LE length (secret-stream's
    framing, without encryption). Useful to run protomux over TCP or a pipe in tests and
    tools. ``receive_message`` raises ``trio.EndOfChannel`` at a clean end of stream and
    ``trio.BrokenResourceError`` if the stream ends inside a frame."""

    MAX_MESSAGE = 0xFFFFFF

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._buf = bytearray()
        self._send_lock = trio.Lock()

    async def send_message(self, data: bytes) -> None:
        if len(data) > self.MAX_MESSAGE:
            raise ValueError(f"message of {len(data)} bytes exceeds the uint24 frame limit")
        async with self._send_lock:
            await self.stream.send_all(len(data).to_bytes(3, "little") + data)

    async def receive_message(self) -> bytes:
        while True:
            if len(self._buf) >= 3:
                n = int.from_bytes(self._buf[:3], "little")
                if len(self._buf) >= 3 + n:
                    msg = bytes(self._buf[3:3 + n])
                    del self._buf[:3 + n]
                    return msg
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                if self._buf:
                    raise trio.BrokenResourceError("stream ended inside a frame")
                raise trio.EndOfChannel
            self._buf += chunk

    async def aclose(self) -> None:
        await self.stream.aclose()
