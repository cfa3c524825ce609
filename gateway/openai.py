"""The OpenAI-style HTTP API of the gateway, without the HTTP: JSON bodies in,
``Infer.Request`` out; ``Infer.Chunk`` in, JSON objects out. No I/O here, so every
function is tested (and fuzzed) on its own; ``gateway.http`` carries it over HTTP.

Routes (spec D10: for clients that cannot speak Hyperswarm RPC):

* ``POST /v1/completions``: ``{"model", "prompt", "max_tokens", "min_tokens",
  "temperature", "top_p", "seed", "stream", "version", "user"}``. ``model`` may carry
  a version as ``name@1.0``. ``stream: true`` answers with server-sent events,
  one ``text_completion`` object per chunk, then ``data: [DONE]``.
* ``POST /v1/embeddings``: ``{"model", "input": str | [str], "user"}``.
* ``GET /v1/models``.

Unknown fields are refused (a misspelt ``max_token`` would otherwise be silently
ignored); ``user`` is accepted and ignored. Errors are ``{"error": {"message",
"type", "code", "details"}}`` with the HTTP status of their Tether status code.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from tether.client import GREEDY_TEMPERATURE
from tether.errors import InvalidArgument, TetherError
from tether.rpc import StatusCode
from tether.v1 import infer_pb2, registry_pb2, services_pb2, status_pb2

#: The largest request body read, in bytes: 16 Ki-character prompts fit many times over.
MAX_BODY_BYTES = 1 << 20

HTTP_STATUS = {
    StatusCode.INVALID_ARGUMENT: 400,
    StatusCode.FAILED_PRECONDITION: 400,
    StatusCode.OUT_OF_RANGE: 400,
    StatusCode.UNAUTHENTICATED: 401,
    StatusCode.PERMISSION_DENIED: 403,
    StatusCode.NOT_FOUND: 404,
    StatusCode.ALREADY_EXISTS: 409,
    StatusCode.ABORTED: 409,
    StatusCode.RESOURCE_EXHAUSTED: 429,
    StatusCode.CANCELLED: 499,
    StatusCode.UNIMPLEMENTED: 501,
    StatusCode.UNAVAILABLE: 503,
    StatusCode.DEADLINE_EXCEEDED: 504,
}

_Fields = dict[str, tuple[type, ...]]
_COMPLETION_FIELDS: _Fields = {
    "model": (str,), "prompt": (str,), "max_tokens": (int,), "min_tokens": (int,),
    "temperature": (float,), "top_p": (float,), "seed": (int,), "stream": (bool,),
    "version": (str,), "user": (str,),
}
_EMBEDDING_FIELDS: _Fields = {"model": (str,), "input": (str, list), "version": (str,),
                              "user": (str,)}
_WANT = {(str,): "a string", (int,): "a whole number >= 0", (float,): "a finite number",
         (bool,): "true or false", (str, list): "a string or a list of strings"}


@dataclass(frozen=True)
class Completion:
    """A parsed ``/v1/completions`` body."""

    request: infer_pb2.Infer.Request
    stream: bool


def error_body(exc: TetherError) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) for a Tether error."""
    code = StatusCode.coerce(exc.code)
    name = status_pb2.StatusCode.Name(int(code)).removeprefix("STATUS_CODE_")
    status = HTTP_STATUS.get(code, 500)
    return status, {"error": {
        "message": exc.message, "type": name.lower(), "code": name,
        "details": dict(exc.details),
    }}


