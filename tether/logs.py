"""How every Tether process logs: one line per record on stderr, JSON by default for the
services (``TETHER_LOG_FORMAT=json``, through ``python-json-logger``) or text
(``TETHER_LOG_FORMAT=text``), each with the ``trace_id``, ``span_id`` and
``correlation_id`` of the request it was written for, and never a secret: a tenant
token (``tt_...``) or a bearer credential is replaced by ``[REDACTED]`` whatever logger
wrote it, in its message, fields or traceback (``RedactingHandler``).

A JSON line holds ``timestamp``, ``level``, ``service``, ``logger``, ``message``, the
trace fields, and whatever a call passes in ``extra`` (the access logs' ``method``,
``status``, ``duration_ms``, ...). ``access_logged`` gives an RPC dispatch table an
access line per call (the gateway's Hyperswarm edge; its gRPC edge writes the same line).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import aclosing
from dataclasses import replace
from typing import IO, Any

from pythonjsonlogger.json import JsonFormatter

from tether import telemetry
from tether.rpc.service import Handler, ServerContext

FORMATS = ("json", "text")
REDACTED = "[REDACTED]"
#: What a secret looks like in a log message: a tenant token (``tether.metadata.store``'s
#: ``tt_`` prefix), or the credential after ``Bearer``/``token=``.
_SECRETS = re.compile(
    r"\btt_[A-Za-z0-9_\-]{8,}"
    r"|(?<=[Bb]earer )[^\s'\"]+"
    r"|(?<=token=)[^\s&'\"]+"
)


def redact(text: str) -> str:
    return _SECRETS.sub(REDACTED, text)


class RedactingHandler(logging.StreamHandler):
    """A stream handler that redacts secrets from each formatted line: the message, its
    ``extra`` fields and any traceback."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class TraceFilter(logging.Filter):
    """Adds ``trace_id``, ``span_id`` and ``correlation_id`` (empty outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.trace_id, record.span_id = telemetry.current_ids()
        record.correlation_id = telemetry.CORRELATION_ID.get()
        return True


def log_format(text: str) -> str:
    value = str(text).strip().lower()
    if value not in FORMATS:
        raise ValueError(f"log format {text!r} is not one of {', '.join(FORMATS)}")
    return value


def handler(service: str, fmt: str, stream: IO[str] | None = None) -> logging.Handler:
    """A stderr (or ``stream``) handler in format ``fmt`` with the filters above."""
    out = RedactingHandler(stream or sys.stderr)
    out.addFilter(TraceFilter())
    if fmt == "json":
        out.setFormatter(JsonFormatter(
            ["asctime", "levelname", "name", "message", "trace_id", "span_id",
             "correlation_id"],
            rename_fields={"asctime": "timestamp", "levelname": "level", "name": "logger"},
            static_fields={"service": service},
            datefmt="%Y-%m-%dT%H:%M:%S%z",
        ))
    else:
        out.setFormatter(logging.Formatter(
            f"%(asctime)s {service} %(levelname)s %(name)s trace=%(trace_id)s %(message)s"))
    return out


def env_format(default: str = "json") -> str:
    """``TETHER_LOG_FORMAT`` (else ``default``); a ValueError naming the variable."""
    raw = os.environ.get("TETHER_LOG_FORMAT", "").strip() or default
    try:
        return log_format(raw)
    except ValueError as exc:
        raise ValueError(f"TETHER_LOG_FORMAT={raw!r}: {exc}") from None


def setup(service: str, level: str, *, default_format: str = "json") -> None:
    """Send every log record to stderr in ``TETHER_LOG_FORMAT`` (else ``default_format``)."""
    fmt = env_format(default_format)
    root = logging.getLogger()
    root.handlers[:] = [handler(service, fmt)]
    root.setLevel(level)


def access(logger: logging.Logger, edge: str, *, peer: str, method: str, status: str,
           duration_ms: float) -> None:
    """One access line: who called what, how it ended, how long it took (never the
    request's metadata or content)."""
    logger.info("%s %s %s %s %sms", edge, peer, method, status, duration_ms, extra={
        "edge": edge, "peer": peer, "method": method, "status": status,
        "duration_ms": duration_ms})


def access_logged(handlers: Mapping[str, Handler], logger: logging.Logger,
                  edge: str) -> dict[str, Handler]:
    """``handlers`` (an RPC dispatch table) writing an ``access`` line per call to
    ``logger`` once the call ends."""
    return {name: replace(h, func=_logged(h, logger, edge)) for name, h in handlers.items()}


def _logged(handler: Handler, logger: logging.Logger, edge: str) -> Callable[..., Any]:
    def done(context: ServerContext, started: float, status: str) -> None:
        access(logger, edge, peer=context.peer, method=context.method or handler.full_name,
               status=status, duration_ms=round((time.perf_counter() - started) * 1000, 1))

    if handler.spec.kind == "unary":
        async def unary(request: Any, context: ServerContext) -> Any:
            started, status = time.perf_counter(), "OK"
            try:
                return await handler.func(request, context)
            except BaseException as exc:
                status = telemetry.status_name(exc)
                raise
            finally:
                done(context, started, status)
        return unary

    async def stream(request: Any, context: ServerContext) -> AsyncIterator[Any]:
        started, status = time.perf_counter(), "OK"
        try:
            async with aclosing(handler.func(request, context)) as messages:
                async for message in messages:
                    yield message
        except BaseException as exc:
            status = telemetry.status_name(exc)
            raise
        finally:
            done(context, started, status)
    return stream
