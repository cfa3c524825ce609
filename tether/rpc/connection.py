"""One RPC connection: many concurrent calls in both directions over one
``MessageStream``.

Theory of operation
-------------------
Every frame is a ``tether.v1.RpcFrame`` naming a call id. The side that dialled
(``initiator=True``) numbers its calls 1, 3, 5, ...; the other side 2, 4, 6, ...
So a frame whose id has *our* parity belongs to a call we opened (the peer sends
``message``/``trailer`` on it) and any other frame to a call the peer opened
(it sends ``open``/``message``/``half_close``/``cancel``/``window``).

Per call, as client::

    send open, message, half_close      -> wait for message* then trailer
    deadline or local cancellation      -> send cancel, raise / propagate
    trailer != OK                       -> RpcError(code)

as server::

    open -> message -> half_close       -> run the handler (under the deadline)
    each response message               -> needs one credit from the client
    handler ends / raises / deadline    -> trailer with the status
    cancel from the client              -> the handler is cancelled, no trailer

A client call that has waited ``probe_after_s`` for its next message sends a
``window`` frame granting no credits: a no-op for the server, but it puts data
on the transport, so a peer whose process is gone is noticed now (its host
answers "port unreachable", or the packet goes unacknowledged) instead of when
the connection's keepalive next fires.

Batching: a client opens every call with ``accept_batch``; a server whose handler
yields several messages at once (``tether.rpc.service.Responses``: a relay forwarding
what is already waiting) sends as many as the credits allow in one ``batch`` frame,
and the client queues them as so many messages. Nothing waits to fill a batch: a
relay forwards a lone message at once, and a batch forms only from messages that
were already queued (``ResponseStream.next_batch``). A client that did not ask for
batches (an older one) gets one ``message`` frame per response.

Writes: a call's open, request and half-close go in one write, and so do a unary
response and its trailer; over a protomux channel that is one batch frame, and the
channel's mux puts what every call wrote in the same run-loop tick into one frame (see
``p2p_transport.tick``). Tasks send without a lock on such a stream (it queues each
message whole, in order).

A stream that can deliver from its receive path (a protomux channel) hands each frame to
the connection there, without a task switch; otherwise a single reader task owns the
stream's receive side. Either way frame handling never blocks on a
call: responses land in a per-call queue bounded by the credits the client
granted (``initial_window`` plus ``window`` frames), so a peer that sends more
than it was granted breaks only that call. A frame that fails to decode fails
the call its id names (if the id can be read) and the connection goes on; only
a broken stream ends every call, with UNAVAILABLE.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import trio
from google.protobuf.message import DecodeError

from tether.rpc.framing import FrameTooLarge, MessageStream
from tether.rpc.service import Handler, ServerContext
from tether.rpc.status import RpcError, RpcProtocolError, StatusCode
from tether.v1 import rpc_pb2

log = logging.getLogger("tether.rpc")

#: Response messages a client lets a server send ahead of consumption. Bounds
#: per-call buffering to ``window`` messages of at most the frame size.
DEFAULT_INITIAL_WINDOW = 32
#: Calls a peer may have open on one connection at once.
DEFAULT_MAX_CONCURRENT_CALLS = 256
#: How long a cancel or trailer may take to go out once its call is over.
_SHIELDED_SEND_TIMEOUT = 5.0
#: A client call waiting this long for its peer probes it (see the module docstring).
DEFAULT_PROBE_AFTER_S = 0.5
#: Payload bytes one batch frame carries at most (a message larger than this goes alone).
MAX_BATCH_BYTES = 256 * 1024
#: Frames the reader takes from the stream in one go when more are already there.
_READ_BURST = 64

#: Hook run on every outgoing call; may add metadata (e.g. ``traceparent``).
MetadataHook = Callable[[str, MutableMapping[str, str]], None]


@dataclass
class _Trailer:
    code: StatusCode
    message: str
    details: dict[str, str]
    metadata: dict[str, str]


@dataclass
class _ClientCall:
    call_id: int
    method: str
    window: int
    queue: deque[bytes | _Trailer | RpcError] = field(default_factory=deque)
    wakeup: trio.Event = field(default_factory=trio.Event)
    received: int = 0
    granted: int = 0
    consumed: int = 0
    finished: bool = False

    def push(self, item: bytes | _Trailer | RpcError) -> None:
        self.queue.append(item)
        self.wakeup.set()


@dataclass
class _ServerCall:
    call_id: int
    handler: Handler | None
    open: rpc_pb2.RpcOpen
    request: bytes | None = None
    credits: int = 0
    credit_event: trio.Event = field(default_factory=trio.Event)
    scope: trio.CancelScope | None = None
    started: bool = False
    cancelled_by_peer: bool = False
    #: The client takes batch frames (RpcOpen.accept_batch).
    batch: bool = False
    #: A unary handler's response, sent with the trailer.
    unary_response: bytes | None = None


def _peek_call_id(frame: bytes) -> int | None:
    """Read field 1 (call_id, varint) from a frame that failed to decode; None when there
    is none, or when it does not fit the field's uint64 (it names no call)."""
    if not frame or frame[0] != 0x08:
        return None
    value = 0
    for i, byte in enumerate(frame[1:11]):
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value if value < 1 << 64 else None
    return None


