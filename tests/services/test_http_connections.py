"""The HTTP edge under many idle connections: 1,100 sockets opened from one address
and left silent must not keep a client at another address waiting. Each address may
hold ``MAX_CONNECTIONS_PER_CLIENT`` connections (more are closed at once) and an idle
one is closed after ``HEAD_TIMEOUT_S`` (tested in virtual time in ``test_http_edge``).

Real sockets on 127.0.0.1 and 127.0.0.2 (the idle ones), so the real clock; the routes
are a stand-in app, since only the edge is under test.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio

from gateway.http import MAX_CONNECTIONS_PER_CLIENT, EdgeServer

IDLE_SOCKETS = 1100


async def hello(scope: Any, receive: Any, send: Any) -> None:
    """A stand-in for the routes: every request is answered ``ok``."""
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def open_from(source: str, port: int) -> trio.socket.SocketType:
    sock = trio.socket.socket()
    await sock.bind((source, 0))
    await sock.connect(("127.0.0.1", port))
    return sock


def test_idle_sockets_from_one_address_do_not_starve_another() -> None:
    async def main() -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        server = EdgeServer(hello)
        idle: list[trio.socket.SocketType] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.serve, listeners)
            try:
                with trio.fail_after(60):
                    for _ in range(IDLE_SOCKETS):
                        idle.append(await open_from("127.0.0.2", port))
                    for _ in range(6000):  # the edge accepts what is queued
                        if server.refused >= IDLE_SOCKETS - MAX_CONNECTIONS_PER_CLIENT:
                            break
                        await trio.sleep(0.01)
                assert server.per_client["127.0.0.2"] == MAX_CONNECTIONS_PER_CLIENT
                # A real client is answered at once (the h11 edge made it wait 30 s).
                with trio.fail_after(3):
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                    async with stream:
                        await stream.send_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                        reply = b""
                        while not reply.endswith(b"ok"):
                            reply += await stream.receive_some()
                assert reply.startswith(b"HTTP/1.1 200")
                # The connections over the limit were closed by the edge, not kept waiting.
                closed = 0
                for sock in idle:
                    with trio.move_on_after(0.01):
                        closed += await sock.recv(1) == b""
                # (>=: on a slow machine the head timeout may close the admitted ones too)
                assert closed >= IDLE_SOCKETS - MAX_CONNECTIONS_PER_CLIENT
            finally:
                for sock in idle:
                    sock.close()
                nursery.cancel_scope.cancel()

    trio.run(main)


def test_a_graceful_stop_finishes_answers_in_flight_and_refuses_new_clients(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = trio.Event()

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        """A stand-in for the routes: the answer starts, then waits for ``release``."""
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"4")]})
        await release.wait()
        await send({"type": "http.response.body", "body": b"done"})

    async def main() -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        server = EdgeServer(slow)
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.serve, listeners)
                idle = await trio.open_tcp_stream("127.0.0.1", port)
                busy = await trio.open_tcp_stream("127.0.0.1", port)
                await busy.send_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
                head = await busy.receive_some()
                assert head.startswith(b"HTTP/1.1 200")
                stopped = trio.Event()

                async def drain() -> None:
                    await server.drain()
                    stopped.set()

                nursery.start_soon(drain)
                assert await idle.receive_some() == b""  # an idle connection is closed
                with pytest.raises(OSError, match="onnect"):  # no one listens any more
                    await trio.open_tcp_stream("127.0.0.1", port)
                assert not stopped.is_set()  # the answer in flight holds the stop
                release.set()
                body = b""
                while data := await busy.receive_some():
                    body += data
                assert body == b"done"  # finished, then closed (no keep-alive while stopping)
                await stopped.wait()
                await idle.aclose()
                await busy.aclose()

    with caplog.at_level(logging.INFO, logger="tether.gateway.http.access"):
        trio.run(main)
    [line] = [r.getMessage() for r in caplog.records if r.name == "tether.gateway.http.access"]
    assert '"GET /slow 1.1" 200 4' in line  # the access log
