"""``POST /v1/chat/completions`` through the official ``openai`` Python SDK, on the real
engine: a tiny random-weight decoder (``tools/tiny_decoder.py``, with a chat template)
and the GRU ``kjv-textgen`` (no chat template) are published into the test fleet and
served by a worker running ``worker.engine``, so the messages are rendered by the
model's own template, and stop strings, seeds and finish reasons are the engine's.

Real sockets and the SDK's own HTTP client (in a thread), so the real clock.
"""

from __future__ import annotations

import functools
import json
import math
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
import trio

from gateway.http import HttpApi, serve_http
from tests.services.chat_fleet import CHAT, GRU, chat_fleet
from tests.services.harness import Fleet, wall_ms
from tether import blocking, limits

HELLO: Any = [{"role": "system", "content": "Be brief."},
              {"role": "user", "content": "Hello there"}]


def with_chat(
    tmp_path: Path, check: Callable[[openai.OpenAI, Fleet], None], **fleet_args: Any
) -> None:
    """Run ``check`` (in a thread: the SDK blocks) against a gateway whose one worker
    runs the real engine over the tiny chat decoder and the GRU."""

    async def main() -> None:
        async with chat_fleet(tmp_path, clock_ms=wall_ms, **fleet_args) as f, \
                trio.open_nursery() as nursery:
            port = await nursery.start(functools.partial(
                serve_http, HttpApi(f.gateway_service), "127.0.0.1", 0))
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1",
                                   api_key=f.store.issue_token("acme"), max_retries=0)
            with client:
                await trio.to_thread.run_sync(check, client, f)
            nursery.cancel_scope.cancel()

    with blocking.inline():
        trio.run(main)


