"""OpenTelemetry configured the standard way, checked against a real OTLP/HTTP receiver:
a small HTTP server here decodes what the SDK's OTLP exporter posts
(``ExportTraceServiceRequest`` from ``opentelemetry-proto``), and one request through
the client library, gateway, orchestrator and worker arrives there as one trace with
the model's span and its token counts."""

from __future__ import annotations

import gzip
import itertools
import sys
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import trio
import trio.testing
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SpanExporter, SpanExportResult

from tests.services.harness import MODEL, fleet
from tether import blocking, process, telemetry
from tether.client import GatewayClient


class OtlpReceiver(ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver on 127.0.0.1 (what a Collector's ``otlphttp``
    receiver does, for traces): every span posted to ``/v1/traces``, decoded."""

    def __init__(self) -> None:
        self.spans: list[tuple[dict[str, str], Span]] = []  # (resource attrs, span)
        self.paths: list[str] = []
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"


class _Handler(BaseHTTPRequestHandler):
    server: OtlpReceiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.server.paths.append(self.path)
        export = ExportTraceServiceRequest.FromString(body)
        for rs in export.resource_spans:
            attrs = {a.key: a.value.string_value for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                self.server.spans.extend((attrs, span) for span in ss.spans)
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: object) -> None:
        pass


class Switch(SpanExporter):
    """Forwards spans to an exporter until ``off`` (the test process's tracer provider
    outlives this test and its receiver)."""

    def __init__(self, target: SpanExporter) -> None:
        self.target: SpanExporter | None = target

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self.target is None:
            return SpanExportResult.SUCCESS
        return self.target.export(spans)

    def off(self) -> None:
        target, self.target = self.target, None
        if target is not None:
            target.shutdown()


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_one_trace_reaches_an_otlp_receiver_across_every_hop(
    receiver: OtlpReceiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    telemetry.setup("tests")  # the test process's provider, made before the settings below
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    # The exporter the environment asks for: the SDK's own OTLP/HTTP exporter, which
    # reads its endpoint from OTEL_EXPORTER_OTLP_ENDPOINT.
    [exporter] = telemetry.span_exporters()
    switch = Switch(exporter)
    telemetry.setup("tests", exporter=switch)

    async def main() -> None:
        async with fleet(tmp_path) as f:
            await f.add_worker("w1")
            await f.discovery.wait_for(lambda s: len(s) == 1)
            client = GatewayClient(await f.gateway(), f.store.issue_token("acme"))
            chunks = [c async for c in client.generate(MODEL, "hello", max_tokens=3,
                                                       correlation_id="traced")]
            assert chunks[-1].done and chunks[-1].usage.output_tokens == 3

    try:
        with blocking.inline():
            trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        switch.off()  # later tests' spans go nowhere
    assert set(receiver.paths) == {"/v1/traces"}
    spans = {span.name: (attrs, span) for attrs, span in receiver.spans}
    names = ["client.infer", "gateway.infer", "orchestrator.submit", "worker.infer",
             f"text_completion {MODEL}"]
    assert set(names) <= spans.keys(), sorted(spans)
    chain = [spans[n][1] for n in names]
    assert len({s.trace_id for s in chain}) == 1  # one trace
    for parent, child in itertools.pairwise(chain):
        assert child.parent_span_id == parent.span_id, (child.name, parent.name)
    assert chain[0].parent_span_id == b""  # the client started it
    model = {a.key: a.value for a in chain[-1].attributes}
    assert model["gen_ai.operation.name"].string_value == "text_completion"
    assert model["gen_ai.request.model"].string_value == MODEL
    assert model["gen_ai.usage.output_tokens"].int_value == 3
    assert "gen_ai.usage.input_tokens" in model
    assert model["gen_ai.response.finish_reasons"].array_value.values[0].string_value
    assert spans["client.infer"][0]["service.name"]


def test_otel_settings_follow_the_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    assert telemetry.exporter_names("traces", {}) == []
    assert telemetry.exporter_names("traces", env) == ["otlp"]
    assert telemetry.exporter_names("metrics", env) == ["otlp"]
    assert telemetry.exporter_names("traces", {**env, "OTEL_TRACES_EXPORTER": "none"}) == []
    assert telemetry.exporter_names(
        "traces", {"OTEL_TRACES_EXPORTER": "console,otlp"}) == ["console", "otlp"]
    assert telemetry.exporter_names("traces", {**env, "OTEL_SDK_DISABLED": "true"}) == []
    with pytest.raises(ValueError, match="'zipkin' is not one of otlp, console, none"):
        telemetry.exporter_names("traces", {"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(ValueError, match="http/protobuf only"):
        telemetry.exporter_names("traces", {**env, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    monkeypatch.setenv("OTEL_SERVICE_NAME", "edge-eu")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod")
    attrs = telemetry.resource("tether-gateway").attributes
    assert attrs["service.name"] == "edge-eu"
    assert attrs["deployment.environment"] == "prod"
    monkeypatch.delenv("OTEL_SERVICE_NAME")
    assert telemetry.resource("tether-gateway").attributes["service.name"] == "tether-gateway"


def test_a_bad_otel_setting_is_one_config_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "jaeger")
    parser = process.ArgumentParser()
    process.add_common_arguments(parser, "gateway")
    with pytest.raises(process.ConfigError, match="OTEL_TRACES_EXPORTER='jaeger'"):
        process.configure(parser, ["--bootstrap", "127.0.0.1:49737",
                                   "--data-dir", str(Path(".").resolve() / "var" / "otel-t")],
                          "gateway", store=False)


def test_the_console_exporter_writes_to_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    [exporter] = telemetry.span_exporters()
    assert isinstance(exporter, ConsoleSpanExporter)
    assert exporter.out is sys.stderr  # stdout carries a service's ready line
