"""The gateway's HTTP edge: ``gateway.openai`` over HTTP/1.1, with h11 as the protocol
core and trio streams for I/O. Requests go through the same ``GatewayService.Infer``
as Hyperswarm clients' (token, validation, rate limit, trace), so the two edges
cannot drift apart.

Bounds, each a named constant: request head ``MAX_HEAD_BYTES``, body
``openai.MAX_BODY_BYTES`` (413 past it), ``HEAD_TIMEOUT_S`` to send a request head
and body (then the connection is closed), ``REQUEST_TIMEOUT_S`` for an answer,
``MAX_CONNECTIONS`` open at once (later ones wait to be accepted). Keep-alive and
pipelining are h11's; a protocol error from the client gets a 400 and a close.
"""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any, cast

import h11
import trio

from gateway import openai
from gateway.service import GatewayService
from tether.errors import NotFound, TetherError
from tether.rpc import RpcError, ServerContext, StatusCode
from tether.v1 import infer_pb2, services_pb2

log = logging.getLogger("tether.gateway.http")

MAX_HEAD_BYTES = 16 * 1024
HEAD_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 300.0
MAX_CONNECTIONS = 1024
RECEIVE_BYTES = 64 * 1024


class _BodyTooLarge(Exception):
    pass


@dataclass(frozen=True)
class Incoming:
    """One HTTP request as the routes see it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    peer: str = "http"


@dataclass
class HttpApi:
    """The routes of ``gateway.openai``, served by ``service``."""

    service: GatewayService
    wall_clock: Callable[[], float] = time.time

    async def handle(self, incoming: Incoming, respond: Responder) -> None:
        method, path, body = incoming.method, incoming.path, incoming.body
        metadata = {
            k: v for k, v in incoming.headers.items() if k in ("authorization", "traceparent")
        }
        context = ServerContext(
            method=f"{method} {path}", metadata=metadata,
            deadline=trio.current_time() + REQUEST_TIMEOUT_S, peer=incoming.peer,
        )
        route = (method, path.split("?", 1)[0])
        if route == ("POST", "/v1/completions"):
            await self._completions(body, context, respond)
        elif route == ("POST", "/v1/embeddings"):
            await self._embeddings(body, context, respond)
        elif route == ("GET", "/v1/models"):
            listed = await self.service.ListModels(services_pb2.ListModelsRequest(), context)
            await respond.json(200, openai.models(listed))
        elif route == ("GET", "/healthz"):
            await respond.json(200, {"status": "ok"})
        elif route[1] in ("/v1/completions", "/v1/embeddings", "/v1/models", "/healthz"):
            raise _MethodNotAllowed(route[0])
        else:
            raise NotFound(f"no route {path!r}: try POST /v1/completions, POST "
                           "/v1/embeddings or GET /v1/models")

    async def _completions(self, body: bytes, context: ServerContext, respond: Responder) -> None:
        parsed = openai.parse_completion(body)
        request = parsed.request
        name = f"{request.model_id}@{request.version}" if request.version else request.model_id
        created = int(self.wall_clock())
        max_tokens = request.params.max_tokens
        async with contextlib.aclosing(self._infer(request, context)) as chunks:
            if not parsed.stream:
                got = [c async for c in chunks]
                if not got:
                    raise RpcError(StatusCode.INTERNAL, "the answer ended without a chunk")
                name = openai.model_name(got[-1], name)
                await respond.json(200, openai.completion(got, name, created, max_tokens))
                return
            # The status line waits for the first chunk, so that a refusal (token, rate
            # limit, no worker) still gets its own HTTP status.
            try:
                async for chunk in chunks:
                    if not respond.started:
                        await respond.start_events()
                    if chunk.done:
                        name = openai.model_name(chunk, name)
                    await respond.event(openai.completion_chunk(chunk, name, created, max_tokens))
            except TetherError as exc:
                if not respond.started:
                    raise
                await respond.event(openai.error_body(exc)[1])  # after the status line
                await respond.end()
                return
            if not respond.started:
                await respond.start_events()
            await respond.event_text("[DONE]")
            await respond.end()

    def _infer(
        self, request: infer_pb2.Infer.Request, context: ServerContext
    ) -> AsyncGenerator[infer_pb2.Infer.Chunk]:
        return cast(AsyncGenerator[infer_pb2.Infer.Chunk], self.service.Infer(request, context))

    async def _embeddings(self, body: bytes, context: ServerContext, respond: Responder) -> None:
        request = openai.parse_embeddings(body)
        async with contextlib.aclosing(self._infer(request, context)) as chunks:
            got: list[infer_pb2.Infer.Chunk] = [c async for c in chunks]
        name = openai.model_name(got[-1], request.model_id) if got else request.model_id
        await respond.json(200, openai.embeddings(got, name))


class _MethodNotAllowed(Exception):
    pass


class Responder:
    """Writes one response on an h11 connection."""

    def __init__(self, stream: trio.abc.Stream, conn: h11.Connection) -> None:
        self.stream = stream
        self.conn = conn
        self.started = False
        #: Answering a HEAD request: the headers only.
        self.head = False

    async def _send(self, event: Any) -> None:
        if self.head and isinstance(event, h11.Data):
            return
        data = self.conn.send(event)
        if data:
            await self.stream.send_all(data)

    async def json(
        self, status: int, value: object, extra: tuple[tuple[str, str], ...] = ()
    ) -> None:
        body = json.dumps(value, separators=(",", ":")).encode()
        self.started = True
        await self._send(h11.Response(status_code=status, headers=[
            ("content-type", "application/json"), ("content-length", str(len(body))), *extra,
        ]))
        await self._send(h11.Data(data=body))
        await self._send(h11.EndOfMessage())

    async def start_events(self) -> None:
        self.started = True
        await self._send(h11.Response(status_code=200, headers=[
            ("content-type", "text/event-stream"), ("cache-control", "no-cache"),
        ]))

    async def event(self, value: object) -> None:
        await self.event_text(json.dumps(value, separators=(",", ":")))

    async def event_text(self, text: str) -> None:
        await self._send(h11.Data(data=f"data: {text}\n\n".encode()))

    async def end(self) -> None:
        await self._send(h11.EndOfMessage())


async def _next_event(stream: trio.abc.Stream, conn: h11.Connection) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        if conn.they_are_waiting_for_100_continue:
            await stream.send_all(conn.send(h11.InformationalResponse(status_code=100,
                                                                      headers=[])) or b"")
        conn.receive_data(bytes(await stream.receive_some(RECEIVE_BYTES)))


async def _read_request(
    stream: trio.abc.Stream, conn: h11.Connection
) -> tuple[h11.Request, bytes] | None:
    """The next request and its body; None when the client closed the connection."""
    event = await _next_event(stream, conn)
    if isinstance(event, h11.ConnectionClosed):
        return None
    if not isinstance(event, h11.Request):
        raise h11.RemoteProtocolError(f"expected a request, got {type(event).__name__}")
    # (h11 bounds only a head that arrives in pieces; one read can hold a whole big one.)
    head = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
    if head > MAX_HEAD_BYTES:
        raise h11.RemoteProtocolError(
            f"the request head is over {MAX_HEAD_BYTES} bytes", error_status_hint=431
        )
    body = bytearray()
    while True:
        part = await _next_event(stream, conn)
        if isinstance(part, h11.Data):
            body += part.data
            if len(body) > openai.MAX_BODY_BYTES:
                raise _BodyTooLarge
        elif isinstance(part, h11.EndOfMessage):
            return event, bytes(body)
        else:
            raise h11.RemoteProtocolError("the connection closed inside a request")


async def serve_connection(stream: trio.abc.Stream, api: HttpApi, peer: str = "http") -> None:
    """Serve HTTP/1.1 requests on ``stream`` until either side closes it; closes it."""
    async with stream:
        await _serve(stream, api, peer)


async def _serve(stream: trio.abc.Stream, api: HttpApi, peer: str) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
    while True:
        respond = Responder(stream, conn)
        try:
            with trio.fail_after(HEAD_TIMEOUT_S):
                got = await _read_request(stream, conn)
        except (h11.RemoteProtocolError, _BodyTooLarge) as exc:
            too_large = isinstance(exc, _BodyTooLarge)
            status = 413 if too_large else getattr(exc, "error_status_hint", 400)
            message = (f"the body is over {openai.MAX_BODY_BYTES} bytes" if too_large
                       else f"malformed HTTP request: {exc}")
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                with contextlib.suppress(h11.LocalProtocolError, trio.BrokenResourceError):
                    await respond.json(status, {"error": {
                        "message": message, "type": "invalid_argument",
                        "code": "INVALID_ARGUMENT", "details": {}}},
                        (("connection", "close"),))
            return
        except trio.TooSlowError:
            return
        if got is None:
            return
        request, body = got
        respond.head = request.method == b"HEAD"
        await _answer(api, respond, Incoming(
            method=request.method.decode("ascii", "replace"),
            path=request.target.decode("ascii", "replace"),
            headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers},
            body=body,
            peer=peer,
        ))
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return
        try:
            conn.start_next_cycle()
        except h11.LocalProtocolError:
            return


async def _answer(api: HttpApi, respond: Responder, incoming: Incoming) -> None:
    try:
        await api.handle(incoming, respond)
    except _MethodNotAllowed:
        await respond.json(405, {"error": {
            "message": f"{incoming.method} is not allowed on {incoming.path}",
                                           "type": "invalid_argument", "code": "INVALID_ARGUMENT",
                                           "details": {}}})
    except TetherError as exc:
        if respond.started:
            raise
        status, value = openai.error_body(exc)
        await respond.json(status, value)
    except trio.TooSlowError:
        if not respond.started:
            await respond.json(504, {"error": {"message": "no answer in time",
                                               "type": "deadline_exceeded",
                                               "code": "DEADLINE_EXCEEDED", "details": {}}})


async def serve_http(
    api: HttpApi,
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``host:port`` (0: any free port); the port is given to ``task_status``.
    With ``ssl_context`` every connection is TLS (HTTPS); its handshake counts against
    ``HEAD_TIMEOUT_S`` like the request head."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    limit = trio.CapacityLimiter(MAX_CONNECTIONS)

    async def handler(stream: trio.SocketStream) -> None:
        async with limit, stream:
            try:
                peer = "http:{}:{}".format(*stream.socket.getpeername()[:2])
            except OSError:
                peer = "http"
            conn: trio.abc.Stream = stream
            if ssl_context is not None:
                conn = trio.SSLStream(stream, ssl_context, server_side=True)
            try:
                await serve_connection(conn, api, peer)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the client went away (or failed the TLS handshake)
            except Exception:
                log.exception("HTTP connection from %s failed", peer)

    bound = listeners[0].socket.getsockname()[1]
    task_status.started(bound)
    await trio.serve_listeners(handler, listeners)