def test_chat_whole_streamed_with_usage_and_stop(tmp_path: Path) -> None:
    def check(client: openai.OpenAI, f: Fleet) -> None:
        # (Untyped: the SDK's overloads return a stream or an answer by ``stream``.)
        chat: Callable[..., Any] = functools.partial(client.chat.completions.create,
                                                     model=CHAT, messages=HELLO)
        greedy = functools.partial(chat, temperature=0, extra_body={"min_tokens": 12})
        whole = greedy(max_completion_tokens=12)
        answer = whole.choices[0].message
        assert answer.role == "assistant" and answer.content
        assert whole.object == "chat.completion" and whole.choices[0].finish_reason == "length"
        assert whole.model == f"{CHAT}@1.0" and whole.id
        assert whole.usage and whole.usage.completion_tokens == 12
        assert whole.usage.prompt_tokens > 5  # the rendered template, not just the words
        assert whole.usage.total_tokens == whole.usage.prompt_tokens + 12
        # max_tokens is max_completion_tokens' older name; text parts are joined content.
        parts = [HELLO[0], {"role": "user", "content": [{"type": "text", "text": "Hello there"}]}]
        again = greedy(max_tokens=12, messages=parts)
        assert again.choices[0].message.content == answer.content

        chunks = list(greedy(max_completion_tokens=12, stream=True,
                             stream_options={"include_usage": True}))
        *pieces, usage = chunks
        assert pieces[0].choices[0].delta.role == "assistant"
        assert not pieces[0].choices[0].delta.content
        assert "".join(c.choices[0].delta.content or "" for c in pieces) == answer.content
        assert [c.choices[0].finish_reason for c in pieces][-1] == "length"
        assert all(c.choices[0].finish_reason is None for c in pieces[:-1])
        assert all(c.object == "chat.completion.chunk" for c in chunks)
        assert {c.model for c in chunks} == {CHAT} and len({c.id for c in chunks}) == 1
        assert usage.choices == [] and usage.usage and usage.usage.completion_tokens == 12
        plain = list(chat(temperature=0, max_completion_tokens=3, stream=True))
        assert all(c.usage is None for c in plain) and plain[-1].choices[0].finish_reason

        # A stop string ends the answer in the engine, before the string.
        text = answer.content
        stop = text[4:7]
        cut = text.find(stop)
        assert stop.strip() and cut > 0, text
        stopped = greedy(max_completion_tokens=12, stop=["\x00never", stop])
        assert stopped.choices[0].message.content == text[:cut]
        assert stopped.choices[0].finish_reason == "stop"
        assert stopped.usage and stopped.usage.completion_tokens < 12
        streamed = list(greedy(max_completion_tokens=12, stop=stop, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in streamed) == text[:cut]
        assert streamed[-1].choices[0].finish_reason == "stop"

        # No max tokens asked for: the default limit, which the final chunk reports as
        # "length" (the gateway does not guess from the request).
        default = chat(temperature=0, extra_body={"min_tokens": limits.DEFAULT_MAX_TOKENS})
        assert default.usage and default.usage.completion_tokens == limits.DEFAULT_MAX_TOKENS
        assert default.choices[0].finish_reason == "length"

    with_chat(tmp_path, check)


def test_chat_sampling_is_repeatable_with_a_seed(tmp_path: Path) -> None:
    def check(client: openai.OpenAI, f: Fleet) -> None:
        def sampled(seed: int) -> str:
            out = client.chat.completions.create(
                model=CHAT, messages=HELLO, temperature=1.0, top_p=0.95, seed=seed,
                max_completion_tokens=16, extra_body={"min_tokens": 16})
            return out.choices[0].message.content or ""

        first = sampled(7)
        assert sampled(7) == first
        assert {sampled(8), sampled(9)} != {first}

    with_chat(tmp_path, check)


def test_every_chat_error_is_the_sdks_typed_exception(tmp_path: Path) -> None:
    def check(client: openai.OpenAI, f: Fleet) -> None:
        chat: Callable[..., Any] = functools.partial(
            client.chat.completions.create, model=CHAT, messages=HELLO, max_completion_tokens=1)
        image = [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://127.0.0.1/x.png"}}]}]
        cases: list[tuple[Callable[[], object], type[openai.APIStatusError], str]] = [
            (lambda: chat(n=2), openai.BadRequestError, "one choice per request"),
            (lambda: chat(messages=[]), openai.BadRequestError, "1 to 256 messages"),
            (lambda: chat(messages=image), openai.BadRequestError, "only text parts"),
            (lambda: chat(messages=[{"role": "wizard", "content": "hi"}]),
             openai.BadRequestError, "unknown role wizard"),
            (lambda: chat(temperature=-1), openai.BadRequestError, "temperature"),
            (lambda: chat(stop=["a"] * (limits.MAX_STOP_STRINGS + 1)), openai.BadRequestError,
             "stop strings"),
            (lambda: chat(max_completion_tokens=limits.MAX_NEW_TOKENS + 1),
             openai.BadRequestError, "over the limit"),
            (lambda: chat(model=GRU), openai.BadRequestError, "no chat template"),
            (lambda: list(chat(model=GRU, stream=True)), openai.BadRequestError,
             "no chat template"),
            (lambda: client.with_options(api_key="tk_nope").chat.completions.create(
                model=CHAT, messages=HELLO), openai.AuthenticationError, "token"),
            (lambda: chat(model="no-such-model"), openai.NotFoundError, "no-such-model"),
        ]
        for call, kind, text in cases:
            with pytest.raises(kind, match=text) as caught:
                call()
            assert caught.value.body and caught.value.code
        # Client errors are not failures of the service: nothing was dead-lettered.
        assert f.store.dead_letters() == []
        # The bucket (burst 20) is empty by now: a 429 that says when to come back.
        with pytest.raises(openai.RateLimitError) as limited:
            for _ in range(20):
                chat()
        retry_after = limited.value.response.headers["retry-after"]
        assert retry_after.isdigit() and 1 <= int(retry_after) <= math.ceil(1 / 0.5)

    with_chat(tmp_path, check, rate=0.5, burst=20)


def test_raw_chat_stream_is_openais_wire_format(tmp_path: Path) -> None:
    """The bytes a non-SDK client (curl, Open WebUI) parses: role delta first, content
    deltas, ``{}`` delta with the finish reason, then ``[DONE]``."""

    def check(client: openai.OpenAI, f: Fleet) -> None:
        body = {"model": CHAT, "messages": HELLO, "stream": True, "temperature": 0,
                "max_tokens": 4, "min_tokens": 4, "logit_bias": {}, "tools": []}
        ask = urllib.request.Request(
            f"{client.base_url}chat/completions", data=json.dumps(body).encode(),
            headers={"authorization": f"Bearer {client.api_key}",
                     "content-type": "application/json"})
        with urllib.request.urlopen(ask, timeout=60) as reply:
            assert reply.status == 200
            assert reply.headers["content-type"].startswith("text/event-stream")
            text = reply.read().decode()
        events = [line.removeprefix("data: ") for line in text.split("\n\n") if line]
        assert events[-1] == "[DONE]"
        objects = [json.loads(e) for e in events[:-1]]
        deltas = [o["choices"][0]["delta"] for o in objects]
        assert deltas[0] == {"role": "assistant", "content": ""}
        assert deltas[-1] == {} and objects[-1]["choices"][0]["finish_reason"] == "length"
        assert all(set(d) == {"content"} for d in deltas[1:-1]) and 3 <= len(deltas) <= 6
        assert all("usage" not in o for o in objects)

    with_chat(tmp_path, check)
