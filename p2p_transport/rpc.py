"""protomux-rpc and ``@hyperswarm/rpc`` semantics over a protomux channel.

Wire format (npm ``protomux-rpc``), on the channel ``"protomux-rpc"``:

* message 0, request: ``uint id ‖ string method ‖ value`` (raw). ``id = 0`` is an event: no
  response is sent.
* message 1, response: one flags byte (bit 0 error, 1 error code, 2 cause, 3 cause context),
  ``uint id``, then either the value (raw) or ``string message`` [``string code``]
  [``string cause.message``, ``string cause.code``] [``string cause.context``].

Values use the default encoding of both npm packages, ``optionalBuffer``: an empty value travels
as null. ``@hyperswarm/rpc`` names the channel with the server's public key and sends a handshake
(``uint flags ‖ [fixed32 capability]``) only when a capability key is configured; the capability
is ``BLAKE2b_h(ns ‖ [initiator] ‖ key)`` keyed by the Noise handshake hash (hyperswarm-capability).

:class:`RpcChannel` is the trio object; handlers run concurrently, so responses may go out in any
order. Errors: :class:`RpcError` carries the remote code (``UNKNOWN_METHOD``, ``REQUEST_ERROR``
with the cause, ...); :class:`RpcProtocolError` is a malformed message from the remote.
"""

from __future__ import annotations

import hmac
import inspect
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import trio

from p2p_transport.cenc import DecodeError, Reader, RemoteProtocolError, SocketAddress, Writer
from p2p_transport.crypto import NS_CAPABILITY, KeyPair, hash_batch
from p2p_transport.errors import TransportError
from p2p_transport.hyperdht import HyperDht, RawConnection, Server, secure
from p2p_transport.protomux import Channel, Mux

__all__ = [
    "PROTOCOL",
    "Handler",
    "HyperswarmRpc",
    "RpcChannel",
    "RpcError",
    "RpcProtocolError",
    "RpcRequest",
    "RpcResponse",
    "capability",
    "decode_handshake",
    "decode_request",
    "decode_response",
    "decode_value",
    "encode_handshake",
    "encode_request",
    "encode_response",
    "encode_value",
]

log = logging.getLogger(__name__)

PROTOCOL = "protomux-rpc"
_REQUEST, _RESPONSE = 0, 1
_HAS_ERROR, _HAS_CODE, _HAS_CAUSE, _HAS_CONTEXT = 1, 2, 4, 8
#: Encoded method names kept per channel (callers use a handful).
_METHOD_CACHE = 64


class RpcProtocolError(RemoteProtocolError):
    """The remote sent an RPC message or handshake that cannot be decoded."""


class RpcError(TransportError):
    """An RPC failed. ``code`` is the protomux-rpc code; ``cause_*`` describe the remote's
    underlying error for ``REQUEST_ERROR``."""

    def __init__(self, message: str, code: str | None = None, *, cause_message: str | None = None,
                 cause_code: str | None = None, cause_context: str | None = None) -> None:
        super().__init__(f"{code}: {message}" if code else message)
        self.message = message
        self.code = code
        self.cause_message = cause_message
        self.cause_code = cause_code
        self.cause_context = cause_context


@dataclass(frozen=True, slots=True)
class RpcRequest:
    id: int
    method: str
    value: bytes  # already encoded


@dataclass(frozen=True, slots=True)
class RpcResponse:
    id: int
    value: bytes | None = None  # already encoded; None when error is set
    error: RpcError | None = None


_SMALL_UINT = [bytes([i]) for i in range(0xFD)]


def _uint(n: int) -> bytes:
    """compact-encoding ``uint`` for request ids (they grow past one byte quickly)."""
    if 0 <= n < 0xFD:
        return _SMALL_UINT[n]
    if 0 <= n <= 0xFFFF:
        return b"\xfd" + n.to_bytes(2, "little")
    return Writer().uint(n).getvalue()


def encode_value(value: bytes | None) -> bytes:
    """The default value encoding (``optionalBuffer``)."""
    if not value:
        return b"\x00"
    if len(value) < 0xFD:
        return _SMALL_UINT[len(value)] + value
    return Writer().optional_buffer(value).getvalue()


def decode_value(raw: bytes) -> bytes | None:
    if raw and raw[0] < 0xFD:  # one-byte length, the common case
        n = raw[0]
        if len(raw) < 1 + n:
            raise RpcProtocolError("bad value encoding: truncated")
        return raw[1:1 + n] if n else None
    try:
        return Reader(raw).optional_buffer()
    except DecodeError as exc:
        raise RpcProtocolError(f"bad value encoding: {exc}") from exc


