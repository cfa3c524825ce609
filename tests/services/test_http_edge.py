"""The gateway's OpenAI-style HTTP edge: routes, streaming by server-sent events,
errors as HTTP statuses, bounds, keep-alive; its decoders fuzzed.

HTTP runs over an in-memory stream into the real gateway of a service fleet (the
in-memory network double, the scripted engine, virtual time); the real model over a
real socket is in ``tests/integration/test_request_path.py``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import openai
from gateway.http import BODY_TIMEOUT_S, MAX_HEAD_BYTES, HttpApi, serve_connection
from tests.services.harness import MODEL, Fleet, ScriptedEngine, fleet
from tether import blocking
from tether.errors import Internal, InvalidArgument, Unauthenticated
from tether.v1 import infer_pb2, jobs_pb2

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def events(self) -> list[str]:
        """The ``data:`` payloads of a server-sent event stream."""
        return [line[len("data: "):] for line in self.body.decode().split("\n\n") if line]


def raw_request(
    method: str, path: str, body: object = None, token: str | None = None,
    headers: tuple[tuple[str, str], ...] = (),
) -> bytes:
    data = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    lines = [f"{method} {path} HTTP/1.1", "host: tether", f"content-length: {len(data)}"]
    if token is not None:
        lines.append(f"authorization: Bearer {token}")
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


async def exchange(api: HttpApi, *requests: bytes) -> list[Reply]:
    """Send ``requests`` one after another on one connection; their replies."""
    client_end, server_end = trio.testing.memory_stream_pair()
    client = h11.Connection(h11.CLIENT)
    replies: list[Reply] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_connection, server_end, api)
        for raw in requests:
            await client_end.send_all(raw)
            client.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
            client.send(h11.EndOfMessage())  # (keeps the client state machine in step)
            status, headers, body = 0, {}, bytearray()
            while True:
                event = client.next_event()
                if event is h11.NEED_DATA:
                    client.receive_data(bytes(await client_end.receive_some()))
                    continue
                if isinstance(event, h11.Response):
                    status = event.status_code
                    headers = {k.decode(): v.decode() for k, v in event.headers}
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    break
            replies.append(Reply(status, headers, bytes(body)))
            if client.our_state is h11.MUST_CLOSE or client.their_state is h11.MUST_CLOSE:
                break
            client.start_next_cycle()
        await client_end.aclose()
    return replies


def run(test: Callable[[], Awaitable[None]]) -> None:
    with blocking.inline():
        trio.run(test, clock=trio.testing.MockClock(autojump_threshold=0))


def in_fleet(tmp_path: Path, body: Callable[[Fleet, HttpApi], Awaitable[None]], **kw: Any) -> None:
    async def main() -> None:
        async with fleet(tmp_path, **kw) as f:
            await f.add_worker("w1")
            await f.discovery.wait_for(lambda s: len(s) == 1)
            await body(f, HttpApi(f.gateway_service, wall_clock=lambda: 1_800_000_000.0))

    run(main)


def test_completions_whole_and_streamed_on_one_connection(tmp_path: Path) -> None:
    async def body(f: Fleet, api: HttpApi) -> None:
        token = f.store.issue_token("acme")
        ask = {"model": MODEL, "prompt": "hello", "max_tokens": 3}
        whole, streamed = await exchange(
            api,
            raw_request("POST", "/v1/completions", ask, token),
            raw_request("POST", "/v1/completions",
                        {**ask, "stream": True, "stream_options": {"include_usage": True}}, token),
        )
        assert whole.status == 200 and whole.headers["content-type"] == "application/json"
        answer = whole.json()
        assert answer["object"] == "text_completion" and answer["created"] == 1_800_000_000
        assert answer["model"] == f"{MODEL}@1.0"
        assert answer["choices"] == [
            {"index": 0, "text": " w0 w1 w2", "logprobs": None, "finish_reason": "length"}]
        assert answer["usage"] == {"prompt_tokens": 0, "completion_tokens": 3, "total_tokens": 3}
        assert streamed.status == 200
        assert streamed.headers["content-type"] == "text/event-stream"
        *chunks, usage, done = streamed.events()
        assert done == "[DONE]"
        parsed = [json.loads(c) for c in chunks]
        assert [c["choices"][0]["text"] for c in parsed] == [" w0", " w1", " w2"]
        assert [c["choices"][0]["finish_reason"] for c in parsed] == [None, None, "length"]
        assert json.loads(usage)["choices"] == []
        assert json.loads(usage)["usage"]["completion_tokens"] == 3
        assert len({c["id"] for c in parsed}) == 1 and parsed[0]["id"] != answer["id"]

    in_fleet(tmp_path, body)


def test_a_whole_answer_carries_its_hop_stamps_only_when_asked(tmp_path: Path) -> None:
    async def body(f: Fleet, api: HttpApi) -> None:
        token = f.store.issue_token("acme")
        ask = {"model": MODEL, "prompt": "hello", "max_tokens": 2}
        timed, plain = await exchange(
            api,
            raw_request("POST", "/v1/completions", ask, token,
                        headers=(("x-tether-timing", "1"),)),
            raw_request("POST", "/v1/completions", ask, token),
        )
        assert timed.status == plain.status == 200
        assert timed.json()["choices"] == plain.json()["choices"]
        timing = json.loads(timed.headers["x-tether-timing"])
        stamps = sorted(timing["stamps"], key=timing["stamps"].get)
        assert stamps[0] == "http.in" and stamps[-1] == "http.out"
        assert {"gateway.in", "orchestrator.admitted", "worker.model_end"} <= set(stamps)
        assert isinstance(timing["model_ns"], int)
        assert "x-tether-timing" not in plain.headers

    in_fleet(tmp_path, body)


def test_models_and_health(tmp_path: Path) -> None:
    async def body(f: Fleet, api: HttpApi) -> None:
        token = f.store.issue_token("acme")
        models, health, anonymous = await exchange(
            api,
            raw_request("GET", "/v1/models", token=token),
            raw_request("GET", "/healthz"),
            raw_request("GET", "/v1/models"),
        )
        assert [m["id"] for m in models.json()["data"]] == [f"{MODEL}@1.0"]
        assert models.json()["data"][0]["task"] == "text_generation"
        assert health.status == 200 and health.json() == {"status": "ok"}
        assert anonymous.status == 401

    in_fleet(tmp_path, body)


def test_the_openapi_document_describes_the_routes(tmp_path: Path) -> None:
    async def body(f: Fleet, api: HttpApi) -> None:
        [reply] = await exchange(api, raw_request("GET", "/openapi.json"))
        doc = reply.json()
        assert reply.status == 200 and doc["openapi"].startswith("3.")
        assert set(doc["paths"]) == {"/v1/completions", "/v1/chat/completions",
                                     "/v1/embeddings", "/v1/models", "/v1/models/{model}"}
        asked = doc["paths"]["/v1/completions"]["post"]["requestBody"]["content"]
        assert {"prompt", "stop", "stream_options"} <= set(
            asked["application/json"]["schema"]["properties"])
        chat = doc["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]
        assert {"messages", "max_completion_tokens", "stop", "stream_options"} <= set(
            chat["application/json"]["schema"]["properties"])
        assert "429" in doc["paths"]["/v1/embeddings"]["post"]["responses"]

    in_fleet(tmp_path, body)


def test_errors_come_back_as_http_statuses_with_typed_bodies(tmp_path: Path) -> None:
    async def body(f: Fleet, api: HttpApi) -> None:
        token = f.store.issue_token("acme")
        ok = {"model": MODEL, "prompt": "hi", "max_tokens": 2}
        cases = [
            (raw_request("POST", "/v1/completions", ok), 401, "UNAUTHENTICATED"),
            (raw_request("POST", "/v1/completions", ok, "tk_nope"), 401, "UNAUTHENTICATED"),
            (raw_request("POST", "/v1/completions", b"{not json", token), 400, "INVALID_ARGUMENT"),
            (raw_request("POST", "/v1/completions", {**ok, "max_tokens": -5}, token), 400,
             "INVALID_ARGUMENT"),
            (raw_request("POST", "/v1/completions", {**ok, "temperature": "hot"}, token), 400,
             "INVALID_ARGUMENT"),
            (raw_request("POST", "/v1/completions", {**ok, "model": "no-such-model"}, token), 404,
             "NOT_FOUND"),
            (raw_request("POST", "/v1/completions", {**ok, "stream": True, "model": "Bad Name"},
                         token), 400, "INVALID_ARGUMENT"),
            (raw_request("POST", "/v1/nothing", ok, token), 404, "NOT_FOUND"),
            (raw_request("GET", "/v1/completions", token=token), 405, "INVALID_ARGUMENT"),
            # The bucket is empty now: the next request is shed.
            (raw_request("POST", "/v1/completions", ok, token), 200, None),
            (raw_request("POST", "/v1/completions", ok, token), 429, "RESOURCE_EXHAUSTED"),
        ]
        replies = await exchange(api, *(raw for raw, _, _ in cases))
        assert len(replies) == len(cases)
        for reply, (_, status, code) in zip(replies, cases, strict=True):
            assert reply.status == status, reply.body
            if code is not None:
                error = reply.json()["error"]
                assert error["code"] == code and error["message"]
        assert "'max_tokens'" in replies[3].json()["error"]["message"]
        assert replies[3].json()["error"]["param"] == "max_tokens"
        assert replies[-1].headers["retry-after"].isdigit()

    # Only requests that pass the token and validation take from the bucket: the unknown
    # model and the first good request; the bucket holds 2.
    in_fleet(tmp_path, body, rate=0.001, burst=2)


def test_a_failure_before_the_first_chunk_keeps_its_status_when_streaming(tmp_path: Path) -> None:
    async def main() -> None:
        async with fleet(tmp_path) as f:
            engine = ScriptedEngine([(MODEL, "1.0")])
            engine.fail_with = Internal("engine crashed")
            await f.add_worker("w1", engine=engine)
            await f.discovery.wait_for(lambda s: len(s) == 1)
            api = HttpApi(f.gateway_service)
            ask = {"model": MODEL, "prompt": "hi", "stream": True}
            [reply] = await exchange(
                api, raw_request("POST", "/v1/completions", ask, f.store.issue_token("acme"))
            )
            assert reply.status == 500
            assert reply.json()["error"] == {
                "message": "engine crashed", "type": "internal", "param": None, "code": "INTERNAL",
                "details": {},
            }

    run(main)


def test_a_whole_answer_is_cancelled_upstream_when_its_client_leaves(tmp_path: Path) -> None:
    async def main() -> None:
        async with fleet(tmp_path) as f:
            engine = ScriptedEngine([(MODEL, "1.0")])  # 0.1 s a token: 100 s for 1000
            await f.add_worker("w1", engine=engine)
            await f.discovery.wait_for(lambda s: len(s) == 1)
            ask = {"model": MODEL, "prompt": "hi", "max_tokens": 1000}  # not streamed
            client_end, server_end = trio.testing.memory_stream_pair()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve_connection, server_end, HttpApi(f.gateway_service))
                await client_end.send_all(raw_request(
                    "POST", "/v1/completions", ask, f.store.issue_token("acme")))
                await engine.running.wait()
                await trio.sleep(1.0)
                await client_end.aclose()  # the client gives up
            await trio.sleep(1.0)
            await f.settled()  # outcomes are written behind the response
            job = f.store.get_job(engine.requests[0].correlation_id)
            assert job.state == jobs_pb2.JOB_STATE_CANCELLED, jobs_pb2.JobState.Name(job.state)
            assert engine.steps < 50  # stopped soon after, not run to its 1000 tokens

    run(main)


def test_a_lone_surrogate_is_a_400_not_silence(tmp_path: Path) -> None:
    async def body(f: Fleet, api: HttpApi) -> None:
        token = f.store.issue_token("acme")
        prompt = b'{"model": "%s", "prompt": "a\\ud800b", "max_tokens": 2}' % MODEL.encode()
        texts = b'{"model": "%s", "input": ["ok", "\\udfff"]}' % MODEL.encode()
        pair = b'{"model": "%s", "prompt": "\\ud83d\\ude00", "max_tokens": 2}' % MODEL.encode()
        replies = await exchange(api, raw_request("POST", "/v1/completions", prompt, token),
                                 raw_request("POST", "/v1/embeddings", texts, token),
                                 raw_request("POST", "/v1/completions", pair, token))
        assert [r.status for r in replies] == [400, 400, 200]
        assert "not valid JSON" in replies[0].json()["error"]["message"]

    in_fleet(tmp_path, body)


class Echo:
    """A stand-in for the routes (an ASGI app): answers every request with its method,
    path and body size."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        out = json.dumps([scope["method"], scope["path"], len(body)],
                         separators=(",", ":")).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]})
        await send({"type": "http.response.body", "body": out})


