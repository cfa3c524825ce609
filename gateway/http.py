"""The gateway's HTTP edge: ``gateway.openai`` as an ASGI app (FastAPI, its OpenAPI
document at ``/openapi.json``), served by Hypercorn on trio: HTTP/1.1 and HTTP/2 (h2
over TLS by ALPN, h2c with prior knowledge), TLS and mutual TLS, keep-alive, access
logs on ``tether.gateway.http.access``; probes at ``GET /healthz`` (alive) and
``GET /readyz`` (200 while the gateway's readiness holds, else 503 naming what fails).
Requests go through the same ``GatewayService.Infer`` as Hyperswarm clients' (token,
validation, rate limit, trace), so the edges cannot drift apart.

Bounds, each a named constant:

* a request head of ``MAX_HEAD_BYTES`` (431 past it), sent within ``HEAD_TIMEOUT_S`` of
  the connection opening or the last answer (then the connection is closed): a socket
  left idle holds its slot that long and no longer;
* a body of ``openai.MAX_BODY_BYTES`` (413), sent within ``BODY_TIMEOUT_S`` (408);
* ``REQUEST_TIMEOUT_S`` for an answer (504);
* ``MAX_CONNECTIONS`` open at once (later ones wait in the listen backlog) and
  ``MAX_CONNECTIONS_PER_CLIENT`` from one address (more are closed at once), so idle
  sockets from one place cannot crowd out everyone else.

``hypercorn.trio.serve`` accepts every connection it is offered, so the accept loop is
here (``EdgeServer``) and admits each connection against those limits before handing
it to Hypercorn's own per-connection server.

An answer runs while its client stays: a client that closes its connection cancels the
call upstream, whole answers as well as streams, so nothing is computed (or billed)
for nobody.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import socket
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import trio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from hypercorn.config import Config
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import wrap_app
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from gateway import openai
from gateway.service import GatewayService
from tether.errors import NotFound, TetherError
from tether.rpc import RpcError, ServerContext, StatusCode
from tether.timing import Hops, timing_json
from tether.v1 import infer_pb2, services_pb2

log = logging.getLogger("tether.gateway.http")
access_log = logging.getLogger("tether.gateway.http.access")

MAX_HEAD_BYTES = 16 * 1024
#: To open a connection (TLS included) and send a request head, or the next one.
HEAD_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 300.0
MAX_CONNECTIONS = 1024
#: Per client address: a browser opens 6, a busy service client a few dozen.
MAX_CONNECTIONS_PER_CLIENT = 64
#: How long answers in flight may finish after the edge is asked to stop.
GRACEFUL_S = 5.0

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: A request with ``x-tether-timing: 1`` gets, with a non-streamed answer, a header of the
#: same name: JSON of when it passed each hop and the model's own time (``tether.timing``).
TIMING_HEADER = "x-tether-timing"

ROUTES = ("POST /v1/completions, POST /v1/chat/completions, POST /v1/embeddings, "
          "GET /v1/models, GET /v1/models/{id}, GET /healthz, GET /readyz")


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": code.lower(), "param": None, "code": code,
                      "details": {}}}


def _dumps(value: object) -> bytes:
    # ensure_ascii: whatever the text (even a lone surrogate), the bytes are ASCII.
    return json.dumps(value, separators=(",", ":")).encode()


def json_response(
    status: int, value: object, headers: dict[str, str] | None = None
) -> Response:
    return Response(_dumps(value), status, headers, media_type="application/json")


def error_response(exc: TetherError) -> Response:
    status, value = openai.error_body(exc)
    headers = {"retry-after": str(openai.retry_after(exc))} if status == 429 else None
    return json_response(status, value, headers)


class _Output:
    """One answer's ASGI messages: a JSON body, or a stream of server-sent events."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.started = False

    async def response(self, response: Response) -> None:
        self.started = True
        await response({"type": "http"}, _no_receive, self.send)

    async def start_events(self, headers: dict[str, str] | None = None) -> None:
        self.started = True
        await self.send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
            *((k.encode(), v.encode()) for k, v in (headers or {}).items()),
        ]})

    async def event(self, value: object) -> None:
        await self.event_text(_dumps(value).decode())

    async def event_text(self, text: str) -> None:
        await self.send({"type": "http.response.body", "body": f"data: {text}\n\n".encode(),
                         "more_body": True})

    async def end(self) -> None:
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})

    async def error(self, exc: TetherError) -> None:
        if not self.started:
            await self.response(error_response(exc))
            return
        await self.event(openai.error_body(exc)[1])  # after the status line
        await self.end()


