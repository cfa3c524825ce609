"""The HTTP edge through the official ``openai`` Python SDK, as real clients use it:
completions whole and streamed, stop strings, embeddings (float and base64), models
listed and retrieved, and every error the gateway gives as the SDK's typed exception.

Real sockets and the SDK's own HTTP client (in a thread), so the real clock; the fleet
is the in-memory double with scripted engines (5 ms a token).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
import trio

from gateway.http import HttpApi, serve_http
from registry.catalog import Catalog
from tests.services.harness import MODEL, VERSION, Fleet, ScriptedEngine, fleet, wall_ms
from tether import blocking, limits
from tether.errors import Internal
from tether.keys import KeyPair
from tether.v1 import infer_pb2, jobs_pb2, registry_pb2, tensor_pb2

EMBEDDER = "tiny-embed"
PRIVATE = "private-lm"


class EmbeddingEngine:
    """Test double of an embedding engine: text i of a request embeds as
    ``[len(text), i, 0.5]``, so a test knows each vector."""

    models = [(EMBEDDER, "1.0")]

    def supported(self) -> list[Any]:
        return ScriptedEngine(self.models).supported()

    def cache_manifest(self) -> list[Any]:
        return ScriptedEngine(self.models).cache_manifest()

    async def stream(self, request: infer_pb2.Infer.Request) -> Any:
        texts = list(request.input.texts.texts)
        for i, text in enumerate(texts):
            await trio.sleep(0.001)
            usage = None
            if i == len(texts) - 1:
                usage = infer_pb2.Usage(tenant_id=request.tenant_id, model_id=request.model_id,
                                        version=request.version, input_tokens=len(texts))
            yield infer_pb2.Payload(embedding=tensor_pb2.Embedding(
                index=i, values=[float(len(text)), float(i), 0.5])), usage


def publish_more(catalog: Catalog, publisher: KeyPair) -> None:
    """The embedding model, and a model no tenant of the tests may use."""
    for name, task, allowed in ((EMBEDDER, registry_pb2.TASK_EMBEDDING, ()),
                                (PRIVATE, registry_pb2.TASK_TEXT_GENERATION, ("someone",))):
        record = registry_pb2.ModelRecord(publisher_key=publisher.public_key)
        record.model.model_id, record.model.version = name, "1.0"
        record.capabilities.task = task
        record.policy.allowed_tenants.extend(allowed)
        record.artifacts.add(digest="cd" * 32, size_bytes=1, format="onnx", role="model")
        catalog.publish(record)


def with_sdk(
    tmp_path: Path,
    check: Callable[[openai.OpenAI, Fleet, ScriptedEngine], None],
    *,
    engine: ScriptedEngine | None = None,
    **fleet_args: Any,
) -> None:
    """Run ``check`` (in a thread: the SDK blocks) with a client of a served gateway."""
    engine = engine or ScriptedEngine([(MODEL, VERSION)], step_s=0.005)

    async def main() -> None:
        async with fleet(tmp_path, clock_ms=wall_ms, extra=publish_more, **fleet_args) as f, \
                trio.open_nursery() as nursery:
            await f.add_worker("w1", engine=engine)
            await f.add_worker("w2", engine=EmbeddingEngine())  # type: ignore[arg-type]
            await f.discovery.wait_for(lambda s: len(s) == 2)
            port = await nursery.start(functools.partial(
                serve_http, HttpApi(f.gateway_service), "127.0.0.1", 0))
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1",
                                   api_key=f.store.issue_token("acme"), max_retries=0)
            with client:
                await trio.to_thread.run_sync(check, client, f, engine)
            nursery.cancel_scope.cancel()

    with blocking.inline():
        trio.run(main)


def test_completions_whole_streamed_and_with_usage(tmp_path: Path) -> None:
    def check(client: openai.OpenAI, f: Fleet, engine: ScriptedEngine) -> None:
        whole = client.completions.create(model=MODEL, prompt="hello", max_tokens=3,
                                          temperature=0, seed=1, user="u-1")
        assert whole.choices[0].text == " w0 w1 w2"
        assert whole.choices[0].finish_reason == "length"
        assert whole.model == f"{MODEL}@1.0" and whole.usage and whole.usage.completion_tokens == 3
        # A list of one prompt is one prompt; fields the gateway does not know are ignored.
        listed = client.completions.create(model=MODEL, prompt=["hello"], max_tokens=2,
                                           extra_body={"logit_bias": {}, "suffix": None})
        assert listed.choices[0].text == " w0 w1"
        chunks = list(client.completions.create(
            model=MODEL, prompt="hello", max_tokens=3, stream=True,
            stream_options={"include_usage": True}))
        *texts, usage = chunks
        assert "".join(c.choices[0].text for c in texts) == " w0 w1 w2"
        assert [c.choices[0].finish_reason for c in texts][-1] == "length"
        assert {c.model for c in chunks} == {MODEL}  # one name across the stream
        assert len({c.id for c in chunks}) == 1
        assert usage.choices == [] and usage.usage and usage.usage.completion_tokens == 3
        plain = list(client.completions.create(model=MODEL, prompt="hi", max_tokens=2,
                                               stream=True))
        assert all(c.usage is None for c in plain) and len(plain) == 2

    with_sdk(tmp_path, check)


def test_stop_strings_end_the_answer_in_the_worker(tmp_path: Path) -> None:
    engine = ScriptedEngine([(MODEL, VERSION)], step_s=0.02)

    def check(client: openai.OpenAI, f: Fleet, engine: ScriptedEngine) -> None:
        whole = client.completions.create(model=MODEL, prompt="x", max_tokens=200,
                                          stop=["w3", "never"])
        assert whole.choices[0].text == " w0 w1 w2 " and whole.choices[0].finish_reason == "stop"
        assert whole.usage and whole.usage.completion_tokens == 4  # w3 was generated
        streamed = list(client.completions.create(model=MODEL, prompt="x", max_tokens=200,
                                                  stop=" w2", stream=True))
        assert "".join(c.choices[0].text for c in streamed) == " w0 w1"
        assert streamed[-1].choices[0].finish_reason == "stop"
        # The worker ended both at the stop string (the engine's), not at 200 tokens: the
        # jobs succeeded, having computed 4 and 3 tokens.
        assert [list(r.params.stop) for r in engine.requests] == [["w3", "never"], [" w2"]]
        for request in engine.requests:
            state = _job_state(f, request.correlation_id)
            assert state == jobs_pb2.JOB_STATE_SUCCEEDED, jobs_pb2.JobState.Name(state)
        assert engine.steps == 4 + 3

    with_sdk(tmp_path, check, engine=engine)


def _job_state(f: Fleet, correlation_id: str) -> int:
    """The job's state once it has ended (the orchestrator records it as it ends)."""
    ended = (jobs_pb2.JOB_STATE_SUCCEEDED, jobs_pb2.JOB_STATE_FAILED, jobs_pb2.JOB_STATE_CANCELLED)
    for _ in range(200):
        state = f.store.get_job(correlation_id).state
        if state in ended:
            return state
        trio.from_thread.run(trio.sleep, 0.01)
    return state