def test_bounds_oversized_bodies_heads_and_slow_clients() -> None:
    api: Any = Echo()

    async def main() -> None:
        big = raw_request("POST", "/v1/completions", b"x" * (openai.MAX_BODY_BYTES + 1))
        [reply] = await exchange(api, big)
        assert reply.status == 413 and reply.headers["connection"] == "close"
        huge_head = raw_request("GET", "/", headers=(("x-pad", "a" * MAX_HEAD_BYTES),))
        [reply] = await exchange(api, huge_head)
        assert reply.status == 431
        [reply] = await exchange(api, b"BREW /pot HTTP/1.1\r\nhost x\r\n\r\n")
        assert reply.status == 400
        # HEAD gets the headers alone; HTTP/1.0 gets its answer and a close.
        client_end, server_end = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_connection, server_end, api)
            await client_end.send_all(b"HEAD / HTTP/1.1\r\nhost: x\r\n\r\n"
                                      b"GET /a HTTP/1.0\r\n\r\n")
            out = b""
            while data := await client_end.receive_some():
                out += data
        head, rest = out.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200") and b"content-length: 14" in head  # ["HEAD","/",0]
        assert rest.startswith(b"HTTP/1.1 200") and rest.endswith(b'["GET","/a",0]')
        # A body that stops short is a 408 after BODY_TIMEOUT_S.
        client_end, server_end = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_connection, server_end, api)
            await client_end.send_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n"
                                      b"\r\n12345")
            started = trio.current_time()
            out = b""
            while data := await client_end.receive_some():
                out += data
            assert out.startswith(b"HTTP/1.1 408")
            assert trio.current_time() - started >= BODY_TIMEOUT_S
        # A client that never finishes its request is dropped after HEAD_TIMEOUT_S.
        client_end, server_end = trio.testing.memory_stream_pair()
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve_connection, server_end, api)
                await client_end.send_all(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\n")
                assert await client_end.receive_some() == b""  # closed, no answer

    run(main)


class Refusing:
    """Test double of ``GatewayService`` for the fuzz tests, which exercise the edge (HTTP,
    routing, bodies) and not the service: every call that gets that far is refused."""

    async def chunks(self, request: Any, context: Any) -> AsyncIterator[Any]:
        """What the edges call (``GatewayService.chunks``: ``Infer`` a chunk at a time)."""
        if request.params.seed == 7:
            raise Unauthenticated("refused by the test double")
        yield infer_pb2.Infer.Chunk(correlation_id="c-1", done=True)

    async def ListModels(self, request: Any, context: Any) -> Any:
        raise Unauthenticated("refused by the test double")


async def serve_bytes(app: Any, parts: list[bytes]) -> bytes:
    """What the edge answers to ``parts`` sent on one connection, then end of input."""
    client_end, server_end = trio.testing.memory_stream_pair()
    received = bytearray()

    async def send() -> None:
        try:
            for part in parts:
                await client_end.send_all(part)
            await client_end.send_eof()
        except trio.BrokenResourceError:
            pass  # the server answered and closed: what is left is not read

    async def receive() -> None:
        while data := await client_end.receive_some():
            received.extend(data)

    with trio.fail_after(120):  # (virtual) never a hang: at worst the head timeout
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_connection, server_end, app)
            nursery.start_soon(send)
            nursery.start_soon(receive)
    return bytes(received)


