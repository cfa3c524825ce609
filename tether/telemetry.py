"""OpenTelemetry for every Tether service: one tracer provider per process,
W3C ``traceparent`` carried in RPC metadata across every hop, structured
logs that name the trace, and the spec's SLI metrics (request latency and
time to first chunk by model, outcomes by status code, throttling), exported
for Prometheus (``--metrics-port``, beside the health probes of ``tether.health``) and
OTLP. A metric's label values are bounded: a model label is one of the catalog's models
or ``other`` (``ModelLabels``), so made-up model names cannot grow the series without end.

Exporters are chosen the OpenTelemetry SDK's standard way (``exporter_names``):
``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER`` (``otlp``, ``console``, ``none``,
comma-separated; default ``otlp`` when an OTLP endpoint is set, else none), the OTLP
exporter's own ``OTEL_EXPORTER_OTLP_*`` settings (endpoint, headers, timeout,
compression; protocol ``http/protobuf``), ``OTEL_SERVICE_NAME`` and
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_SDK_DISABLED``. The console exporter writes to
stderr (stdout carries a service's ready line). See docs/observability.md.

``setup(service)`` installs the provider; ``server_span(name, metadata)`` starts a span
that continues the caller's trace; ``outgoing_metadata()`` gives the metadata to send
so the next hop continues it in turn.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio
from opentelemetry import metrics as otel_metrics
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from tether import health, metrics
from tether.errors import TetherError

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

_PROPAGATOR = TraceContextTextMapPropagator()
_configured: TracerProvider | None = None
_meters: MeterProvider | None = None
_metrics_server: WSGIServer | None = None
#: Request latency buckets (ms): a small model answers in milliseconds, a long
#: generation in minutes; the SLO thresholds (docs/slo.md) are among the bounds.
LATENCY_BUCKETS = ExplicitBucketHistogramAggregation((
    5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000, 120_000, 300_000,
))
#: Continuous-batch sizes (sequences per engine step).
BATCH_BUCKETS = ExplicitBucketHistogramAggregation((1, 2, 4, 8, 16, 32, 64, 128, 256))
#: The GenAI semantic conventions' recommended buckets (seconds).
GEN_AI_BUCKETS = {
    "gen_ai.server.request.duration": (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56,
                                       5.12, 10.24, 20.48, 40.96, 81.92),
    "gen_ai.server.time_to_first_token": (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,
                                          0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0),
    "gen_ai.server.time_per_output_token": (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
                                            0.4, 0.5, 0.75, 1.0, 2.5),
}
#: The label of every value outside a bounded set (``ModelLabels``).
OTHER = "other"


#: The exporters ``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER`` may name.
EXPORTERS = ("otlp", "console", "none")
#: The OTLP protocol this build exports with (the gRPC exporter is not installed).
OTLP_PROTOCOL = "http/protobuf"


def exporter_names(signal: str, env: Mapping[str, str] | None = None) -> list[str]:
    """The exporters ``OTEL_<SIGNAL>_EXPORTER`` names for ``signal`` (``traces`` or
    ``metrics``), as the SDK reads it: comma-separated, ``none`` for none. Unset, it is
    ``otlp`` when an OTLP endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT`` or the
    signal's own), else none: a service does not export unless asked to.
    ``OTEL_SDK_DISABLED=true`` turns every exporter off. A ValueError names a value
    this build cannot honour (an unknown exporter, the ``grpc`` protocol)."""
    env = os.environ if env is None else env
    kind = signal.upper()
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    raw = env.get(f"OTEL_{kind}_EXPORTER")
    if raw is None:
        endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get(
            f"OTEL_EXPORTER_OTLP_{kind}_ENDPOINT")
        names = ["otlp"] if endpoint else []
    else:
        names = [n.strip().lower() for n in raw.split(",") if n.strip()]
    for name in names:
        if name not in EXPORTERS:
            raise ValueError(f"OTEL_{kind}_EXPORTER={raw!r}: {name!r} is not one of "
                             f"{', '.join(EXPORTERS)}")
    if "otlp" in names:
        protocol = (env.get(f"OTEL_EXPORTER_OTLP_{kind}_PROTOCOL")
                    or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or OTLP_PROTOCOL).strip()
        if protocol != OTLP_PROTOCOL:
            raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: this build exports "
                             f"OTLP over {OTLP_PROTOCOL} only (port 4318 of a collector)")
    return [n for n in names if n != "none"]


def check_environment() -> None:
    """Raise ValueError for an ``OTEL_*`` exporter setting this build cannot honour."""
    exporter_names("traces")
    exporter_names("metrics")


def resource(service: str) -> Resource:
    """The process's resource: ``service.name`` is ``OTEL_SERVICE_NAME`` when set, else
    ``service``; ``OTEL_RESOURCE_ATTRIBUTES`` adds the rest."""
    if os.environ.get("OTEL_SERVICE_NAME", "").strip():
        return Resource.create({})
    return Resource.create({"service.name": service})


def span_exporters() -> list[SpanExporter]:
    """The span exporters the environment asks for (``exporter_names``)."""
    out: list[SpanExporter] = []
    for name in exporter_names("traces"):
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            out.append(OTLPSpanExporter())
        else:
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            out.append(ConsoleSpanExporter(out=sys.stderr))
    return out


def setup(service: str, *, exporter: SpanExporter | None = None) -> TracerProvider:
    """Install the process's tracer provider (once, with the exporters the environment
    asks for; later calls add ``exporter``)."""
    global _configured
    if _configured is None:
        _configured = TracerProvider(resource=resource(service))
        trace.set_tracer_provider(_configured)
        for each in span_exporters():
            _configured.add_span_processor(BatchSpanProcessor(each))
    if exporter is not None:
        _configured.add_span_processor(SimpleSpanProcessor(exporter))
    return _configured


def setup_metrics(
    service: str,
    *,
    readers: list[MetricReader] | None = None,
    prometheus_port: int | None = None,
    prometheus_host: str = "127.0.0.1",
    readiness: health.Readiness = health.PROCESS,
) -> MeterProvider:
    """Install the process's meter provider (once): Prometheus and the health probes on
    ``prometheus_host:prometheus_port`` (0: any free port; see ``metrics_url``), OTLP
    when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set, plus ``readers``. A port that cannot
    be bound is a ``SystemExit`` naming it. OTLP and console readers follow
    ``OTEL_METRICS_EXPORTER`` (``exporter_names``)."""
    global _meters, _metrics_server
    if _meters is not None:
        return _meters
    all_readers: list[MetricReader] = list(readers or [])
    if prometheus_port is not None:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader

        try:
            _metrics_server = health.serve_metrics(prometheus_host, prometheus_port, readiness)
        except OSError as exc:
            raise SystemExit(
                f"{service}: cannot serve metrics on {prometheus_host}:{prometheus_port}: "
                f"{exc.strerror or exc} (each service needs its own --metrics-port; "
                "`tether up --metrics` gives each one its own)"
            ) from None
        all_readers.append(PrometheusMetricReader())
    for name in exporter_names("metrics"):
        from opentelemetry.sdk.metrics.export import (
            ConsoleMetricExporter,
            MetricExporter,
            PeriodicExportingMetricReader,
        )

        metric_exporter: MetricExporter
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter,
            )

            metric_exporter = OTLPMetricExporter()
        else:
            metric_exporter = ConsoleMetricExporter(out=sys.stderr)
        all_readers.append(PeriodicExportingMetricReader(metric_exporter))
    _meters = MeterProvider(
        metric_readers=all_readers,
        views=[View(instrument_name="tether.request.*", aggregation=LATENCY_BUCKETS),
               View(instrument_name="tether.worker.batch.size", aggregation=BATCH_BUCKETS),
               *(View(instrument_name=name, aggregation=ExplicitBucketHistogramAggregation(b))
                 for name, b in GEN_AI_BUCKETS.items())],
        resource=resource(f"tether-{service}"),
    )
    otel_metrics.set_meter_provider(_meters)
    return _meters


def metrics_url() -> str | None:
    """Where this process serves metrics and probes (``http://HOST:PORT``), if it does."""
    if _metrics_server is None:
        return None
    host = str(_metrics_server.server_address[0])
    return f"http://{f'[{host}]' if ':' in host else host}:{_metrics_server.server_port}"


class ModelLabels:
    """Bounds a model label: a known model's name, else ``OTHER``. Known: the catalog's
    models (``update``), at most ``max_models`` of them."""

    def __init__(self, known: list[str] | None = None, *, max_models: int = 1000) -> None:
        self.max_models = max_models
        self._known: frozenset[str] = frozenset()
        self.update(known or [])

    def update(self, models: list[str]) -> None:
        self._known = frozenset(sorted(models)[: self.max_models])

    def label(self, model: str) -> str:
        return model if model in self._known else OTHER


class RequestMetrics:
    """The SLIs of one service: latency and time to first chunk by model, outcomes by
    status code, and requests shed by rate limits (``code=RESOURCE_EXHAUSTED``)."""

    def __init__(self, service: str) -> None:
        meter = otel_metrics.get_meter("tether")
        self.service = service
        self.requests = metrics.local_counter(
            "tether.requests", "Requests by outcome (status code)"
        )
        self.duration = meter.create_histogram(
            "tether.request.duration", unit="ms", description="Request latency to the last chunk"
        )
        self.first_chunk = meter.create_histogram(
            "tether.request.first_chunk", unit="ms", description="Time to the first chunk"
        )

    @contextmanager
    def measure(self, model: str) -> Iterator[RequestTimer]:
        """Time one request; ``model`` is its label (bounded: ``ModelLabels``). An answer
        whose last chunk went out (``timer.done``) is OK even if the caller closes the
        stream before its end (the HTTP edge does, once it has the last chunk)."""
        timer = RequestTimer(time.perf_counter())
        code = "OK"
        try:
            yield timer
        except BaseException as exc:
            if timer.end is None:
                code = status_name(exc)
            raise
        finally:
            attrs = {"service": self.service, "model": model}
            self.requests.add(1, {**attrs, "code": code})
            if code == "OK":
                end = timer.end if timer.end is not None else time.perf_counter()
                self.duration.record((end - timer.start) * 1000, attrs)
            if timer.first is not None:
                self.first_chunk.record((timer.first - timer.start) * 1000, attrs)


def cache_lookups() -> metrics.LocalCounter:
    """``tether.cache.lookups`` by ``cache`` and ``result`` (see ``tether.ttlcache``)."""
    return metrics.local_counter(
        "tether.cache.lookups", "Cache lookups by cache and result (hit, miss, stale)")


class UsageMetrics:
    """Tokens by tenant, model and direction, as jobs finish: the usage a billing or
    IAM system can scrape (Prometheus) or receive (OTLP) as it happens."""

    def __init__(self) -> None:
        self.tokens = metrics.local_counter(
            "tether.tokens", "Tokens processed, by tenant, model and direction"
        )

    def record(self, tenant: str, model: str, input_tokens: int, output_tokens: int) -> None:
        attrs = {"tenant": tenant, "model": model}
        self.tokens.add(input_tokens, {**attrs, "direction": "input"})
        self.tokens.add(output_tokens, {**attrs, "direction": "output"})


@dataclass
class RequestTimer:
    start: float
    first: float | None = None
    #: When the last chunk (``done``) went out.
    end: float | None = None

    def chunk(self, done: bool = False) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        if done:
            self.end = now


def status_name(exc: BaseException) -> str:
    """The status code name (``UNAVAILABLE``, ...) an exception ends a call with."""
    if isinstance(exc, TetherError):
        return exc.code.name
    if isinstance(exc, trio.Cancelled | GeneratorExit):
        return "CANCELLED"
    return "UNKNOWN"


#: Tracers by provider and name: ``trace.get_tracer`` builds a new one on every call
#: (a tenth of a millisecond, on every request). Keyed by the provider itself, so a
#: provider set later (the SDK's, replacing the API's proxy) gets tracers of its own.
_TRACERS: dict[tuple[int, str], tuple[trace.TracerProvider, trace.Tracer]] = {}


def tracer(name: str = "tether") -> trace.Tracer:
    provider = trace.get_tracer_provider()
    found = _TRACERS.get((id(provider), name))
    if found is None or found[0] is not provider:
        found = _TRACERS[(id(provider), name)] = (provider, provider.get_tracer(name))
    return found[1]


@contextmanager
def server_span(
    name: str, metadata: Mapping[str, str], **attributes: str
) -> Iterator[trace.Span]:
    """A span continuing the trace named by ``metadata['traceparent']``; a
    ``tether.correlation_id`` attribute is also the logs' ``correlation_id`` inside it."""
    parent = _PROPAGATOR.extract(carrier=dict(metadata))
    token = CORRELATION_ID.set(attributes.get("tether.correlation_id", CORRELATION_ID.get()))
    try:
        with tracer().start_as_current_span(
            name, context=parent, kind=trace.SpanKind.SERVER, attributes=attributes
        ) as span:
            yield span
    finally:
        with suppress(ValueError):  # (a generator resumed in another context)
            CORRELATION_ID.reset(token)


def outgoing_metadata(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` plus the current span's ``traceparent``."""
    carrier: dict[str, str] = dict(base or {})
    carrier.pop("traceparent", None)
    _PROPAGATOR.inject(carrier)
    return carrier


def current_trace_id() -> str:
    """The current trace id as 32 hex characters ('' outside a span)."""
    return current_ids()[0]


def current_ids() -> tuple[str, str]:
    """The current trace and span ids in hex ('' outside a span)."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return "", ""
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


#: The correlation id of the request being served (for log lines; ``server_span``).
CORRELATION_ID: ContextVar[str] = ContextVar("tether_correlation_id", default="")


class TraceIdFilter(logging.Filter):
    """Adds ``trace_id`` to every log record (``tether.logs.TraceFilter`` adds more)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.trace_id = current_trace_id()
        return True


#: ``gen_ai.operation.name`` by the kind of a request's input.
_OPERATIONS = {"text": "text_completion", "messages": "chat", "texts": "embeddings"}


def operation_name(request: Any) -> str:
    """``gen_ai.operation.name`` of an ``Infer.Request``."""
    return _OPERATIONS.get(request.input.WhichOneof("kind") or "", "inference")


@contextmanager
def model_span(request: Any) -> Iterator[trace.Span]:
    """The span of a model's work on ``request`` (an ``Infer.Request``), named and
    attributed after OpenTelemetry's GenAI semantic conventions
    (``{gen_ai.operation.name} {gen_ai.request.model}``); ``model_usage`` adds its
    token counts."""
    operation = operation_name(request)
    attributes: dict[str, str | int] = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": "tether",
        "gen_ai.request.model": request.model_id,
    }
    if request.version:
        attributes["gen_ai.request.model.version"] = request.version
    if request.params.max_tokens:
        attributes["gen_ai.request.max_tokens"] = request.params.max_tokens
    with tracer().start_as_current_span(
        f"{operation} {request.model_id}", kind=trace.SpanKind.INTERNAL, attributes=attributes
    ) as span:
        yield span


def model_usage(span: trace.Span, usage: Any, finish_reason: int = 0) -> None:
    """Put a finished request's token counts (an ``infer_pb2.Usage``) on its model span."""
    span.set_attribute("gen_ai.usage.input_tokens", int(usage.input_tokens))
    span.set_attribute("gen_ai.usage.output_tokens", int(usage.output_tokens))
    if usage.version:
        span.set_attribute("gen_ai.response.model", f"{usage.model_id}@{usage.version}")
    if finish_reason:
        from tether.v1 import infer_pb2

        name = infer_pb2.FinishReason.Name(finish_reason).removeprefix("FINISH_REASON_")
        span.set_attribute("gen_ai.response.finish_reasons", [name.lower()])