def _method_head(method: str) -> bytes:
    """The encoded method name of a request (``string``), cached per channel."""
    return Writer().string(method).getvalue()


def encode_request(req: RpcRequest) -> bytes:
    method = req.method.encode()
    if len(method) < 0xFD:
        return _uint(req.id) + _SMALL_UINT[len(method)] + method + req.value
    return Writer().uint(req.id).string(req.method).raw(req.value).getvalue()


def decode_request(payload: bytes) -> RpcRequest:
    # fast path: a one- or three-byte id and a short method name
    n = len(payload)
    if n >= 2 and payload[0] < 0xFD:
        id_, pos = payload[0], 1
    elif n >= 4 and payload[0] == 0xFD:
        id_, pos = payload[1] | payload[2] << 8, 3
    else:
        pos = 0
    if pos and n > pos and payload[pos] < 0xFD:
        end = pos + 1 + payload[pos]
        if n >= end:  # (Node decodes invalid UTF-8 with replacements, as Reader does)
            return RpcRequest(id_, payload[pos + 1:end].decode("utf-8", errors="replace"),
                              payload[end:])
    try:
        r = Reader(payload)
        return RpcRequest(r.uint(), r.string(), r.raw())
    except DecodeError as exc:
        raise RpcProtocolError(f"malformed RPC request: {exc}") from exc


def encode_response(res: RpcResponse) -> bytes:
    err = res.error
    if err is None:
        return b"\x00" + _uint(res.id) + (res.value or b"")
    has_cause = err.cause_message is not None
    flags = (_HAS_ERROR | (_HAS_CODE if err.code else 0) | (_HAS_CAUSE if has_cause else 0)
             | (_HAS_CONTEXT if has_cause and err.cause_context else 0))
    w = Writer().uint8(flags).uint(res.id).string(err.message)
    if err.code:
        w.string(err.code)
    if has_cause:
        w.string(err.cause_message or "").string(err.cause_code or "")
        if err.cause_context:
            w.string(err.cause_context)
    return w.getvalue()


def decode_response(payload: bytes) -> RpcResponse:
    if len(payload) >= 2 and payload[0] == 0:  # success with a one- or three-byte id
        if payload[1] < 0xFD:
            return RpcResponse(payload[1], payload[2:])
        if payload[1] == 0xFD and len(payload) >= 4:
            return RpcResponse(payload[2] | payload[3] << 8, payload[4:])
    try:
        r = Reader(payload)
        flags = r.bitfield(4)
        id_ = r.uint()
        if not flags & _HAS_ERROR:
            return RpcResponse(id_, r.raw())
        message = r.string()
        code = r.string() if flags & _HAS_CODE else None
        cause_message = cause_code = cause_context = None
        if flags & _HAS_CAUSE:
            cause_message = r.string()
            cause_code = r.string() or None
            cause_context = (r.string() or None) if flags & _HAS_CONTEXT else None
        return RpcResponse(id_, None, RpcError(message, code, cause_message=cause_message,
                                                cause_code=cause_code,
                                                cause_context=cause_context))
    except DecodeError as exc:
        raise RpcProtocolError(f"malformed RPC response: {exc}") from exc


def encode_handshake(capability_value: bytes | None) -> bytes:
    w = Writer().uint(1 if capability_value else 0)
    if capability_value:
        w.fixed32(capability_value)
    return w.getvalue()


def decode_handshake(raw: bytes | None) -> bytes | None:
    """The capability in an ``@rpc/handshake``, or None. Raises on an absent handshake."""
    try:
        r = Reader(raw or b"")
        flags = r.uint()
        return r.fixed32() if flags & 1 else None
    except DecodeError as exc:
        raise RpcProtocolError(f"malformed RPC handshake: {exc}") from exc


def capability(is_initiator: bool, key: bytes, handshake_hash: bytes,
               ns: bytes = NS_CAPABILITY) -> bytes:
    """hyperswarm-capability's value for one side of a connection."""
    return hash_batch([ns, b"\x01" if is_initiator else b"\x00", key], handshake_hash)


#: A method handler: takes the request value, returns the response value, either directly
#: (answered from the reading task) or as an awaitable (run in its own task, so concurrent
#: requests may be answered out of order).
Handler = Callable[[bytes | None], "Awaitable[bytes | None] | bytes | None"]


