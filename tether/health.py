"""Liveness and readiness of a service process, for probes (Kubernetes, load balancers).

``Readiness`` holds the checks a service is failing, by name; it is ready when none
fail. A service sets its checks (the gateway: an orchestrator and a registry reachable,
the token store readable); ``PROCESS``, this process's own, also fails ``started`` until
the service printed its ready line and ``draining`` once it was asked to stop
(``tether.process``), so a draining worker turns not-ready. Listeners hear every change
(the gRPC edge's ``grpc.health.v1.Health`` follows it).

``serve_metrics`` serves Prometheus metrics and the two probes on one small HTTP server
(a service's ``--metrics-port``): ``GET /metrics``, ``GET /healthz`` (alive: 200 while
the process answers) and ``GET /readyz`` (200 ready, 503 not, the failing checks as JSON).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

STARTED = "started"
DRAINING = "draining"


class Readiness:
    """Named failing checks; thread-safe (probes are answered from other threads)."""

    def __init__(self, failing: dict[str, str] | None = None) -> None:
        self._lock = threading.Lock()
        self._failing: dict[str, str] = dict(failing or {})
        self._listeners: list[Callable[[bool], None]] = []

    def set(self, check: str, ok: bool, why: str = "") -> None:
        """Record a check's result (``why``: what is wrong, when not ok)."""
        with self._lock:
            before = not self._failing
            if ok:
                self._failing.pop(check, None)
            else:
                self._failing[check] = why or "failing"
            now = not self._failing
            listeners = list(self._listeners) if now != before else []
        for listener in listeners:
            listener(now)

    def drain(self) -> None:
        """The service is stopping: not ready from now on."""
        self.set(DRAINING, False, "the service is draining")

    @property
    def ready(self) -> bool:
        with self._lock:
            return not self._failing

    def failing(self) -> dict[str, str]:
        with self._lock:
            return dict(self._failing)

    def report(self) -> dict[str, Any]:
        failing = self.failing()
        return {"status": "not ready" if failing else "ready", "failing": failing}

    def subscribe(self, listener: Callable[[bool], None]) -> Callable[[], None]:
        """Call ``listener(ready)`` on every change (in the thread that made it)."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe


#: This process's readiness: not ready until the service announced itself.
PROCESS = Readiness({STARTED: "the service is starting"})

StartResponse = Callable[[str, list[tuple[str, str]]], object]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def probe_app(readiness: Readiness, metrics: WsgiApp | None = None) -> WsgiApp:
    """A WSGI app: ``/healthz``, ``/readyz``, and everything else to ``metrics``."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in ("/healthz", "/readyz"):
            if path == "/healthz":
                status, body = "200 OK", {"status": "ok"}
            else:
                body = readiness.report()
                status = "200 OK" if not body["failing"] else "503 Service Unavailable"
            data = json.dumps(body).encode()
            start_response(status, [("Content-Type", "application/json"),
                                    ("Content-Length", str(len(data)))])
            return [data]
        if metrics is None:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"try /healthz or /readyz\n"]
        return metrics(environ, start_response)

    return app


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # scrapes and probes: no log
        pass


class _ThreadingWSGIServer(WSGIServer):
    daemon_threads = True

    def process_request(self, request: Any, client_address: Any) -> None:
        # One thread per request (as prometheus_client's own server): a slow scrape
        # does not hold up a probe.
        thread = threading.Thread(target=self._handle, args=(request, client_address),
                                  daemon=True)
        thread.start()

    def _handle(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)


def serve_metrics(host: str, port: int, readiness: Readiness) -> WSGIServer:
    """Serve Prometheus metrics and the probes on ``host:port`` (0: any free port) in a
    daemon thread; the server's ``server_port`` is the bound port."""
    from prometheus_client import make_wsgi_app

    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]  # IPv4 or IPv6
    server_class = type("MetricsServer", (_ThreadingWSGIServer,), {"address_family": family})
    server: WSGIServer = make_server(host, port, probe_app(readiness, make_wsgi_app()),
                         server_class, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="tether-metrics", daemon=True).start()
    return server