async def _no_receive() -> Message:
    raise RuntimeError("a response does not read the request")


async def _cancel_on_disconnect(receive: Receive, scope: trio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


class _Call(Response):
    """An answer that runs only while its client stays connected (Starlette runs a
    response in the request's task, so the call upstream lives in that one task)."""

    def __init__(self, answer: Callable[[_Output], Awaitable[None]]) -> None:
        super().__init__()
        self.answer = answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        out = _Output(send)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_disconnect, receive, nursery.cancel_scope)
            try:
                with trio.fail_after(REQUEST_TIMEOUT_S):
                    await self.answer(out)
            except TetherError as exc:
                await out.error(exc)
            except trio.TooSlowError:
                await out.error(RpcError(StatusCode.DEADLINE_EXCEEDED, "no answer in time"))
            nursery.cancel_scope.cancel()


@dataclass
class HttpApi:
    """The routes of ``gateway.openai``, served by ``service``; ``app`` is the ASGI app."""

    service: GatewayService
    wall_clock: Callable[[], float] = time.time

    @functools.cached_property
    def app(self) -> FastAPI:
        return build_app(self)

    def context(self, request: Request) -> ServerContext:
        client = request.client
        return ServerContext(
            method=f"{request.method} {request.url.path}",
            metadata={k: v for k, v in request.headers.items()
                      if k in ("authorization", "traceparent", TIMING_HEADER)},
            deadline=trio.current_time() + REQUEST_TIMEOUT_S,
            peer=f"http:{client.host}:{client.port}" if client else "http",
        )

    def _infer(self, request: infer_pb2.Infer.Request, context: ServerContext) -> Any:
        return self.service.chunks(request, context)

    async def text(self, parsed: openai.ParsedCompletion | openai.ParsedChat,
                   context: ServerContext, out: _Output) -> None:
        """A completion or a chat answer, whole or streamed; the worker ends the text (at a
        stop string, the token limit or the end of text) and says why."""
        chat = isinstance(parsed, openai.ParsedChat)
        created = int(self.wall_clock())
        hops = Hops(context.metadata.get(TIMING_HEADER) == "1")
        hops.stamp("http.in")
        parsed.request.timing = hops.on
        chunks = self._infer(parsed.request, context)
        try:
            if parsed.stream:
                await self._stream(parsed, chunks, created, out, chat=chat)
                return
            texts: list[str] = []
            first = last = None
            async for chunk in chunks:
                first = first or chunk
                last = chunk
                texts.append(chunk.payload.text)
                if chunk.done:
                    break  # the answer is whole: it goes now, not after the stream's end
            if last is None:
                raise RpcError(StatusCode.INTERNAL, "the answer ended without a chunk")
            answer = openai.chat_completion if chat else openai.completion
            headers = openai.degraded_headers(first)
            if hops.on:  # the hops' stamps, this edge's last (a non-streamed answer only)
                hops.add_to(last, last="http.out")
                headers[TIMING_HEADER] = timing_json(last.timing)
            await out.response(json_response(200, answer(
                last.correlation_id, "".join(texts), last.usage,
                model=openai.model_name(last, parsed.model), created=created,
                finish=openai.finish_reason(last)), headers))
        finally:
            await chunks.aclose()

    async def _stream(self, parsed: openai.ParsedCompletion | openai.ParsedChat, chunks: Any,
                      created: int, out: _Output, *, chat: bool) -> None:
        # Every chunk names the model as the client did (the version is known only at the
        # end), or the model that serves it when the request was degraded (the first chunk
        # says so); the status line waits for the first chunk, so that a refusal (token,
        # rate limit, no worker) still gets its own HTTP status.
        name = parsed.model
        last = None
        async for chunk in chunks:
            cid = chunk.correlation_id
            if not out.started:
                name = chunk.served_model or name
                await out.start_events(openai.degraded_headers(chunk))
                if chat:  # OpenAI's first delta: the role, no content yet
                    await out.event(openai.chat_chunk(cid, name, created, role=True,
                                                      content=""))
            last = chunk
            text = chunk.payload.text
            finish = openai.finish_reason(chunk) if chunk.done else None
            if chat:
                if text:
                    await out.event(openai.chat_chunk(cid, name, created, content=text))
                if finish:
                    await out.event(openai.chat_chunk(cid, name, created, finish=finish))
            elif text or finish:
                await out.event(openai.completion_chunk(chunk, text, name, created, finish))
            if chunk.done:
                break
        if not out.started:
            await out.start_events()
        if parsed.include_usage and last is not None:
            usage = openai.chat_usage_chunk if chat else openai.usage_chunk
            await out.event(usage(last.correlation_id, last.usage, name, created))
        await out.event_text("[DONE]")
        await out.end()

    async def embeddings(self, parsed: openai.ParsedEmbeddings, context: ServerContext,
                         out: _Output) -> None:
        request = parsed.request
        chunks = self._infer(request, context)
        try:
            got: list[infer_pb2.Infer.Chunk] = [c async for c in chunks]
        finally:
            await chunks.aclose()
        name = openai.model_name(got[-1], request.model_id) if got else request.model_id
        await out.response(json_response(200, openai.embeddings(
            got, name, parsed.encoding_format), openai.degraded_headers(got[0] if got else None)))

    async def list_models(self, context: ServerContext) -> services_pb2.ListModelsResponse:
        return await self.service.ListModels(services_pb2.ListModelsRequest(), context)


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI for a body the route parses itself (with pydantic's strict JSON parser,
    which refuses what FastAPI's ``json.loads`` lets through, e.g. a lone surrogate)."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": model.model_json_schema()}}}}


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": openai.ErrorBody, "description": what} for code, what in (
        (400, "malformed request"), (401, "no or unknown token"), (404, "unknown model"),
        (429, "rate limited (see Retry-After)"), (503, "no worker available"),
    )
}


