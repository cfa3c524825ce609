"""The gateway's gRPC edge: ``tether.v1.Gateway`` (``Infer``, ``ListModels``) served
with grpcio from the same protos, for clients in any language with a gRPC toolchain
(spec D10). Calls go through the same ``GatewayService`` as Hyperswarm clients'.

grpcio runs on asyncio, the gateway on trio; each keeps its own thread and loop. The
gRPC thread hands a call to trio with ``TrioToken.run_sync_soon`` (non-blocking,
thread-safe), trio runs it in the edge's nursery, and its chunks come back with
``loop.call_soon_threadsafe`` into an asyncio queue. That queue is bounded: it holds
at most ``QUEUED_CHUNKS`` chunks (and the call's end), and the trio side waits for the
client to take one before it hands over another, so a slow reader slows the answer
upstream instead of growing the gateway's memory. A client that goes away cancels the
trio side, and with it the request upstream.

Beside it the edge serves the standard ``grpc.health.v1.Health`` (``Check`` and
``Watch``, for the whole server ``""`` and for ``tether.v1.Gateway``: ``SERVING`` while
the gateway's readiness holds, ``NOT_SERVING`` while it does not or once it drains) and
server reflection, so Kubernetes' gRPC probes and grpcurl work as they are.

With ``tls`` the edge serves TLS only; with ``client_ca`` too, mutual TLS: a client
must present a certificate signed by that CA.

A degraded request's first chunk carries ``degraded_from`` and ``served_model``; the
edge also sends the model asked for as the initial metadata ``x-tether-degraded-from``.

Status codes are the same numbers in Tether and gRPC; a Tether error's details travel
as trailing metadata ``tether-detail-<key>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import grpc
import trio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gateway import openai
from gateway.service import GatewayService
from tether import logs, telemetry
from tether.errors import TetherError
from tether.health import Readiness
from tether.rpc import RpcError, ServerContext, StatusCode
from tether.v1 import infer_pb2, services_pb2, services_pb2_grpc

log = logging.getLogger("tether.gateway.grpc")
#: One line per call, when it ends: peer, method, status, duration (never the metadata).
access_log = logging.getLogger("tether.gateway.grpc.access")

#: The longest a call may take when the client sets no deadline.
DEFAULT_TIMEOUT_S = 300.0
#: Metadata passed through to the gateway (the token, the trace).
FORWARDED_METADATA = ("authorization", "traceparent")
GATEWAY_SERVICE = services_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name
#: The names ``grpc.health.v1.Health`` answers for: the whole server and the gateway.
HEALTH_NAMES = (health.OVERALL_HEALTH, GATEWAY_SERVICE)
_END = object()
#: The chunks one call holds for a client that has not read them yet.
QUEUED_CHUNKS = 32


def _grpc_code(code: int) -> grpc.StatusCode:
    name = StatusCode(StatusCode.coerce(code)).name
    return getattr(grpc.StatusCode, name, grpc.StatusCode.UNKNOWN)


def _trailers(exc: TetherError) -> tuple[tuple[str, str], ...]:
    return tuple((f"tether-detail-{k.lower()}", str(v)) for k, v in sorted(exc.details.items()))


class _Servicer(services_pb2_grpc.GatewayServicer):
    def __init__(self, edge: GrpcEdge) -> None:
        self.edge = edge

    async def Infer(
        self, request: infer_pb2.Infer.Request, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[infer_pb2.Infer.Chunk]:
        async for item in self.edge.call(
            context, lambda svc, ctx: svc.chunks(request, ctx), streaming=True
        ):
            yield item

    async def ListModels(
        self, request: services_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> services_pb2.ListModelsResponse:
        async for item in self.edge.call(
            context, lambda svc, ctx: _once(svc.ListModels(request, ctx)), streaming=False
        ):
            return item
        raise RuntimeError("ListModels gave no answer")


async def _once(awaitable: Any) -> AsyncIterator[Any]:
    yield await awaitable


class GrpcEdge:
    """Serves ``service`` over gRPC on ``host:port`` while ``run`` runs (in trio)."""

    def __init__(
        self,
        service: GatewayService,
        host: str,
        port: int,
        *,
        tls: tuple[bytes, bytes] | None = None,
        client_ca: bytes | None = None,
        readiness: Readiness | None = None,
    ) -> None:
        self.service = service
        #: What ``grpc.health.v1.Health`` reports (default: the gateway service's).
        self.readiness = readiness or service.readiness
        self.host = host
        self.port = port
        #: (PEM private key, PEM certificate chain): serve TLS instead of plaintext.
        self.tls = tls
        #: PEM CA certificates: with ``tls``, every client must present a certificate
        #: signed by one of them (mutual TLS).
        self.client_ca = client_ca
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        #: The most chunks any one call has held for its client (at most QUEUED_CHUNKS).
        self.peak_queued = 0

    async def call(
        self,
        context: grpc.aio.ServicerContext,
        start: Callable[[GatewayService, ServerContext], AsyncIterator[Any]],
        *,
        streaming: bool,
    ) -> AsyncIterator[Any]:
        """(asyncio side) Run ``start`` in trio; yield what it yields."""
        assert self._token is not None and self._nursery is not None
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        # Credits for chunks handed over and not yet taken (the trio side's to wait on; the
        # asyncio side gives one back per chunk it takes).
        credits = trio.Semaphore(QUEUED_CHUNKS)
        call = trio.CancelScope()  # the call's trio side: cancelled when the client leaves
        metadata = {
            k: v for k, v in (context.invocation_metadata() or ())
            if k in FORWARDED_METADATA and isinstance(v, str)
        }
        remaining = context.time_remaining()
        timeout = DEFAULT_TIMEOUT_S if remaining is None else max(remaining, 0.0)
        nursery = self._nursery

        def deliver(item: object) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        method = "/tether.v1.Gateway/" + ("Infer" if streaming else "ListModels")
        peer = f"grpc:{context.peer()}"

        async def pump() -> None:
            ctx = ServerContext(method=method, metadata=metadata,
                                deadline=trio.current_time() + timeout, peer=peer)
            await self._pump(start, ctx, timeout=timeout, call=call, credits=credits,
                             deliver=deliver)

        self._token.run_sync_soon(nursery.start_soon, pump)
        try:
            first = True
            while True:
                self.peak_queued = max(self.peak_queued, queue.qsize())
                item = await queue.get()
                if item is _END:
                    return
                if not isinstance(item, TetherError):  # a chunk: its credit goes back
                    with contextlib.suppress(trio.RunFinishedError):
                        self._token.run_sync_soon(credits.release)
                if isinstance(item, TetherError):
                    context.set_trailing_metadata(_trailers(item))
                    await context.abort(_grpc_code(item.code), item.message)
                if first and isinstance(item, infer_pb2.Infer.Chunk) and item.degraded_from:
                    await context.send_initial_metadata(
                        tuple(openai.degraded_headers(item).items()))
                first = False
                yield item
        finally:
            # The answer is complete, failed, or the client left: stop the trio side.
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(call.cancel)

    async def _pump(
        self,
        start: Callable[[GatewayService, ServerContext], AsyncIterator[Any]],
        ctx: ServerContext,
        *,
        timeout: float,
        call: trio.CancelScope,
        credits: trio.Semaphore,
        deliver: Callable[[object], None],
    ) -> None:
        """(trio side) Run one call's ``start``, handing each item to ``deliver`` once a
        credit allows (the hand-over holds at most QUEUED_CHUNKS), then an error or _END."""
        started = time.perf_counter()
        status = "CANCELLED"  # unless it ends before the client leaves
        with call:
            try:
                with trio.fail_after(timeout):
                    async for item in start(self.service, ctx):
                        await credits.acquire()
                        deliver(item)
                status = "OK"
            except TetherError as exc:
                status = telemetry.status_name(exc)
                deliver(exc)
            except trio.TooSlowError:
                status = "DEADLINE_EXCEEDED"
                deliver(RpcError(StatusCode.DEADLINE_EXCEEDED, "no answer in time"))
            except Exception as exc:  # a bug: the client gets INTERNAL, the log the rest
                status = "INTERNAL"
                log.exception("gRPC call failed")
                deliver(RpcError(StatusCode.INTERNAL, f"internal error: {type(exc).__name__}"))
            deliver(_END)
        logs.access(access_log, "grpc", peer=ctx.peer, method=ctx.method, status=status,
                    duration_ms=round((time.perf_counter() - started) * 1000, 1))

    def _bind(self, server: grpc.aio.Server) -> int:
        """Add the listening port (TLS when configured); the port bound, 0 when none."""
        address = f"{self.host}:{self.port}"
        if self.tls is None:
            return int(server.add_insecure_port(address))
        credentials = grpc.ssl_server_credentials(
            [self.tls], root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None)
        return int(server.add_secure_port(address, credentials))

    @staticmethod
    def _report_health(
        health_servicer: health.aio.HealthServicer, readiness: Readiness,
        loop: asyncio.AbstractEventLoop,
    ) -> tuple[Callable[[], Coroutine[Any, Any, None]], Callable[[], None]]:
        """(asyncio side) A coroutine function that reports readiness under every health
        name, and the unsubscribe of a subscription that reports each change."""

        async def report() -> None:
            # Each name gets readiness as it is now: reports that interleave still
            # leave the last state behind.
            for name in HEALTH_NAMES:
                await health_servicer.set(name, (
                    health_pb2.HealthCheckResponse.SERVING if readiness.ready
                    else health_pb2.HealthCheckResponse.NOT_SERVING))

        def changed(ready: bool) -> None:  # (in the thread that changed readiness)
            asyncio.run_coroutine_threadsafe(report(), loop)

        return report, readiness.subscribe(changed)

    async def _serve_grpc(
        self, bound: list[int], ready: threading.Event, stopping: list[Callable[[], object]],
    ) -> None:
        """(asyncio side) Serve until told to stop; ``bound`` gets the port, ``ready`` is set
        once serving, ``stopping`` the function that stops it."""
        server = grpc.aio.server()
        services_pb2_grpc.add_GatewayServicer_to_server(_Servicer(self), server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (GATEWAY_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        loop = asyncio.get_running_loop()
        report, unsubscribe = self._report_health(health_servicer, self.readiness, loop)
        try:
            await report()
            bound.append(self._bind(server))
            await server.start()
            stop = asyncio.Event()
            stopping.append(lambda: loop.call_soon_threadsafe(stop.set))
            ready.set()
            await stop.wait()
        finally:
            unsubscribe()  # (before this loop closes)
        await health_servicer.enter_graceful_shutdown()  # Watchers hear NOT_SERVING
        await server.stop(grace=1.0)

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; ``task_status`` gets the bound port."""
        self._token = trio.lowlevel.current_trio_token()
        bound: list[int] = []
        ready = threading.Event()
        stopping: list[Callable[[], object]] = []
        failure: list[BaseException] = []

        def thread_main() -> None:
            try:
                asyncio.run(self._serve_grpc(bound, ready, stopping))
            except BaseException as exc:  # reported to trio below
                failure.append(exc)
                ready.set()

        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            thread = threading.Thread(target=thread_main, name="tether-grpc", daemon=True)
            thread.start()
            await trio.to_thread.run_sync(ready.wait)
            if failure or not bound or not bound[0]:
                raise OSError(f"cannot serve gRPC on {self.host}:{self.port}: "
                              f"{failure[0] if failure else 'port unavailable'}")
            task_status.started(bound[0])
            try:
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    stopping[0]()
                    await trio.to_thread.run_sync(thread.join)
