"""OpenTelemetry for every Tether service: one tracer provider per process,
W3C ``traceparent`` carried in RPC metadata across every hop, structured
logs that name the trace.

``setup(service)`` installs the provider (with an OTLP/HTTP exporter when
``OTEL_EXPORTER_OTLP_ENDPOINT`` is set, else spans stay in-process unless an
exporter is passed); ``server_span(name, metadata)`` starts a span that
continues the caller's trace; ``outgoing_metadata()`` gives the metadata to
send so the next hop continues it in turn.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()
_configured: TracerProvider | None = None


def setup(service: str, *, exporter: SpanExporter | None = None) -> TracerProvider:
    """Install the process's tracer provider (once; later calls add exporters)."""
    global _configured
    if _configured is None:
        _configured = TracerProvider(resource=Resource.create({"service.name": service}))
        trace.set_tracer_provider(_configured)
        endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        if endpoint:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            _configured.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if exporter is not None:
        _configured.add_span_processor(SimpleSpanProcessor(exporter))
    return _configured


def tracer(name: str = "tether") -> trace.Tracer:
    return trace.get_tracer(name)


@contextmanager
def server_span(
    name: str, metadata: Mapping[str, str], **attributes: str
) -> Iterator[trace.Span]:
    """A span continuing the trace named by ``metadata['traceparent']``."""
    parent = _PROPAGATOR.extract(carrier=dict(metadata))
    with tracer().start_as_current_span(
        name, context=parent, kind=trace.SpanKind.SERVER, attributes=attributes
    ) as span:
        yield span


def outgoing_metadata(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` plus the current span's ``traceparent``."""
    carrier: dict[str, str] = dict(base or {})
    carrier.pop("traceparent", None)
    _PROPAGATOR.inject(carrier)
    return carrier


def current_trace_id() -> str:
    """The current trace id as 32 hex characters ('' outside a span)."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


class TraceIdFilter(logging.Filter):
    """Adds ``trace_id`` to every log record, for structured logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.trace_id = current_trace_id()
        return True