def _object(body: bytes, fields: _Fields) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InvalidArgument(f"the body is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidArgument("the body must be a JSON object")
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise InvalidArgument(f"unknown field {unknown[0]!r}; known: {', '.join(sorted(fields))}")
    for name, kinds in fields.items():
        if name not in value or value[name] is None:
            continue
        item = value[name]
        ok = isinstance(item, kinds)
        if kinds == (float,):
            ok = isinstance(item, (int, float)) and not isinstance(item, bool)
            ok = ok and math.isfinite(item)
        elif kinds == (int,):
            ok = isinstance(item, int) and not isinstance(item, bool) and item >= 0
        if not ok:
            raise InvalidArgument(f"{name!r} must be {_WANT[kinds]}", details={"field": name})
    if not isinstance(value.get("model"), str) or not value["model"]:
        raise InvalidArgument("'model' is required, e.g. \"kjv-textgen\"")
    return value


def _model(value: dict[str, Any], request: infer_pb2.Infer.Request) -> None:
    model, _, version = str(value["model"]).partition("@")
    request.model_id = model
    request.version = value.get("version") or version


def parse_completion(body: bytes) -> Completion:
    """A ``/v1/completions`` body as an Infer.Request; InvalidArgument when malformed."""
    value = _object(body, _COMPLETION_FIELDS)
    request = infer_pb2.Infer.Request()
    _model(value, request)
    if not isinstance(value.get("prompt"), str):
        raise InvalidArgument("'prompt' is required: the text to continue")
    request.input.text = value["prompt"]
    p = request.params
    limit = 1 << 31
    for name in ("max_tokens", "min_tokens", "seed"):
        if (value.get(name) or 0) >= limit:
            raise InvalidArgument(f"{name!r} is too large")
    p.max_tokens = value.get("max_tokens") or 0
    p.min_tokens = value.get("min_tokens") or 0
    p.seed = value.get("seed") or 0
    temperature = value.get("temperature")
    if temperature is not None:
        if temperature < 0:
            raise InvalidArgument("'temperature' must be >= 0")
        # 0 asks for greedy decoding here, as in OpenAI's API; on the wire 0 means "the
        # model's default", and any value below 1e-4 is greedy.
        p.temperature = max(float(temperature), GREEDY_TEMPERATURE)
    if value.get("top_p") is not None:
        p.top_p = float(value["top_p"])
    return Completion(request, bool(value.get("stream")))


def parse_embeddings(body: bytes) -> infer_pb2.Infer.Request:
    """A ``/v1/embeddings`` body as an Infer.Request; InvalidArgument when malformed."""
    value = _object(body, _EMBEDDING_FIELDS)
    request = infer_pb2.Infer.Request()
    _model(value, request)
    texts = value.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise InvalidArgument("'input' must be a string or a non-empty list of strings")
    request.input.texts.texts.extend(texts)
    return request


def completion_chunk(
    chunk: infer_pb2.Infer.Chunk, model: str, created: int, max_tokens: int
) -> dict[str, Any]:
    """One streamed ``text_completion`` object; the last carries finish_reason and usage."""
    choice: dict[str, Any] = {"index": 0, "text": chunk.payload.text, "finish_reason": None}
    out: dict[str, Any] = {
        "id": chunk.correlation_id, "object": "text_completion", "created": created,
        "model": model, "choices": [choice],
    }
    if chunk.done:
        choice["finish_reason"] = finish_reason(chunk.usage, max_tokens)
        out["usage"] = usage(chunk.usage)
    return out


def completion(
    chunks: list[infer_pb2.Infer.Chunk], model: str, created: int, max_tokens: int
) -> dict[str, Any]:
    """The whole answer as one ``text_completion`` object."""
    last = chunks[-1]
    return {
        "id": last.correlation_id, "object": "text_completion", "created": created,
        "model": model,
        "choices": [{
            "index": 0, "text": "".join(c.payload.text for c in chunks),
            "finish_reason": finish_reason(last.usage, max_tokens),
        }],
        "usage": usage(last.usage),
    }


def embeddings(chunks: list[infer_pb2.Infer.Chunk], model: str) -> dict[str, Any]:
    data = [
        {"object": "embedding", "index": c.payload.embedding.index,
         "embedding": list(c.payload.embedding.values)}
        for c in chunks if c.payload.HasField("embedding")
    ]
    last = chunks[-1].usage if chunks else infer_pb2.Usage()
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": last.input_tokens, "total_tokens": last.input_tokens}}


def models(listed: services_pb2.ListModelsResponse) -> dict[str, Any]:
    return {"object": "list", "data": [
        {"id": f"{r.model.model_id}@{r.model.version}", "object": "model",
         "owned_by": r.publisher_key.hex()[:16],
         "task": registry_pb2.Task.Name(r.capabilities.task).removeprefix("TASK_").lower()}
        for r in listed.models
    ]}


def model_name(chunk: infer_pb2.Infer.Chunk, fallback: str) -> str:
    u = chunk.usage
    return f"{u.model_id}@{u.version}" if u.model_id else fallback


def finish_reason(u: infer_pb2.Usage, max_tokens: int) -> str:
    return "length" if max_tokens and u.output_tokens >= max_tokens else "stop"


def usage(u: infer_pb2.Usage) -> dict[str, int]:
    return {"prompt_tokens": u.input_tokens, "completion_tokens": u.output_tokens,
            "total_tokens": u.input_tokens + u.output_tokens}