class _Waiter:
    """One caller parked on its response: woken directly by the task that sets it (no
    ``Event`` and parking lot in between, a few calls fewer per request)."""

    __slots__ = ("response", "task")

    def __init__(self) -> None:
        self.response: RpcResponse | None = None
        self.task: trio.lowlevel.Task | None = None

    def set(self, response: RpcResponse) -> None:
        if self.response is None:
            self.response = response
            task, self.task = self.task, None
            if task is not None:
                trio.lowlevel.reschedule(task)

    def _abort(self, _raise_cancel: object) -> trio.lowlevel.Abort:
        self.task = None
        return trio.lowlevel.Abort.SUCCEEDED

    async def wait(self) -> None:
        """Until :meth:`set` (a checkpoint either way; cancellable)."""
        if self.response is not None:
            await trio.lowlevel.checkpoint()
            return
        self.task = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._abort)


class RpcChannel:
    """One protomux-rpc session on a :class:`Mux`; needs the mux to be running.

    ``capability_key`` turns on the ``@hyperswarm/rpc`` handshake: both sides must then know
    the key, and ``is_initiator`` / ``handshake_hash`` describe the underlying connection.
    Bounds: ``max_inflight`` outstanding requests of ours (more raise ``BusyResourceError``),
    ``max_responding`` handlers of the peer's requests running at once (more are answered
    ``REQUEST_ERROR`` with cause code ``BUSY``).
    """

    def __init__(self, mux: Mux, *, id_: bytes | None = None, protocol: str = PROTOCOL,
                 capability_key: bytes | None = None, is_initiator: bool = False,
                 handshake_hash: bytes | None = None, max_inflight: int = 1024,
                 max_responding: int = 1024) -> None:
        self.mux = mux
        self._responders: dict[str, Handler] = {}
        self._pending: dict[int, _Waiter] = {}
        self._method_heads: dict[str, bytes] = {}
        self._next_id = 1
        self._responding = 0
        self._ending = False
        self._max_inflight = max_inflight
        self._max_responding = max_responding
        self.opened = trio.Event()
        self.closed = trio.Event()
        self._close_error: RpcError | None = None
        self._cap_key = capability_key
        self._is_initiator = is_initiator
        self._hs_hash = handshake_hash
        if capability_key is not None and handshake_hash is None:
            raise ValueError("a capability needs the connection's handshake hash")
        ch = mux.core.create_channel(protocol, id_, handshake=capability_key is not None,
                                     on_open=self._on_open, on_message=self._on_message,
                                     on_close=self._on_close)
        if ch is None:
            raise RpcError("duplicate channel", "DUPLICATE_CHANNEL")
        self.channel: Channel = ch

    def open(self) -> None:
        hs = None
        if self._cap_key is not None:
            assert self._hs_hash is not None
            hs = encode_handshake(capability(self._is_initiator, self._cap_key, self._hs_hash))
        self.channel.open(hs)

    # -- channel callbacks (run inside Protomux.receive) --------------------------------

    def _on_open(self, handshake: bytes | None) -> None:
        if self._cap_key is not None:
            assert self._hs_hash is not None
            remote_cap = decode_handshake(handshake)
            expected = capability(not self._is_initiator, self._cap_key, self._hs_hash)
            if remote_cap is None or not hmac.compare_digest(remote_cap, expected):
                self.destroy(RpcError("Remote sent invalid capability", "CHANNEL_DESTROYED"))
                return
        self.opened.set()

    def _on_message(self, type_: int, payload: bytes) -> None:
        if type_ == _REQUEST:
            req = decode_request(payload)
            if self.mux.nursery is None:
                return
            if self._responding >= self._max_responding:
                if req.id:  # shed load rather than queue without bound
                    self.channel.send(_RESPONSE, encode_response(RpcResponse(req.id, None, RpcError(
                        "Request failed", "REQUEST_ERROR", cause_message="server busy",
                        cause_code="BUSY"))))
                return
            self._responding += 1
            first = self._start(req)
            if isinstance(first, RpcResponse):
                # answered without awaiting: reply from the reading task, no task hop
                self._responding -= 1
                if req.id:
                    self.channel.send(_RESPONSE, encode_response(first))
                self._end_maybe()
            else:
                self.mux.nursery.start_soon(self._serve, req, first)
        elif type_ == _RESPONSE:
            res = decode_response(payload)
            if res.id == 0:
                return
            waiter = self._pending.pop(res.id, None)
            if waiter is not None:
                waiter.set(res)
                self._end_maybe()

    def _on_close(self, _remote: bool) -> None:
        err = self._close_error or RpcError("channel closed", "CHANNEL_CLOSED")
        for waiter in self._pending.values():
            waiter.set(RpcResponse(0, None, err))
        self._pending.clear()
        self.opened.set()
        self.closed.set()

    # -- serving ------------------------------------------------------------------------

    def respond(self, method: str, handler: Handler) -> None:
        """Answer ``method`` with ``handler(value)`` (awaited when it returns an awaitable);
        an exception becomes
        ``REQUEST_ERROR`` with the exception as its cause (``code``/``context`` attributes
        are carried when present)."""
        self._responders[method] = handler

    def unrespond(self, method: str) -> None:
        self._responders.pop(method, None)

    def _start(self, req: RpcRequest) -> RpcResponse | Awaitable[object]:
        """Run the handler up to its first await: a finished response, or what to await."""
        handler = self._responders.get(req.method)
        if handler is None:
            return RpcResponse(req.id, None,
                               RpcError(f"Unknown method '{req.method}'", "UNKNOWN_METHOD"))
        try:
            value = decode_value(req.value)
        except RpcProtocolError as exc:
            return RpcResponse(req.id, None, RpcError("Could not decode request",
                                                      "DECODE_ERROR", cause_message=str(exc)))
        try:
            result = handler(value)
        except Exception as exc:  # the handler's failure goes back to the caller, by contract
            return self._failed(req, exc)
        if result is None or type(result) is bytes or not inspect.isawaitable(result):
            return self._finished(req, result)
        return result

    def _failed(self, req: RpcRequest, exc: Exception) -> RpcResponse:
        log.debug("handler %s failed", req.method, exc_info=True)
        code = getattr(exc, "code", None)
        context = getattr(exc, "context", None)
        return RpcResponse(req.id, None, RpcError(
            "Request failed", "REQUEST_ERROR", cause_message=str(exc),
            cause_code=code if isinstance(code, str) else None,
            cause_context=context if isinstance(context, str) else None))

    def _finished(self, req: RpcRequest, result: object) -> RpcResponse:
        if result is not None and not isinstance(result, bytes | bytearray):
            return RpcResponse(req.id, None, RpcError("Could not encode response",
                                                      "ENCODE_ERROR",
                                                      cause_message="handler returned non-bytes"))
        return RpcResponse(req.id, encode_value(bytes(result) if result is not None else None))

    async def _serve(self, req: RpcRequest, pending: Awaitable[object]) -> None:
        try:
            try:
                res = self._finished(req, await pending)
            except Exception as exc:  # the handler's failure goes back to the caller
                res = self._failed(req, exc)
            if req.id and not self.channel.closed:
                await self.mux.send(self.channel, _RESPONSE, encode_response(res))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._responding -= 1
            self._end_maybe()

    # -- calling ------------------------------------------------------------------------

    async def request(self, method: str, value: bytes | None = None, *,
                      timeout: float = math.inf) -> bytes | None:
        """Call ``method``; returns the response value (an empty value arrives as None)."""
        if self.channel.closed:
            raise RpcError("channel closed", "CHANNEL_CLOSED")
        if len(self._pending) >= self._max_inflight:
            raise trio.BusyResourceError("too many RPC requests in flight")
        id_ = self._next_id
        self._next_id += 1
        waiter = self._pending[id_] = _Waiter()
        try:
            # written without yielding where the stream allows; waiting is the checkpoint
            await trio.lowlevel.checkpoint_if_cancelled()
            head = self._method_heads.get(method)
            if head is None:
                head = _method_head(method)
                if len(self._method_heads) < _METHOD_CACHE:
                    self._method_heads[method] = head
            self.mux.send_nowait(self.channel, _REQUEST, _uint(id_) + head + encode_value(value))
            if self.mux.core.outbox:
                await self.mux.flush()
            if timeout == math.inf:
                await waiter.wait()  # no cancel scope: it costs on every call
            else:
                with trio.fail_after(timeout):
                    await waiter.wait()
            res = waiter.response
            assert res is not None
        except trio.TooSlowError:
            raise RpcError(f"timeout of {timeout * 1000:.0f}ms exceeded",
                           "TIMEOUT_EXCEEDED") from None
        finally:
            if self._pending.pop(id_, None) is not None:
                self._end_maybe()
        if res.error is not None:
            raise res.error
        assert res.value is not None
        return decode_value(res.value)

    async def event(self, method: str, value: bytes | None = None) -> None:
        """Send a one-way event (request id 0)."""
        if self.channel.closed:
            raise RpcError("channel closed", "CHANNEL_CLOSED")
        await self.mux.send(self.channel, _REQUEST,
                            encode_request(RpcRequest(0, method, encode_value(value))))

    async def end(self) -> None:
        """Close the channel once no request is outstanding in either direction."""
        self._ending = True
        self._end_maybe()
        await self.mux.flush()
        await self.closed.wait()

    def _end_maybe(self) -> None:
        if self._ending and self._responding == 0 and not self._pending:
            self.channel.close()

    def destroy(self, error: RpcError | None = None) -> None:
        self._close_error = error or RpcError("channel destroyed", "CHANNEL_DESTROYED")
        self.channel.close()