class RpcConnection:
    """Client and server side of RPC over one message stream."""

    def __init__(
        self,
        stream: MessageStream,
        *,
        initiator: bool,
        handlers: Mapping[str, Handler] | None = None,
        peer: str = "",
        initial_window: int = DEFAULT_INITIAL_WINDOW,
        max_concurrent_calls: int = DEFAULT_MAX_CONCURRENT_CALLS,
        metadata_hooks: list[MetadataHook] | None = None,
        probe_after_s: float = DEFAULT_PROBE_AFTER_S,
    ) -> None:
        if initial_window < 1:
            raise ValueError("initial_window must be at least 1")
        self.stream = stream
        self.peer = peer
        self.handlers = dict(handlers or {})
        self.initial_window = initial_window
        self.max_concurrent_calls = max_concurrent_calls
        self.metadata_hooks = list(metadata_hooks or [])
        self.probe_after_s = probe_after_s
        self._parity = 1 if initiator else 0
        self._next_id = 1 if initiator else 2
        self._client_calls: dict[int, _ClientCall] = {}
        self._server_calls: dict[int, _ServerCall] = {}
        # One sender at a time, unless the stream queues each message whole (a protomux
        # channel): then tasks sending in the same tick share one frame.
        self._send_lock: trio.Lock | None = (
            None if getattr(stream, "atomic_sends", False) else trio.Lock()
        )
        #: Sends several messages in one write (a protomux channel's batch), if it can.
        self._send_batch: Callable[[list[bytes]], Awaitable[None]] | None = getattr(
            stream, "send_messages", None
        )
        self._closed: RpcError | None = None
        self._nursery: trio.Nursery | None = None
        self._done = trio.Event()

    # ------------------------------------------------------------------ life

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read frames and serve calls until the stream ends or ``aclose``."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await self._read_loop()
                nursery.cancel_scope.cancel()
        finally:
            self._shutdown(RpcError(StatusCode.UNAVAILABLE, "connection closed"))
            self._done.set()

    async def aclose(self) -> None:
        """Close the connection: open calls end with UNAVAILABLE."""
        self._shutdown(RpcError(StatusCode.UNAVAILABLE, "connection closed locally"))
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        with trio.CancelScope(shield=True), trio.move_on_after(_SHIELDED_SEND_TIMEOUT):
            await self.stream.aclose()

    @property
    def closed(self) -> bool:
        return self._closed is not None

    async def wait_closed(self) -> None:
        """Wait until ``run`` has ended."""
        await self._done.wait()

    def statistics(self) -> dict[str, int]:
        """Open calls by direction (a snapshot)."""
        return {"client_calls": len(self._client_calls), "server_calls": len(self._server_calls)}

    def _shutdown(self, error: RpcError) -> None:
        if self._closed is None:
            self._closed = error
        for call in list(self._client_calls.values()):
            call.push(error)
        self._client_calls.clear()
        for scall in list(self._server_calls.values()):
            if scall.scope is not None:
                scall.scope.cancel()
        self._server_calls.clear()

    async def _read_loop(self) -> None:
        # A stream that delivers from its receive path (a protomux channel) hands each frame
        # over without a task switch.
        deliver: Callable[[Callable[[bytes], None]], Awaitable[None]] | None = getattr(
            self.stream, "deliver", None
        )
        if deliver is not None:
            with contextlib.suppress(
                trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError
            ):
                await deliver(self._on_raw_frame)
            return
        # A stream that can say what it already holds is drained in one go: the calls
        # those frames belong to then find them queued together.
        nowait: Callable[[], bytes] | None = getattr(self.stream, "receive_message_nowait", None)
        while True:
            try:
                raw = await self.stream.receive_message()
            except FrameTooLarge as exc:
                log.warning("rpc %s: dropped oversized frame: %s", self.peer, exc)
                continue
            except (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError):
                return
            self._on_raw_frame(raw)
            for _ in range(_READ_BURST if nowait is not None else 0):
                try:
                    raw = nowait()  # type: ignore[misc]
                except trio.WouldBlock:
                    break
                except (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                self._on_raw_frame(raw)

    async def _send(self, frame: rpc_pb2.RpcFrame, *more: rpc_pb2.RpcFrame) -> None:
        """Send frames in order; several go in one write where the stream can batch them
        (a protomux channel: one batch frame, so one packet when they fit)."""
        if self._closed is not None:
            raise self._closed
        data = frame.SerializeToString()
        batch = self._send_batch if more else None
        try:
            # Uncontended, the lock is taken without a trip through the scheduler (one
            # per frame otherwise); the stream's send is the checkpoint.
            await trio.lowlevel.checkpoint_if_cancelled()
            lock = self._send_lock
            if lock is None:  # the stream queues each send whole, in order
                await self._write(data, more, batch)
                return
            try:
                lock.acquire_nowait()
            except trio.WouldBlock:
                await lock.acquire()
            try:
                await self._write(data, more, batch)
            finally:
                lock.release()
        except FrameTooLarge as exc:
            raise RpcError(StatusCode.RESOURCE_EXHAUSTED, str(exc)) from None
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            err = RpcError(StatusCode.UNAVAILABLE, f"connection lost: {exc}")
            self._shutdown(err)
            raise err from None

    async def _write(
        self,
        data: bytes,
        more: tuple[rpc_pb2.RpcFrame, ...],
        batch: Callable[[list[bytes]], Awaitable[None]] | None,
    ) -> None:
        if batch is not None:
            await batch([data, *(f.SerializeToString() for f in more)])
        else:
            await self.stream.send_message(data)
            for f in more:
                await self.stream.send_message(f.SerializeToString())

    async def _send_quietly(self, frame: rpc_pb2.RpcFrame, *more: rpc_pb2.RpcFrame) -> None:
        """Best-effort send for cancels and trailers of calls already over."""
        with (
            trio.CancelScope(shield=True),
            trio.move_on_after(_SHIELDED_SEND_TIMEOUT),
            contextlib.suppress(RpcError),
        ):
            await self._send(frame, *more)

    # -------------------------------------------------------------- dispatch

    def _on_raw_frame(self, raw: bytes) -> None:
        try:
            frame = rpc_pb2.RpcFrame.FromString(raw)
        except DecodeError as exc:
            call_id = _peek_call_id(raw)
            log.warning("rpc %s: undecodable frame (call %s): %s", self.peer, call_id, exc)
            if call_id is not None:
                self._protocol_error(call_id, f"undecodable frame: {exc}")
            return
        kind = frame.WhichOneof("kind")
        call_id = frame.call_id
        if call_id == 0 or kind is None:
            self._protocol_error(call_id, "frame without call id or kind")
        elif call_id % 2 == self._parity:
            self._on_client_frame(call_id, kind, frame)
        else:
            self._on_server_frame(call_id, kind, frame)

    def _protocol_error(self, call_id: int, message: str) -> None:
        """Fail one call because the peer broke the protocol on it."""
        if call_id and call_id % 2 == self._parity:
            call = self._client_calls.pop(call_id, None)
            if call is not None:
                call.push(RpcProtocolError(message))
                self._spawn(self._send_quietly, _cancel_frame(call_id, message))
            return
        scall = self._server_calls.pop(call_id, None)
        if scall is not None and scall.scope is not None:
            scall.scope.cancel()
        if call_id:
            trailer = _trailer_frame(call_id, RpcProtocolError(message))
            self._spawn(self._send_quietly, trailer)

    def _spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._nursery is not None and self._closed is None:
            self._nursery.start_soon(fn, *args)

    def _on_client_frame(self, call_id: int, kind: str, frame: rpc_pb2.RpcFrame) -> None:
        call = self._client_calls.get(call_id)
        if call is None:
            return  # late frame for a call we already ended
        if kind in ("message", "batch"):
            payloads = [frame.message.payload] if kind == "message" else frame.batch.payloads
            call.received += len(payloads)
            if call.received > call.window + call.granted:
                self._protocol_error(call_id, "peer sent more messages than it was granted")
                return
            call.queue.extend(payloads)
            call.wakeup.set()
        elif kind == "trailer":
            t = frame.trailer
            self._client_calls.pop(call_id, None)
            call.push(
                _Trailer(
                    StatusCode.coerce(t.code), t.message, dict(t.details), dict(t.metadata)
                )
            )
        else:
            self._protocol_error(call_id, f"unexpected {kind!r} frame on a client call")

    def _on_open_frame(self, call_id: int, frame: rpc_pb2.RpcFrame) -> None:
        if call_id in self._server_calls:
            self._protocol_error(call_id, "call id reused while open")
            return
        if len(self._server_calls) >= self.max_concurrent_calls:
            err = RpcError(StatusCode.RESOURCE_EXHAUSTED, "too many concurrent calls")
            self._spawn(self._send_quietly, _trailer_frame(call_id, err))
            return
        handler = self.handlers.get(frame.open.method)
        self._server_calls[call_id] = _ServerCall(
            call_id, handler, frame.open, credits=max(1, frame.open.initial_window),
            batch=frame.open.accept_batch,
        )

    def _on_server_frame(self, call_id: int, kind: str, frame: rpc_pb2.RpcFrame) -> None:
        if kind == "open":
            self._on_open_frame(call_id, frame)
            return
        scall = self._server_calls.get(call_id)
        if scall is None:
            if kind not in ("cancel", "window"):
                self._protocol_error(call_id, f"{kind!r} frame for a call that is not open")
            return
        if kind == "message":
            if scall.request is not None or scall.started:
                self._protocol_error(call_id, "more than one request message")
                return
            scall.request = frame.message.payload
        elif kind == "half_close":
            if scall.started:
                self._protocol_error(call_id, "half-close sent twice")
                return
            scall.started = True
            self._spawn(self._serve_call, scall)
        elif kind == "cancel":
            self._server_calls.pop(call_id, None)
            scall.cancelled_by_peer = True
            if scall.scope is not None:
                scall.scope.cancel()
        elif kind == "window":
            scall.credits += frame.window.credits
            scall.credit_event.set()
        else:
            self._protocol_error(call_id, f"unexpected {kind!r} frame on a server call")

    # ---------------------------------------------------------------- server

    async def _serve_call(self, scall: _ServerCall) -> None:
        call_id = scall.call_id
        status: RpcError | None = None
        ctx = ServerContext(
            method=scall.open.method,
            metadata=dict(scall.open.metadata),
            deadline=(
                trio.current_time() + scall.open.timeout_ms / 1000
                if scall.open.timeout_ms
                else math.inf
            ),
            peer=self.peer,
        )
        with trio.CancelScope(deadline=ctx.deadline) as scope:
            scall.scope = scope
            if scall.cancelled_by_peer:
                scope.cancel()
            try:
                status = await self._run_handler(scall, ctx)
            except RpcError as exc:
                status = exc
            except Exception as exc:
                status = RpcError.from_exception(exc)
                if status.code == StatusCode.UNKNOWN:
                    log.exception("rpc %s: handler %s failed", self.peer, ctx.method)
        self._server_calls.pop(call_id, None)
        if scall.cancelled_by_peer or self._closed is not None:
            return
        if scope.cancelled_caught and status is None:
            status = RpcError(StatusCode.DEADLINE_EXCEEDED, "deadline exceeded on the server")
        trailer = _trailer_frame(call_id, status, metadata=ctx.trailing_metadata)
        if scall.unary_response is not None and status is None:
            # A unary call's response and its trailer go in one write.
            response = _message_frame(call_id, scall.unary_response)
            with trio.CancelScope(shield=True), trio.move_on_after(_SHIELDED_SEND_TIMEOUT):
                try:
                    await self._send(response, trailer)
                    return
                except RpcError as exc:  # e.g. a response over the frame limit
                    if self._closed is not None:
                        return
                    trailer = _trailer_frame(call_id, exc)
        await self._send_quietly(trailer)

    async def _run_handler(self, scall: _ServerCall, ctx: ServerContext) -> RpcError | None:
        handler = scall.handler
        if handler is None:
            return RpcError(StatusCode.UNIMPLEMENTED, f"unknown method {scall.open.method!r}")
        if scall.request is None:
            return RpcProtocolError("half-close before the request message")
        request = handler.parse_request(scall.request)
        if handler.spec.kind == "unary":
            response = await handler.func(request, ctx)
            # Sent with the trailer (a unary call always has the one credit it needs).
            scall.unary_response = handler.serialize_response(response)
        else:
            agen = handler.func(request, ctx)
            try:
                async for item in agen:
                    await self._send_responses(scall, handler.serialize_responses(item))
            finally:
                await agen.aclose()
        return None

    async def _send_responses(self, scall: _ServerCall, payloads: list[bytes]) -> None:
        """Send responses in order, each against one credit: as many as the credits (and
        ``MAX_BATCH_BYTES``) allow in one frame when the client takes batches."""
        i = 0
        while i < len(payloads):
            while scall.credits <= 0:
                scall.credit_event = trio.Event()
                await scall.credit_event.wait()
            end, size = i + 1, len(payloads[i])
            if scall.batch:
                limit = min(len(payloads), i + scall.credits)
                while end < limit and size + len(payloads[end]) <= MAX_BATCH_BYTES:
                    size += len(payloads[end])
                    end += 1
            frame = rpc_pb2.RpcFrame(call_id=scall.call_id)
            if end - i == 1:
                frame.message.payload = payloads[i]
            else:
                frame.batch.payloads.extend(payloads[i:end])
            scall.credits -= end - i
            await self._send(frame)
            i = end

    # ---------------------------------------------------------------- client

    def _new_call_id(self) -> int:
        call_id = self._next_id
        self._next_id += 2
        return call_id

    async def open_call(
        self,
        method: str,
        request: bytes,
        timeout: float | None,
        metadata: Mapping[str, str] | None,
    ) -> _ClientCall:
        """Start a client call: its open, request and half-close frames (the first step of
        :meth:`unary_call` and of a :class:`ResponseStream`)."""
        if self._closed is not None:
            raise self._closed
        md: dict[str, str] = {k.lower(): v for k, v in (metadata or {}).items()}
        for hook in self.metadata_hooks:
            hook(method, md)
        call = _ClientCall(self._new_call_id(), method, self.initial_window)
        self._client_calls[call.call_id] = call
        opening = rpc_pb2.RpcFrame(call_id=call.call_id)
        opening.open.method = method
        opening.open.initial_window = self.initial_window
        opening.open.accept_batch = True
        if timeout is not None:
            opening.open.timeout_ms = max(1, math.ceil(timeout * 1000))
        opening.open.metadata.update(md)
        message = _message_frame(call.call_id, request)
        close = rpc_pb2.RpcFrame(call_id=call.call_id)
        close.half_close.SetInParent()
        try:
            # One write where the stream batches (one packet for a small request).
            await self._send(opening, message, close)
        except BaseException:
            self._client_calls.pop(call.call_id, None)
            # The peer may hold a half-opened call (a stream without batches sends the frames
            # one by one): release it (it counts against its concurrent-call bound until then).
            await self._send_quietly(_cancel_frame(call.call_id, "client gave up"))
            raise
        return call

    async def next_item(self, call: _ClientCall, deadline: float) -> bytes | None:
        """The next response payload, or None after an OK trailer."""
        items = await self.next_items(call, deadline, 1)
        return items[0] if items else None

    async def next_items(self, call: _ClientCall, deadline: float, most: int) -> list[bytes]:
        """The next response payload and up to ``most - 1`` more already queued behind
        it (never waiting for those); empty after an OK trailer."""
        queue = call.queue
        # Waiting only when nothing is queued, under one cancel scope a wait (a relay
        # takes most chunks already queued: they cost no scope, no deadline bookkeeping).
        while not queue:
            now = trio.current_time()
            if now >= deadline:
                await self.abandon(call, "deadline exceeded")
                raise RpcError(StatusCode.DEADLINE_EXCEEDED, f"{call.method}: deadline exceeded")
            call.wakeup = trio.Event()
            with trio.move_on_at(min(deadline, now + self.probe_after_s)):
                await call.wakeup.wait()
            if not queue and trio.current_time() < deadline:
                await self._send(_window_frame(call.call_id, 0))  # a liveness probe
        if isinstance(queue[0], bytes):
            items: list[bytes] = []
            while queue and len(items) < most and isinstance(queue[0], bytes):
                items.append(queue.popleft())  # type: ignore[arg-type]
            call.consumed += len(items)
            if call.consumed >= max(1, call.window // 2) and not call.finished:
                grant = _window_frame(call.call_id, call.consumed)
                # Counted before it is sent: the messages it allows may arrive (and be
                # delivered, from the receive path) before this task runs again.
                call.granted += call.consumed
                call.consumed = 0
                await self._send(grant)
            return items
        item = queue.popleft()
        assert not isinstance(item, bytes)
        call.finished = True
        if isinstance(item, RpcError):
            raise item
        if item.code != StatusCode.OK:
            raise RpcError(item.code, item.message, item.details)
        return []

    async def abandon(self, call: _ClientCall, reason: str) -> None:
        """End a call from our side (deadline, cancellation, early exit)."""
        if call.finished:
            return
        call.finished = True
        if self._client_calls.pop(call.call_id, None) is not None:
            await self._send_quietly(_cancel_frame(call.call_id, reason))

    async def unary(
        self,
        method: str,
        request: bytes,
        *,
        timeout: float | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> bytes:
        """Call a unary method; returns the serialized response."""
        deadline = math.inf if timeout is None else trio.current_time() + timeout
        call = await self.open_call(method, request, timeout, metadata)
        try:
            response = await self.next_item(call, deadline)
            if response is None:
                raise RpcProtocolError(f"{method}: OK trailer without a response message")
            trailer = await self.next_item(call, deadline)
            if trailer is not None:
                raise RpcProtocolError(f"{method}: more than one response to a unary call")
            return response
        finally:
            await self.abandon(call, "client gave up")

    def server_stream(
        self,
        method: str,
        request: bytes,
        *,
        timeout: float | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> ResponseStream:
        """Call a server-streaming method: ``async with`` the result, iterate it."""
        return ResponseStream(self, method, request, timeout, metadata)


class ResponseStream:
    """The client side of a server-streaming call.

    Use as ``async with conn.server_stream(...) as responses: async for r in
    responses``. Leaving the block before the stream ends cancels the call on
    the server.
    """

    def __init__(
        self,
        conn: RpcConnection,
        method: str,
        request: bytes,
        timeout: float | None,
        metadata: Mapping[str, str] | None,
    ) -> None:
        self._conn = conn
        self._method = method
        self._request = request
        self._timeout = timeout
        self._metadata = metadata
        self._deadline = math.inf
        self._call: _ClientCall | None = None

    async def __aenter__(self) -> ResponseStream:
        if self._timeout is not None:
            self._deadline = trio.current_time() + self._timeout
        self._call = await self._conn.open_call(
            self._method, self._request, self._timeout, self._metadata
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._call is not None:
            await self._conn.abandon(self._call, "client closed the stream")

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        if self._call is None:
            raise RuntimeError("use 'async with' before iterating a ResponseStream")
        if self._call.finished:
            raise StopAsyncIteration
        item = await self._conn.next_item(self._call, self._deadline)
        if item is None:
            raise StopAsyncIteration
        return item

    async def next_batch(self, most: int = DEFAULT_INITIAL_WINDOW) -> list[bytes]:
        """The next response and those already received behind it (up to ``most``), in
        order, without waiting for more; empty once the stream has ended."""
        if self._call is None:
            raise RuntimeError("use 'async with' before iterating a ResponseStream")
        if self._call.finished:
            return []
        return await self._conn.next_items(self._call, self._deadline, most)

    async def cancel(self, reason: str = "cancelled by client") -> None:
        """Cancel the call now; the server's handler is cancelled."""
        if self._call is not None:
            await self._conn.abandon(self._call, reason)


def _message_frame(call_id: int, payload: bytes) -> rpc_pb2.RpcFrame:
    frame = rpc_pb2.RpcFrame(call_id=call_id)
    frame.message.payload = payload
    return frame


def _window_frame(call_id: int, credits: int) -> rpc_pb2.RpcFrame:
    frame = rpc_pb2.RpcFrame(call_id=call_id)
    frame.window.credits = credits
    return frame


def _cancel_frame(call_id: int, reason: str) -> rpc_pb2.RpcFrame:
    frame = rpc_pb2.RpcFrame(call_id=call_id)
    frame.cancel.reason = reason
    return frame


def _trailer_frame(
    call_id: int, status: RpcError | None, metadata: Mapping[str, str] | None = None
) -> rpc_pb2.RpcFrame:
    frame = rpc_pb2.RpcFrame(call_id=call_id)
    frame.trailer.SetInParent()
    if status is not None:
        frame.trailer.code = status.code.value
        frame.trailer.message = status.message
        frame.trailer.details.update(status.details)
    if metadata:
        frame.trailer.metadata.update(metadata)
    return frame


@asynccontextmanager
async def open_connection(
    stream: MessageStream,
    *,
    initiator: bool,
    handlers: Mapping[str, Handler] | None = None,
    **kwargs: Any,
) -> AsyncIterator[RpcConnection]:
    """Run an ``RpcConnection`` for the duration of the block."""
    conn = RpcConnection(stream, initiator=initiator, handlers=handlers, **kwargs)
    async with trio.open_nursery() as nursery:
        await nursery.start(conn.run)
        try:
            yield conn
        finally:
            await conn.aclose()
            nursery.cancel_scope.cancel()