def assert_answered_below_500(received: bytes) -> None:
    """Whatever came back is HTTP responses, and the first is not a server error."""
    assert not received or received.startswith(b"HTTP/1.1 ")
    if received:
        assert int(received[9:12]) < 500, received[:300]


@FUZZ
@given(st.lists(st.binary(max_size=200), max_size=6))
def test_arbitrary_bytes_get_an_answer_or_a_close_never_a_crash(parts: list[bytes]) -> None:
    async def main() -> None:
        assert_answered_below_500(await serve_bytes(Echo(), parts))
        assert_answered_below_500(await serve_bytes(HttpApi(Refusing()).app, parts))  # type: ignore[arg-type]

    run(main)


methods = st.sampled_from(["GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "PATCH"])
paths = st.sampled_from(["/v1/completions", "/v1/chat/completions", "/v1/embeddings",
                         "/v1/models", "/v1/models/x@1",
                         "/healthz", "/openapi.json", "/", "/v1/models/%ff%00", "/v1/../x"])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)
fields = st.sampled_from(["model", "prompt", "max_tokens", "min_tokens", "temperature",
                          "top_p", "seed", "stream", "version", "user", "input", "n", "stop",
                          "stream_options", "encoding_format", "messages",
                          "max_completion_tokens", "top_k"])


@FUZZ
@given(methods, paths | st.text(max_size=20).map(lambda t: "/" + t), st.one_of(
    st.binary(max_size=120),
    st.dictionaries(fields, json_values, max_size=6).map(lambda d: json.dumps(d).encode()),
    st.dictionaries(fields, json_values, max_size=6).map(
        lambda d: json.dumps({"model": MODEL, "prompt": "p", "input": "i", **d}).encode()),
))
def test_any_request_to_the_real_routes_gets_a_4xx_or_an_answer(
    method: str, path: str, body: bytes
) -> None:
    target = "".join(c if 32 < ord(c) < 127 else f"%{ord(c) & 0xFF:02x}" for c in path)
    raw = raw_request(method, target, body, token="tk_any")

    async def main() -> None:
        assert_answered_below_500(await serve_bytes(HttpApi(Refusing()).app, [raw]))  # type: ignore[arg-type]

    run(main)


@FUZZ
@given(st.one_of(
    st.binary(max_size=80),
    st.dictionaries(fields, json_values, max_size=6).map(lambda d: json.dumps(d).encode()),
))
def test_body_decoders_parse_or_refuse_with_invalid_argument(body: bytes) -> None:
    for parse in (openai.parse_completion, openai.parse_chat, openai.parse_embeddings):
        try:
            outcome = repr(parse(body))
        except InvalidArgument as exc:
            outcome = exc.message
        assert outcome


def test_body_decoders_build_the_request() -> None:
    completion = openai.parse_completion(json.dumps({
        "model": "kjv-textgen@1.0", "prompt": "In the beginning", "max_tokens": 8,
        "min_tokens": 8, "temperature": 0, "seed": 3, "stream": True, "user": "ignored",
    }).encode())
    r = completion.request
    assert completion.stream and (r.model_id, r.version, r.input.text) == (
        "kjv-textgen", "1.0", "In the beginning")
    assert (r.params.max_tokens, r.params.min_tokens, r.params.seed) == (8, 8, 3)
    # 0 is greedy decoding, with explicit presence (unset: the model's default).
    assert r.params.HasField("temperature_value") and r.params.temperature_value == 0
    assert not openai.parse_completion(
        b'{"model": "m", "prompt": "p"}').request.params.HasField("temperature_value")
    sampled = openai.parse_completion(json.dumps({
        "model": "m", "prompt": "p", "temperature": 0.7, "top_k": 5, "top_p": 0.9,
        "stop": "\n"}).encode()).request.params
    assert (round(sampled.temperature_value, 3), sampled.top_k, round(sampled.top_p, 3),
            list(sampled.stop)) == (0.7, 5, 0.9, ["\n"])
    chat = openai.parse_chat(json.dumps({
        "model": "tiny-chat@1", "max_tokens": 5, "max_completion_tokens": 7, "stop": ["\n"],
        "temperature": 0, "seed": 2, "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "developer", "content": "Be brief."},
                     {"role": "user", "content": [{"type": "text", "text": "Hi"},
                                                  {"type": "text", "text": "there"}]},
                     {"role": "assistant", "content": None, "tool_calls": []}],
        "tools": [], "response_format": {"type": "text"}}).encode())
    r = chat.request
    assert chat.stream and chat.include_usage and chat.model == "tiny-chat@1"
    assert (r.model_id, r.version) == ("tiny-chat", "1")
    assert [(m.role, m.content) for m in r.input.messages.messages] == [
        ("system", "Be brief."), ("user", "Hi\nthere"), ("assistant", "")]
    assert (r.params.max_tokens, list(r.params.stop), r.params.seed) == (7, ["\n"], 2)
    assert r.params.HasField("temperature_value") and r.params.temperature_value == 0
    nulls = openai.parse_chat(json.dumps({
        "model": "m", "messages": [{"role": "user", "content": "x"}], "n": None,
        "stream": None, "stop": None, "temperature": None, "max_tokens": None}).encode())
    assert not nulls.stream and not nulls.request.params.HasField("temperature_value")
    with pytest.raises(InvalidArgument, match="one choice per request"):
        openai.parse_chat(b'{"model": "m", "messages": [{"role": "user", "content": "x"}], '
                          b'"n": 3}')
    with pytest.raises(InvalidArgument, match="'image_url' content part"):
        openai.parse_chat(b'{"model": "m", "messages": [{"role": "user", "content": '
                          b'[{"type": "image_url", "image_url": {"url": "x"}}]}]}')
    with pytest.raises(InvalidArgument, match="'messages' is required"):
        openai.parse_chat(b'{"model": "m", "prompt": "p"}')
    embed = openai.parse_embeddings(b'{"model": "all-minilm-l6-v2", "input": "one"}')
    assert list(embed.request.input.texts.texts) == ["one"]
    with pytest.raises(InvalidArgument, match="'input' must be"):
        openai.parse_embeddings(b'{"model": "m", "input": []}')
    with pytest.raises(InvalidArgument, match="'max_tokens': Input should be greater than or"):
        openai.parse_completion(b'{"model": "m", "prompt": "p", "max_tokens": -1}')


def test_retry_after_comes_from_the_error_or_defaults_to_one_second() -> None:
    from tether.errors import ResourceExhausted

    assert openai.retry_after(ResourceExhausted("x", retry_after_s=2.5)) == 3
    assert openai.retry_after(ResourceExhausted("x", details={"retry_after_ms": "1"})) == 1
    assert openai.retry_after(ResourceExhausted("x", details={"retry_after_ms": "nan"})) == 1
    assert openai.retry_after(ResourceExhausted("x")) == openai.DEFAULT_RETRY_AFTER_S
