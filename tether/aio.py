"""The Python client for asyncio programs and plain threads (web apps, agent frameworks):
the trio client of :mod:`tether.client`, run on a trio loop in a thread of its own, behind
a small asyncio API (:class:`AsyncGatewayClient`) and a blocking one
(:class:`GatewayClientSync`).

    client = await AsyncGatewayClient.connect(bootstrap, token, gateway_key=key)
    async with client:
        async for chunk in client.chat("smollm2-135m-instruct", [("user", "Hi!")]):
            print(chunk.payload.text, end="")

    with GatewayClientSync.connect(bootstrap, token, gateway_key=key) as client:
        for chunk in client.generate("kjv-textgen", "In the beginning", max_tokens=20):
            print(chunk.payload.text, end="")

Each client owns one thread running ``trio.run``: the Hyperswarm connection to the gateway
lives there, and every call runs there as a trio task. A stream's chunks come back through
a queue bounded at :data:`QUEUED_CHUNKS`: the trio side waits for the caller to take one
before it hands over another, so a slow reader slows the answer instead of buffering it.
A caller that stops reading (``break``, a cancelled asyncio task, closing the iterator)
cancels the request's trio task, and with it the request upstream (an asyncio iterator
left early is closed when it is collected; ``contextlib.aclosing`` closes it at once).
Errors arrive as the trio client raises them (:class:`tether.errors.TetherError`
subclasses, unwrapped from trio's exception groups).

The methods take the trio client's arguments (:meth:`GatewayClient.generate`,
:meth:`~GatewayClient.chat`, :meth:`~GatewayClient.embed`, :meth:`~GatewayClient.list_models`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import queue
import threading
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Sequence,
)
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import trio

from p2p_transport.cenc import SocketAddress
from tether.client import GatewayClient, connect_gateway
from tether.errors import Unavailable
from tether.v1 import infer_pb2, services_pb2

#: The chunks one stream holds for a caller that has not taken them yet.
QUEUED_CHUNKS = 32
#: How often a blocked synchronous reader checks that the client's thread still runs.
_POLL_S = 1.0
T = TypeVar("T")
Chunk = infer_pb2.Infer.Chunk
#: A stream of chunks for asyncio code, and for blocking code (both closable).
ChunkStream = AsyncGenerator[Chunk, None]
Chunks = Generator[Chunk, None, None]
_END = object()


def _unwrapped(exc: BaseException) -> BaseException:
    """The one error inside ``exc`` when trio's task groups wrapped it (as they do), so
    that callers catch ``Unavailable`` and its kin, not an exception group."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


@dataclass(frozen=True)
class _Failure:
    """A stream's error, handed to the caller's side to raise there."""

    error: BaseException


class _Stream:
    """One stream's trio side: its task's cancel scope and the credits for chunks not yet
    taken by the caller."""

    def __init__(self, portal: _Portal) -> None:
        self.portal = portal
        self.scope = trio.CancelScope()
        self.credits = trio.Semaphore(QUEUED_CHUNKS)

    def took_one(self) -> None:
        """The caller took a chunk: the trio side may hand over another."""
        self.portal.soon(self.credits.release)

    def cancel(self) -> None:
        """The caller left: stop the request's trio task (no-op once it ended)."""
        self.portal.soon(self.scope.cancel)


