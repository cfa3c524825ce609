"""Structured logs: one JSON line per record with the request's trace, span and
correlation ids, and never a token, whatever logger wrote it."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator, Callable

import pytest
import trio

from app import cli
from tether import logs, process, telemetry

TOKEN = "tt_" + "Q" * 43


def one_line(fmt: str, emit: Callable[[logging.Logger], None]) -> str:
    out = io.StringIO()
    logger = logging.getLogger("tests.logs")
    logger.handlers[:] = [logs.handler("gateway", fmt, out)]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        emit(logger)
    finally:
        logger.handlers.clear()
    return out.getvalue()


def test_a_json_line_names_the_request_it_was_written_for() -> None:
    telemetry.setup("tests")
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

    def emit(logger: logging.Logger) -> None:
        with telemetry.server_span("gateway.infer", {"traceparent": traceparent},
                                   **{"tether.correlation_id": "job-7"}):
            logger.info("placed on %s", "w1", extra={"status": "OK"})
        logger.info("outside")

    inside, outside = (json.loads(line) for line in one_line("json", emit).splitlines())
    assert inside["message"] == "placed on w1"
    assert inside["level"] == "INFO" and inside["service"] == "gateway"
    assert inside["logger"] == "tests.logs" and inside["timestamp"]
    assert inside["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert len(inside["span_id"]) == 16 and inside["correlation_id"] == "job-7"
    assert inside["status"] == "OK"  # `extra` fields are fields
    assert outside["trace_id"] == "" and outside["correlation_id"] == ""


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_a_token_is_never_logged(fmt: str) -> None:
    def emit(logger: logging.Logger) -> None:
        logger.info("issued %s", TOKEN)
        logger.warning("refused metadata {'authorization': 'Bearer %s'}", "secret-value")
        logger.info("GET /v1/models?token=abc123 200")
        try:
            raise ValueError(f"bad token {TOKEN}")
        except ValueError:
            logger.exception("failed")

    text = one_line(fmt, emit)
    assert TOKEN not in text and "Traceback" in text
    assert "secret-value" not in text and "abc123" not in text
    assert text.count(logs.REDACTED) >= 4


def test_a_bad_log_format_is_one_config_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_LOG_FORMAT", "xml")
    with pytest.raises(process.ConfigError, match="TETHER_LOG_FORMAT='xml'"):
        process.setup_logging("gateway", "INFO")


def test_tether_up_s_hint_names_no_token() -> None:
    hint = cli.up_hint("127.0.0.1:49737", "ab" * 32, "http://127.0.0.1:8080")
    assert "tt_" not in hint and "$TETHER_TOKEN" in hint
    assert "--bootstrap 127.0.0.1:49737" in hint


def test_the_hyperswarm_edge_writes_an_access_line_per_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from google.protobuf import empty_pb2

    from tether.errors import NotFound
    from tether.rpc import ServerContext
    from tether.rpc.service import Handler, MethodSpec

    async def unary(request: object, context: ServerContext) -> empty_pb2.Empty:
        raise NotFound("no such model")

    async def stream(request: object, context: ServerContext) -> AsyncIterator[empty_pb2.Empty]:
        for _ in range(3):
            yield empty_pb2.Empty()

    table = {
        "/t.S/U": Handler("/t.S/U", MethodSpec("U", "unary", empty_pb2.Empty, empty_pb2.Empty),
                          unary),
        "/t.S/S": Handler("/t.S/S", MethodSpec("S", "server_stream", empty_pb2.Empty,
                                               empty_pb2.Empty), stream),
    }
    logged = logs.access_logged(table, logging.getLogger("tests.access"), "p2p")
    caplog.set_level(logging.INFO, logger="tests.access")

    async def main() -> None:
        ctx = ServerContext(method="/t.S/S", metadata={"authorization": f"Bearer {TOKEN}"},
                            peer="ab" * 32)
        assert len([m async for m in logged["/t.S/S"].func(empty_pb2.Empty(), ctx)]) == 3
        with pytest.raises(NotFound):
            await logged["/t.S/U"].func(empty_pb2.Empty(), ServerContext("/t.S/U", {}))

    trio.run(main)
    lines = [(r.edge, r.method, r.status) for r in caplog.records  # type: ignore[attr-defined]
             if r.name == "tests.access"]
    assert lines == [("p2p", "/t.S/S", "OK"), ("p2p", "/t.S/U", "NOT_FOUND")]
    assert TOKEN not in caplog.text