def build_app(api: HttpApi) -> FastAPI:
    app = FastAPI(
        title="Tether gateway", version="1", openapi_url="/openapi.json", docs_url=None,
        redoc_url=None,
        description="OpenAI-compatible completions, chat completions, embeddings and models, "
        "served by Tether.",
    )

    @app.exception_handler(TetherError)
    async def tether_error(request: Request, exc: TetherError) -> Response:
        return error_response(exc)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404:
            return error_response(NotFound(f"no route {request.url.path!r}: try {ROUTES}"))
        if exc.status_code == 405:
            return json_response(405, _error("INVALID_ARGUMENT",
                                 f"{request.method} is not allowed on {request.url.path}"))
        return json_response(exc.status_code, _error("INVALID_ARGUMENT", str(exc.detail)))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        return json_response(400, _error("INVALID_ARGUMENT", f"invalid request: {first}"))

    @app.post("/v1/completions", response_model=openai.Completion, responses=_ERRORS,
              openapi_extra=_body_schema(openai.CompletionRequest),
              summary="Complete a prompt (stream: server-sent events)")
    async def completions(request: Request) -> Response:
        parsed = openai.parse_completion(await request.body())
        context = api.context(request)
        return _Call(functools.partial(api.text, parsed, context))

    @app.post("/v1/chat/completions", response_model=openai.ChatCompletion, responses=_ERRORS,
              openapi_extra=_body_schema(openai.ChatCompletionRequest),
              summary="Answer a conversation with the model's chat template (stream: "
                      "server-sent events)")
    async def chat_completions(request: Request) -> Response:
        parsed = openai.parse_chat(await request.body())
        context = api.context(request)
        return _Call(functools.partial(api.text, parsed, context))

    @app.post("/v1/embeddings", response_model=openai.EmbeddingList, responses=_ERRORS,
              openapi_extra=_body_schema(openai.EmbeddingRequest), summary="Embed texts")
    async def embeddings(request: Request) -> Response:
        parsed = openai.parse_embeddings(await request.body())
        context = api.context(request)
        return _Call(functools.partial(api.embeddings, parsed, context))

    @app.get("/v1/models", response_model=openai.ModelList, responses=_ERRORS,
             summary="The models this tenant may use")
    async def models(request: Request) -> Response:
        return json_response(200, openai.models(await api.list_models(api.context(request))))

    @app.get("/v1/models/{model}", response_model=openai.Model, responses=_ERRORS,
             summary="One model: name@version, or a name for its newest version")
    async def model(model: str, request: Request) -> Response:
        found = openai.find_model(await api.list_models(api.context(request)), model)
        if found is None:
            raise NotFound(f"no model {model!r}: GET /v1/models lists them")
        return json_response(200, found)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        # The gateway's last readiness check (GatewayService.check_ready, every few
        # seconds): probes cost no lookup and no store read of their own.
        report = api.service.readiness.report()
        return JSONResponse(report, 503 if report["failing"] else 200)

    return app