class _Portal:
    """A trio loop in a thread holding one gateway connection; the other threads hand it
    work with ``TrioToken.run_sync_soon`` (non-blocking, thread-safe)."""

    def __init__(self) -> None:
        self._ready: concurrent.futures.Future[GatewayClient] = concurrent.futures.Future()
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._closing: trio.Event | None = None
        self._thread: threading.Thread | None = None
        self.client: GatewayClient | None = None

    def start(self, connect: Callable[[], Any]) -> concurrent.futures.Future[GatewayClient]:
        """Start the thread and connect there (``connect()``: an async context manager of
        a :class:`GatewayClient`); the future is the client once connected."""
        self._thread = threading.Thread(
            target=trio.run, args=(self._main, connect), name="tether-client", daemon=True
        )
        self._thread.start()
        return self._ready

    async def _main(self, connect: Callable[[], Any]) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._closing = trio.Event()
        try:
            async with connect() as client, trio.open_nursery() as nursery:
                self._nursery, self.client = nursery, client
                self._ready.set_result(client)
                await self._closing.wait()
                nursery.cancel_scope.cancel()
        except BaseException as exc:
            if not self._ready.done():
                self._ready.set_exception(_unwrapped(exc))
                return  # told to the caller of connect
            raise
        finally:
            self._nursery = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def soon(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` on the trio thread (dropped once the loop has ended)."""
        if self._token is not None:
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(fn)

    def _start_soon(self, fn: Callable[[], Awaitable[None]]) -> None:
        if self._token is None or self._nursery is None:
            raise Unavailable("the client is closed")
        nursery = self._nursery
        try:
            self._token.run_sync_soon(nursery.start_soon, fn)
        except trio.RunFinishedError:
            raise Unavailable("the client is closed") from None

    def call(self, fn: Callable[[GatewayClient], Awaitable[T]]) -> concurrent.futures.Future[T]:
        """``fn(client)`` as a trio task; its result (or error) in the future."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        async def run() -> None:
            assert self.client is not None
            try:
                future.set_result(await fn(self.client))
            except Exception as exc:
                future.set_exception(_unwrapped(exc))

        self._start_soon(run)
        return future

    def stream(
        self, open_stream: Callable[[GatewayClient], AsyncIterator[T]],
        deliver: Callable[[object], None],
    ) -> _Stream:
        """Iterate ``open_stream(client)`` as a trio task, handing each item to ``deliver``
        (then ``_END``, or a ``_Failure``), one credit per item."""
        handle = _Stream(self)

        async def pump() -> None:
            assert self.client is not None
            with handle.scope:
                try:
                    async for item in open_stream(self.client):
                        await handle.credits.acquire()
                        deliver(item)
                except Exception as exc:
                    deliver(_Failure(_unwrapped(exc)))
                else:
                    deliver(_END)

        self._start_soon(pump)
        return handle

    def close(self) -> None:
        """Stop the trio loop (the connection closes); returns once the thread ended."""
        if self._closing is not None:
            self.soon(self._closing.set)
        if self._thread is not None:
            self._thread.join()


def _start(
    bootstrap: Sequence[SocketAddress], token: str, **options: Any
) -> tuple[_Portal, concurrent.futures.Future[GatewayClient]]:
    portal = _Portal()
    return portal, portal.start(lambda: connect_gateway(bootstrap, token, **options))


class AsyncGatewayClient:
    """The gateway client for asyncio code (see the module doc); make one with
    :meth:`connect`, close it with :meth:`aclose` (or ``async with``)."""

    def __init__(self, portal: _Portal) -> None:
        self._portal = portal

    @classmethod
    async def connect(
        cls, bootstrap: Sequence[SocketAddress], token: str, *,
        gateway_key: bytes | None = None, region: str = "local", host: str = "127.0.0.1",
        timeout: float = 30.0,
    ) -> AsyncGatewayClient:
        """Connect to the gateway with ``gateway_key`` (or any on the region's topic), as
        :func:`tether.client.connect_gateway` does."""
        portal, ready = _start(bootstrap, token, gateway_key=gateway_key, region=region,
                               host=host, timeout=timeout)
        await asyncio.wrap_future(ready)
        return cls(portal)

    async def __aenter__(self) -> AsyncGatewayClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await asyncio.to_thread(self._portal.close)

    def generate(self, model: str, prompt: str, **options: Any) -> ChunkStream:
        """:meth:`GatewayClient.generate`'s chunks."""
        return self._stream(lambda c: c.generate(model, prompt, **options))

    def chat(self, model: str, messages: Sequence[Any], **options: Any) -> ChunkStream:
        """:meth:`GatewayClient.chat`'s chunks."""
        return self._stream(lambda c: c.chat(model, messages, **options))

    def embed(self, model: str, texts: Sequence[str], **options: Any) -> ChunkStream:
        """:meth:`GatewayClient.embed`'s chunks (one embedding per text)."""
        return self._stream(lambda c: c.embed(model, texts, **options))

    def infer(self, request: infer_pb2.Infer.Request, **options: Any) -> ChunkStream:
        """:meth:`GatewayClient.infer`'s chunks, for a request built by hand."""
        return self._stream(lambda c: c.infer(request, **options))

    async def list_models(self) -> services_pb2.ListModelsResponse:
        return await asyncio.wrap_future(self._portal.call(lambda c: c.list_models()))

    async def _stream(
        self, open_stream: Callable[[GatewayClient], AsyncIterator[Chunk]]
    ) -> ChunkStream:
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[object] = asyncio.Queue()

        def deliver(item: object) -> None:
            loop.call_soon_threadsafe(items.put_nowait, item)

        handle = self._portal.stream(open_stream, deliver)
        try:
            while True:
                item = await items.get()
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.error
                handle.took_one()
                yield cast(Chunk, item)
        finally:
            handle.cancel()


class GatewayClientSync:
    """The gateway client for blocking code (see the module doc); make one with
    :meth:`connect`, close it with :meth:`close` (or ``with``)."""

    def __init__(self, portal: _Portal) -> None:
        self._portal = portal

    @classmethod
    def connect(
        cls, bootstrap: Sequence[SocketAddress], token: str, *,
        gateway_key: bytes | None = None, region: str = "local", host: str = "127.0.0.1",
        timeout: float = 30.0,
    ) -> GatewayClientSync:
        portal, ready = _start(bootstrap, token, gateway_key=gateway_key, region=region,
                               host=host, timeout=timeout)
        ready.result()
        return cls(portal)

    def __enter__(self) -> GatewayClientSync:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._portal.close()

    def generate(self, model: str, prompt: str, **options: Any) -> Chunks:
        return self._stream(lambda c: c.generate(model, prompt, **options))

    def chat(self, model: str, messages: Sequence[Any], **options: Any) -> Chunks:
        return self._stream(lambda c: c.chat(model, messages, **options))

    def embed(self, model: str, texts: Sequence[str], **options: Any) -> Chunks:
        return self._stream(lambda c: c.embed(model, texts, **options))

    def infer(self, request: infer_pb2.Infer.Request, **options: Any) -> Chunks:
        return self._stream(lambda c: c.infer(request, **options))

    def list_models(self) -> services_pb2.ListModelsResponse:
        return self._portal.call(lambda c: c.list_models()).result()

    def _stream(
        self, open_stream: Callable[[GatewayClient], AsyncIterator[Chunk]]
    ) -> Chunks:
        items: queue.SimpleQueue[object] = queue.SimpleQueue()
        handle = self._portal.stream(open_stream, items.put)
        try:
            while True:
                try:
                    item = items.get(timeout=_POLL_S)
                except queue.Empty:
                    if not self._portal.alive:
                        raise Unavailable("the client's thread stopped") from None
                    continue
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.error
                handle.took_one()
                yield cast(Chunk, item)
        finally:
            handle.cancel()