def test_embeddings_in_floats_and_base64_and_models(tmp_path: Path) -> None:
    def check(client: openai.OpenAI, f: Fleet, engine: ScriptedEngine) -> None:
        # The SDK asks for base64 unless told otherwise, and decodes it.
        default = client.embeddings.create(model=EMBEDDER, input=["a", "bcd"])
        floats = client.embeddings.create(model=EMBEDDER, input="abcd", encoding_format="float")
        assert [d.embedding for d in default.data] == [[1.0, 0.0, 0.5], [3.0, 1.0, 0.5]]
        assert [d.index for d in default.data] == [0, 1]
        assert floats.data[0].embedding == [4.0, 0.0, 0.5]
        assert default.model == f"{EMBEDDER}@1.0" and default.usage.prompt_tokens == 2
        listed = client.models.list()
        ids = sorted(m.id for m in listed.data)
        assert ids == [f"{EMBEDDER}@1.0", f"{MODEL}@1.0"]  # (not the private one)
        assert all(m.created > 1_700_000_000 and m.owned_by for m in listed.data)
        one = client.models.retrieve(f"{MODEL}@1.0")
        newest = client.models.retrieve(MODEL)
        assert one.id == newest.id == f"{MODEL}@1.0" and one.object == "model"
        with pytest.raises(openai.NotFoundError, match="no model"):
            client.models.retrieve("no-such-model")

    with_sdk(tmp_path, check)


def test_every_error_is_the_sdks_typed_exception(tmp_path: Path) -> None:
    def check(client: openai.OpenAI, f: Fleet, engine: ScriptedEngine) -> None:
        complete = functools.partial(client.completions.create, model=MODEL, prompt="hi",
                                     max_tokens=1)
        cases: list[tuple[Callable[[], object], type[openai.APIStatusError], str]] = [
            (lambda: complete(n=2), openai.BadRequestError, "one completion per request"),
            (lambda: complete(prompt=["a", "b"]), openai.BadRequestError, "one prompt"),
            (lambda: complete(temperature=-1), openai.BadRequestError, "temperature"),
            (lambda: complete(model="Bad Name"), openai.BadRequestError, "model id 'Bad Name'"),
            (lambda: complete(stop=["a"] * (limits.MAX_STOP_STRINGS + 1)),
             openai.BadRequestError, "stop strings"),
            (lambda: complete(stop=[""]), openai.BadRequestError, "stop string 0"),
            (lambda: client.with_options(api_key="tk_nope").completions.create(
                model=MODEL, prompt="hi"), openai.AuthenticationError, "token"),
            (lambda: complete(model=PRIVATE), openai.PermissionDeniedError, "may not use"),
            (lambda: complete(model="no-such-model"), openai.NotFoundError, "no-such-model"),
            (lambda: client.embeddings.create(model=EMBEDDER, input="x",
                                              encoding_format="bits"),  # type: ignore[arg-type]
             openai.BadRequestError, "encoding_format"),
        ]
        for call, kind, text in cases:
            with pytest.raises(kind, match=text) as caught:
                call()
            assert caught.value.body and caught.value.code
        # The bucket (burst 12) is empty by now: a 429 that says when to come back.
        with pytest.raises(openai.RateLimitError) as limited:
            for _ in range(20):
                complete()
        retry_after = limited.value.response.headers["retry-after"]
        assert retry_after.isdigit() and 1 <= int(retry_after) <= math.ceil(1 / 0.5)
        # An engine that fails is the server's error, streamed or not.
        engine.fail_with = Internal("engine crashed")
        client_ok = client.with_options(api_key=f.store.issue_token("other"))
        with pytest.raises(openai.InternalServerError, match="engine crashed"):
            client_ok.completions.create(model=MODEL, prompt="hi")
        with pytest.raises(openai.InternalServerError, match="engine crashed"):
            list(client_ok.completions.create(model=MODEL, prompt="hi", stream=True))

    with_sdk(tmp_path, check, rate=0.5, burst=12)