class Limits:
    """ASGI middleware: the head and body bounds of the module docstring. The body is
    read here, whole, before the app sees it; the app then reads it from memory and,
    after it, the client's disconnect."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # (h11 bounds only a head that arrives in pieces; one read can hold a whole big one.)
        head = len(scope["raw_path"]) + len(scope["query_string"]) + sum(
            len(k) + len(v) + 4 for k, v in scope["headers"])
        if head > MAX_HEAD_BYTES:
            await _refuse(send, 431, f"the request head is over {MAX_HEAD_BYTES} bytes")
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > openai.MAX_BODY_BYTES:
            await _refuse(send, 413, f"the body is over {openai.MAX_BODY_BYTES} bytes")
            return
        body = bytearray()
        with trio.move_on_after(BODY_TIMEOUT_S) as timer:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                if len(body) > openai.MAX_BODY_BYTES:
                    await _refuse(send, 413, f"the body is over {openai.MAX_BODY_BYTES} bytes")
                    return
                if not message.get("more_body"):
                    break
        if timer.cancelled_caught:
            await _refuse(send, 408, f"the body took over {BODY_TIMEOUT_S:g} s to arrive")
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _refuse(send: Send, status: int, message: str) -> None:
    # The unread rest of the request cannot be skipped: the connection closes.
    body = _dumps(_error("INVALID_ARGUMENT", message))
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def hypercorn_config() -> Config:
    config = Config()
    config.h11_max_incomplete_size = MAX_HEAD_BYTES
    config.h2_max_header_list_size = MAX_HEAD_BYTES
    config.keep_alive_timeout = HEAD_TIMEOUT_S
    config.ssl_handshake_timeout = HEAD_TIMEOUT_S
    config.graceful_timeout = GRACEFUL_S
    config.include_server_header = False
    config.accesslog = access_log
    config.errorlog = log
    config.access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(L)ss "%(a)s"'
    return config


class _MemorySocket:
    """The addresses Hypercorn asks a connection for, for a stream without a socket
    (the in-memory streams of tests)."""

    family = socket.AF_INET

    def getpeername(self) -> tuple[str, int]:
        return ("127.0.0.1", 1)

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", 0)


class _Addressed(trio.abc.HalfCloseableStream):
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.socket = _MemorySocket()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.stream.receive_some(max_bytes)

    async def send_eof(self) -> None:
        if isinstance(self.stream, trio.abc.HalfCloseableStream):
            await self.stream.send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()


@dataclass
class EdgeServer:
    """Serves an ASGI app on trio with Hypercorn, admitting connections by the limits."""

    app: ASGIApp
    ssl_context: ssl.SSLContext | None = None
    max_connections: int = MAX_CONNECTIONS
    max_per_client: int = MAX_CONNECTIONS_PER_CLIENT
    config: Config = field(default_factory=hypercorn_config)
    #: Open connections per client address.
    per_client: Counter[str] = field(default_factory=Counter)
    #: Connections closed at once because their client had too many open.
    refused: int = 0

    def __post_init__(self) -> None:
        self._wrapped = wrap_app(
            Limits(self.app), self.config.wsgi_max_body_size, "asgi")  # type: ignore[arg-type]
        self._context = WorkerContext(None)
        self._slots = trio.Semaphore(self.max_connections)
        self._accepting = trio.CancelScope()
        self._connections: trio.Nursery | None = None
        self._stopped = trio.Event()
        if self.ssl_context is not None:
            self.ssl_context.set_alpn_protocols(["h2", "http/1.1"])

    async def serve_connection(self, stream: trio.abc.Stream) -> None:
        """Serve HTTP on one connection until either side closes it; closes it."""
        if not hasattr(stream, "socket") and not hasattr(stream, "transport_stream"):
            stream = _Addressed(stream)
        await TCPServer(self._wrapped, self.config, self._context,
                        ConnectionState({}), stream)  # type: ignore[arg-type]

    async def serve(self, listeners: list[trio.SocketListener]) -> None:
        """Accept on ``listeners`` until cancelled (everything stops at once) or until
        ``drain`` (a graceful stop)."""
        try:
            async with trio.open_nursery() as connections:
                self._connections = connections
                with self._accepting:
                    async with trio.open_nursery() as accepting:
                        for listener in listeners:
                            accepting.start_soon(self._accept, listener, connections)
                for listener in listeners:
                    await listener.aclose()  # new clients are refused from here on
        finally:
            for listener in listeners:
                with trio.CancelScope(shield=True):
                    await listener.aclose()
            self._stopped.set()

    async def drain(self) -> None:
        """Stop gracefully: accept no more connections, close idle ones, give answers in
        flight ``GRACEFUL_S`` to finish (then cancel them); return once all are closed."""
        self._accepting.cancel()
        await self._context.terminated.set()  # Hypercorn: close when idle, no keep-alive
        if self._connections is not None:
            self._connections.cancel_scope.deadline = trio.current_time() + GRACEFUL_S
            await self._stopped.wait()

    async def _accept(self, listener: trio.SocketListener, connections: trio.Nursery) -> None:
        while True:
            await self._slots.acquire()
            try:
                stream = await listener.accept()
            except OSError as exc:
                self._slots.release()
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS):
                    raise
                log.error("HTTP edge cannot accept (%s); waiting", exc)
                await trio.sleep(0.1)
                continue
            except BaseException:
                self._slots.release()
                raise
            try:
                client = str(stream.socket.getpeername()[0])
            except OSError:
                client = "?"
            if self.per_client[client] >= self.max_per_client:
                self._slots.release()
                self.refused += 1
                if self.refused & (self.refused - 1) == 0:  # 1, 2, 4, 8...: not a flood
                    log.warning("HTTP edge: %s has %d connections open; refusing another "
                                "(%d refused so far)", client, self.per_client[client],
                                self.refused)
                stream.socket.close()
                continue
            self.per_client[client] += 1
            connections.start_soon(self._connection, stream, client)

    async def _connection(self, stream: trio.SocketStream, client: str) -> None:
        try:
            conn: trio.abc.Stream = stream
            if self.ssl_context is not None:
                conn = trio.SSLStream(stream, self.ssl_context, server_side=True,
                                      https_compatible=True)
            await self.serve_connection(conn)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError):
            pass  # the client went away (or failed the TLS handshake)
        except Exception:
            log.exception("HTTP connection from %s failed", client)
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()  # (Hypercorn's own close is skipped when cancelled)
            self.per_client[client] -= 1
            if not self.per_client[client]:
                del self.per_client[client]
            self._slots.release()


async def serve_http(
    api: HttpApi,
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    max_per_client: int = MAX_CONNECTIONS_PER_CLIENT,
    on_stop: Callable[[Callable[[], Awaitable[None]]], object] | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``host:port`` (0: any free port); the port is given to ``task_status``.
    With ``ssl_context`` every connection is TLS (HTTPS; mutual TLS when the context
    requires client certificates). ``on_stop`` registers the graceful stop (``drain``)
    with the process, e.g. ``tether.process.Runtime.on_stop``."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    server = EdgeServer(api.app, ssl_context, max_per_client=max_per_client)
    if on_stop is not None:
        on_stop(server.drain)
    task_status.started(listeners[0].socket.getsockname()[1])
    await server.serve(listeners)


async def serve_connection(stream: trio.abc.Stream, app: ASGIApp | HttpApi) -> None:
    """Serve HTTP on one stream (any ``trio.abc.Stream``) with the edge's bounds."""
    await EdgeServer(app.app if isinstance(app, HttpApi) else app).serve_connection(stream)