class HyperswarmRpc:
    """``@hyperswarm/rpc`` over a :class:`~p2p_transport.hyperdht.HyperDht`: servers listen on a
    key pair, clients connect by public key; the protomux-rpc channel is named by the server's
    public key. ``capability`` (32 bytes) turns on the capability handshake on both sides.

    Connections live in the DHT's nursery; closing the RPC channel closes the connection, as in
    the npm package. Clients are cached per server key.
    """

    def __init__(self, dht: HyperDht, *, capability_key: bytes | None = None) -> None:
        self.dht = dht
        self.capability_key = capability_key
        self._clients: dict[bytes, RpcChannel] = {}
        self._connecting: dict[bytes, trio.Event] = {}

    async def _attach(self, raw: RawConnection, channel_id: bytes,
                      handlers: dict[str, Handler]) -> RpcChannel:
        stream = await secure(raw, self.dht.nursery)
        mux = Mux(stream)
        rpc = RpcChannel(mux, id_=channel_id, capability_key=self.capability_key,
                         is_initiator=raw.is_initiator, handshake_hash=raw.handshake.hash)
        for method, handler in handlers.items():
            rpc.respond(method, handler)
        rpc.open()
        await self.dht.nursery.start(mux.run)

        async def close_with_channel() -> None:
            await rpc.closed.wait()
            await mux.aclose()

        self.dht.nursery.start_soon(close_with_channel)
        return rpc

    async def serve(self, handlers: dict[str, Handler], *, key_pair_: KeyPair | None = None,
                    announce: bool = True) -> Server:
        """Listen on ``key_pair_`` (default: the DHT's) answering ``handlers``."""
        kp = key_pair_ or self.dht.default_key_pair

        async def on_connection(raw: RawConnection) -> None:
            try:
                await self._attach(raw, kp.public_key, handlers)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                log.debug("RPC connection failed to open: %s", exc)

        server = self.dht.create_server(on_connection, key_pair_=kp)
        await server.listen(announce=announce)
        return server

    async def connect(self, public_key: bytes, *,
                      relay_addresses: Sequence[SocketAddress] = (),
                      handlers: dict[str, Handler] | None = None) -> RpcChannel:
        """A (cached) open client channel to the server on ``public_key``."""
        while public_key in self._connecting:
            await self._connecting[public_key].wait()
        cached = self._clients.get(public_key)
        if cached is not None and not cached.closed.is_set():
            return cached
        done = self._connecting[public_key] = trio.Event()
        try:
            raw = await self.dht.connect(public_key, relay_addresses=relay_addresses)
            rpc = await self._attach(raw, public_key, handlers or {})
            await rpc.opened.wait()
            if rpc.closed.is_set():
                raise RpcError("channel closed before it opened", "CHANNEL_CLOSED")
            self._clients[public_key] = rpc
            return rpc
        finally:
            del self._connecting[public_key]
            done.set()

    async def request(self, public_key: bytes, method: str, value: bytes | None = None, *,
                      timeout: float = math.inf) -> bytes | None:
        rpc = await self.connect(public_key)
        return await rpc.request(method, value, timeout=timeout)

    async def event(self, public_key: bytes, method: str, value: bytes | None = None) -> None:
        rpc = await self.connect(public_key)
        await rpc.event(method, value)

    async def aclose(self) -> None:
        for rpc in list(self._clients.values()):
            rpc.destroy()
        self._clients.clear()
