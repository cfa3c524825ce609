"""The OpenAI-compatible HTTP API of the gateway, without the HTTP: JSON bodies in,
``Infer.Request`` out; ``Infer.Chunk`` in, JSON objects out. No I/O here, so every
function is tested (and fuzzed) on its own; ``gateway.http`` carries it over HTTP.

The request and response shapes are pydantic models that mirror OpenAI's schema (the
subset Tether serves); ``gateway.http`` publishes them in its OpenAPI document.

Routes (spec D10: for clients that cannot speak Hyperswarm RPC):

* ``POST /v1/completions``: ``model`` (may carry a version as ``name@1.0``), ``prompt``
  (a string, or a list of one), ``max_tokens``, ``min_tokens``, ``temperature`` (0:
  greedy), ``top_p``, ``top_k``, ``seed``, ``stop`` (``tether.limits`` bounds them), ``n``
  (1 only), ``stream`` and ``stream_options.include_usage``, ``version``, ``user``.
  ``stream: true`` answers with server-sent events, one ``text_completion`` object per
  chunk, then ``data: [DONE]``.
* ``POST /v1/chat/completions``: ``messages`` (``role``, ``content``: a string or a list
  of ``{type: "text", text}`` parts; ``developer`` is taken as ``system``), which the
  worker renders with the model's own chat template; ``max_completion_tokens`` (or
  ``max_tokens``) and the sampling fields of completions. Streamed as
  ``chat.completion.chunk`` objects: the first delta carries ``role: "assistant"``, then
  content deltas, a final chunk with ``finish_reason``, the usage chunk when asked for,
  ``data: [DONE]``. A model without a chat template answers 400.
* ``POST /v1/embeddings``: ``model``, ``input`` (a string or a list of strings),
  ``encoding_format`` (``float`` or ``base64``: little-endian float32), ``user``.
* ``GET /v1/models`` and ``GET /v1/models/{id}``.

A request the model's policy degraded (its pool had no room; ``orchestrator.service``)
is answered by the degrade-to model: the body's ``model`` names that one
(``model@version``, in every streamed chunk too) and the ``x-tether-degraded-from``
header names the model asked for.

Stop strings and the finish reason are the worker's: generation ends in the engine at a
stop string (no token past it is computed), and the final chunk's ``finish_reason`` says
``stop`` or ``length``; the gateway does not guess either.

Fields this API does not know are ignored, as OpenAI-compatible servers do (the SDKs
send new ones); a known field of the wrong type or range is refused. Errors are
``{"error": {"message", "type", "param", "code", "details"}}`` with the HTTP status of
their Tether status code.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from tether import naming
from tether.errors import InvalidArgument, TetherError, retry_after_s
from tether.rpc import StatusCode
from tether.v1 import infer_pb2, registry_pb2, services_pb2

#: The largest request body read, in bytes: 16 Ki-character prompts fit many times over.
MAX_BODY_BYTES = 1 << 20
#: The Retry-After of a 429 whose error says nothing more precise.
DEFAULT_RETRY_AFTER_S = 1
#: Set on the answer to a request its model's policy degraded: the model asked for
#: (``model@version``); the body's ``model`` is the one that served it.
DEGRADED_HEADER = "x-tether-degraded-from"

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

_Count = Annotated[int, Field(ge=0, lt=1 << 31)]


class _Body(BaseModel):
    # strict: "1" is not a number nor 1 a boolean; unknown fields are ignored.
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class StreamOptions(_Body):
    include_usage: bool = False


class _Generation(_Body):
    """What completions and chat completions both take."""

    max_tokens: _Count | None = None
    min_tokens: _Count | None = Field(None, description="Tether: generate at least this many")
    temperature: float | None = Field(None, ge=0, description="0: greedy decoding")
    top_p: float | None = None
    top_k: _Count | None = Field(None, description="Tether: sample among the k likeliest")
    seed: _Count | None = None
    stop: str | list[str] | None = Field(None, description="strings that end the answer")
    # (OpenAI's schema lets these be null: some clients send null for "the default".)
    n: Annotated[int, Field(ge=1)] | None = Field(1, description="1 only: one completion "
                                                  "per request")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    version: str | None = None
    user: str | None = None


class CompletionRequest(_Generation):
    """The body of ``POST /v1/completions``."""

    model: str = Field(min_length=1, examples=["kjv-textgen"],
                       description="a model name, optionally with @VERSION")
    prompt: str | list[str] = Field(description="the text to continue (or a list of one)")


class ContentPart(_Body):
    """One part of a message's content; only ``text`` parts are served."""

    type: str
    text: str | None = None


class ChatMessage(_Body):
    role: str = Field(min_length=1, examples=["user"],
                      description="system, user, assistant (developer: as system), or any "
                                  "role the model's chat template takes")
    content: str | list[ContentPart] | None = Field(
        None, description="a string, or a list of {type: text, text} parts")
    name: str | None = None


class ChatCompletionRequest(_Generation):
    """The body of ``POST /v1/chat/completions``."""

    model: str = Field(min_length=1, examples=["smollm2-135m-instruct"],
                       description="a model name, optionally with @VERSION")
    messages: list[ChatMessage] = Field(description="the conversation, oldest first")
    max_tokens: _Count | None = Field(None, description="as max_completion_tokens")
    max_completion_tokens: _Count | None = None


class EmbeddingRequest(_Body):
    """The body of ``POST /v1/embeddings``."""

    model: str = Field(min_length=1, examples=["all-minilm-l6-v2"])
    input: str | list[str] = Field(description="a text or a non-empty list of texts")
    encoding_format: Literal["float", "base64"] = "float"
    version: str | None = None
    user: str | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None


class Completion(BaseModel):
    """A whole answer, and each streamed chunk of one (whose ``choices`` may be empty:
    the usage chunk of ``stream_options.include_usage``)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length"]


class ChatCompletion(BaseModel):
    """A whole chat answer."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    """What a streamed chunk adds: the role once (first chunk), then content."""

    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(BaseModel):
    """One streamed piece of a chat answer (``choices`` empty: the usage chunk)."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="floats, or base64 float32 (LE)")


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class Model(BaseModel):
    id: str = Field(examples=["kjv-textgen@1.0"])
    object: Literal["model"] = "model"
    created: int = Field(description="when the version was published (Unix seconds)")
    owned_by: str
    task: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str
    details: dict[str, str] = {}


class ErrorBody(BaseModel):
    error: ErrorDetail


@dataclass(frozen=True)
class ParsedCompletion:
    """A ``/v1/completions`` body as Tether sees it."""

    request: infer_pb2.Infer.Request
    stream: bool
    include_usage: bool = False
    #: The model as the client named it: every streamed chunk carries this one name.
    model: str = ""


@dataclass(frozen=True)
class ParsedChat:
    """A ``/v1/chat/completions`` body as Tether sees it."""

    request: infer_pb2.Infer.Request
    stream: bool
    include_usage: bool = False
    model: str = ""


@dataclass(frozen=True)
class ParsedEmbeddings:
    request: infer_pb2.Infer.Request
    encoding_format: str = "float"


def error_body(exc: TetherError) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) for a Tether error."""
    code = exc.code
    name = code.name
    status = HTTP_STATUS.get(code, 500)
    return status, {"error": {
        "message": exc.message, "type": name.lower(), "param": exc.details.get("field"),
        "code": name, "details": dict(exc.details),
    }}


def retry_after(exc: TetherError) -> int:
    """Whole seconds a refused client should wait (``Retry-After``): the error's retry
    hint (``tether.errors.retry_after_s``), else ``DEFAULT_RETRY_AFTER_S``."""
    hint = retry_after_s(exc.details)
    return DEFAULT_RETRY_AFTER_S if hint is None else hint


_M = TypeVar("_M", bound=BaseModel)


def _parse(kind: type[_M], body: bytes) -> _M:
    try:
        return kind.model_validate_json(body)
    except pydantic.ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        if first["type"] == "json_invalid":
            # (A lone surrogate such as "\ud800" lands here: it cannot be UTF-8.)
            raise InvalidArgument(f"the body is not valid JSON: {first['msg']}") from None
        if first["type"] == "model_type":
            raise InvalidArgument("the body must be a JSON object") from None
        field = str(first["loc"][0]) if first["loc"] else ""
        if first["type"] == "missing":
            raise InvalidArgument(f"{field!r} is required", details={"field": field}) from None
        where = ".".join(str(p) for p in first["loc"] if not str(p).startswith(("str", "list[")))
        raise InvalidArgument(f"{where!r}: {first['msg']}", details={"field": field}) from None


def _model(name: str, version: str | None, request: infer_pb2.Infer.Request) -> None:
    model, _, at_version = name.partition("@")
    request.model_id = model
    request.version = version or at_version


def _one_prompt(prompt: str | list[str]) -> str:
    if isinstance(prompt, str):
        return prompt
    if len(prompt) != 1:
        raise InvalidArgument(
            f"'prompt' is a list of {len(prompt)}: send one prompt per request",
            details={"field": "prompt"},
        )
    return prompt[0]


def _params(value: CompletionRequest | ChatCompletionRequest,
            p: infer_pb2.GenerationParams) -> None:
    """The sampling fields both text routes share, onto ``p``."""
    stop = value.stop
    p.stop.extend([stop] if isinstance(stop, str) else stop or [])
    p.min_tokens = value.min_tokens or 0
    p.seed = value.seed or 0
    p.top_k = value.top_k or 0
    if value.temperature is not None:
        p.temperature_value = value.temperature  # 0: greedy, as in OpenAI's API
    if value.top_p is not None:
        p.top_p = value.top_p


def parse_completion(body: bytes) -> ParsedCompletion:
    """A ``/v1/completions`` body as an Infer.Request; InvalidArgument when malformed."""
    value = _parse(CompletionRequest, body)
    if value.n not in (None, 1):
        raise InvalidArgument(f"'n' is {value.n}: one completion per request (n=1)",
                              details={"field": "n"})
    request = infer_pb2.Infer.Request()
    _model(value.model, value.version, request)
    request.input.text = _one_prompt(value.prompt)
    request.params.max_tokens = value.max_tokens or 0
    _params(value, request.params)
    options = value.stream_options
    return ParsedCompletion(
        request, bool(value.stream), include_usage=bool(options and options.include_usage),
        model=value.model,
    )


def _content(i: int, content: str | list[ContentPart] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for part in content:
        if part.type != "text" or part.text is None:
            raise InvalidArgument(
                f"message {i} has a {part.type!r} content part: only text parts are served",
                details={"field": "messages", "index": str(i)})
        texts.append(part.text)
    return "\n".join(texts)


def parse_chat(body: bytes) -> ParsedChat:
    """A ``/v1/chat/completions`` body as an Infer.Request whose input is the messages
    (the worker renders them with the model's chat template); InvalidArgument when
    malformed."""
    value = _parse(ChatCompletionRequest, body)
    if value.n not in (None, 1):
        raise InvalidArgument(f"'n' is {value.n}: one choice per request (n=1)",
                              details={"field": "n"})
    request = infer_pb2.Infer.Request()
    _model(value.model, value.version, request)
    for i, m in enumerate(value.messages):
        # OpenAI's "developer" role is its new name for "system"; templates know "system".
        role = "system" if m.role == "developer" else m.role
        request.input.messages.messages.add(role=role, content=_content(i, m.content))
    if not value.messages:
        request.input.messages.SetInParent()  # (tether.limits refuses it by name)
    request.params.max_tokens = value.max_completion_tokens or value.max_tokens or 0
    _params(value, request.params)
    options = value.stream_options
    return ParsedChat(request, bool(value.stream),
                      include_usage=bool(options and options.include_usage), model=value.model)


def parse_embeddings(body: bytes) -> ParsedEmbeddings:
    """A ``/v1/embeddings`` body as an Infer.Request; InvalidArgument when malformed."""
    value = _parse(EmbeddingRequest, body)
    request = infer_pb2.Infer.Request()
    _model(value.model, value.version, request)
    texts = [value.input] if isinstance(value.input, str) else value.input
    if not texts:
        raise InvalidArgument("'input' must be a string or a non-empty list of strings",
                              details={"field": "input"})
    request.input.texts.texts.extend(texts)
    return ParsedEmbeddings(request, value.encoding_format)


def completion_chunk(
    chunk: infer_pb2.Infer.Chunk, text: str, model: str, created: int, finish: str | None
) -> dict[str, Any]:
    """One streamed ``text_completion`` object."""
    return Completion(
        id=chunk.correlation_id, created=created, model=model,
        choices=[CompletionChoice(text=text, finish_reason=finish)],  # type: ignore[arg-type]
    ).model_dump(mode="json", exclude={"usage"})


def usage_chunk(
    correlation_id: str, u: infer_pb2.Usage, model: str, created: int
) -> dict[str, Any]:
    """The last streamed object with ``stream_options.include_usage``: usage, no choices."""
    return Completion(id=correlation_id, created=created, model=model, choices=[],
                      usage=usage(u)).model_dump(mode="json")


def completion(
    correlation_id: str, text: str, u: infer_pb2.Usage, *, model: str, created: int, finish: str
) -> dict[str, Any]:
    """The whole answer as one ``text_completion`` object."""
    return Completion(
        id=correlation_id, created=created, model=model,
        choices=[CompletionChoice(text=text, finish_reason=finish)],  # type: ignore[arg-type]
        usage=usage(u),
    ).model_dump(mode="json")


def chat_completion(
    correlation_id: str, text: str, u: infer_pb2.Usage, *, model: str, created: int, finish: str
) -> dict[str, Any]:
    """The whole chat answer as one ``chat.completion`` object."""
    return ChatCompletion(
        id=correlation_id, created=created, model=model,
        choices=[ChatChoice(message=AssistantMessage(content=text),
                            finish_reason=finish)],  # type: ignore[arg-type]
        usage=usage(u),
    ).model_dump(mode="json")


def chat_chunk(correlation_id: str, model: str, created: int, *, role: bool = False,
               content: str | None = None, finish: str | None = None) -> dict[str, Any]:
    """One streamed ``chat.completion.chunk``: the role (first), content, or the finish."""
    value = ChatCompletionChunk(
        id=correlation_id, created=created, model=model, choices=[ChatChunkChoice(
            delta=ChatDelta(role="assistant" if role else None, content=content),
            finish_reason=finish)],  # type: ignore[arg-type]
    ).model_dump(mode="json", exclude={"usage"})
    # A delta names only what it adds, as OpenAI's do ({} on the final chunk).
    choice = value["choices"][0]
    choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
    return value


def chat_usage_chunk(
    correlation_id: str, u: infer_pb2.Usage, model: str, created: int
) -> dict[str, Any]:
    """The last streamed chat object with ``stream_options.include_usage``."""
    return ChatCompletionChunk(id=correlation_id, created=created, model=model, choices=[],
                               usage=usage(u)).model_dump(mode="json")


def _base64_floats(values: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode("ascii")


def embeddings(
    chunks: list[infer_pb2.Infer.Chunk], model: str, encoding_format: str = "float"
) -> dict[str, Any]:
    data = [
        Embedding(index=c.payload.embedding.index, embedding=(
            _base64_floats(list(c.payload.embedding.values)) if encoding_format == "base64"
            else list(c.payload.embedding.values)))
        for c in chunks if c.payload.HasField("embedding")
    ]
    last = chunks[-1].usage if chunks else infer_pb2.Usage()
    return EmbeddingList(data=data, model=model, usage=Usage(
        prompt_tokens=last.input_tokens, total_tokens=last.input_tokens,
    )).model_dump(mode="json")


def _model_entry(r: registry_pb2.ModelRecord) -> Model:
    return Model(
        id=f"{r.model.model_id}@{r.model.version}", created=r.created_unix_ms // 1000,
        owned_by=r.publisher_key.hex()[:16],
        task=registry_pb2.Task.Name(r.capabilities.task).removeprefix("TASK_").lower(),
    )


def models(listed: services_pb2.ListModelsResponse) -> dict[str, Any]:
    return ModelList(data=[_model_entry(r) for r in listed.models]).model_dump(mode="json")


def find_model(listed: services_pb2.ListModelsResponse, name: str) -> dict[str, Any] | None:
    """``name`` (``id@version``, or ``id`` for its newest version) among ``listed``."""
    model_id, _, version = name.partition("@")
    found = [r for r in listed.models if r.model.model_id == model_id
             and (not version or r.model.version == version)]
    if not found:
        return None
    newest = max(found, key=lambda r: naming.Version.parse(r.model.version))
    return _model_entry(newest).model_dump(mode="json")


def model_name(chunk: infer_pb2.Infer.Chunk, fallback: str) -> str:
    u = chunk.usage
    return f"{u.model_id}@{u.version}" if u.model_id else fallback


def degraded_headers(first: infer_pb2.Infer.Chunk | None) -> dict[str, str]:
    """The response header of a degraded request (from its first chunk): the model
    the client asked for, as ``model@version``; none otherwise."""
    if first is None or not first.degraded_from:
        return {}
    return {DEGRADED_HEADER: first.degraded_from}


def finish_reason(chunk: infer_pb2.Infer.Chunk) -> str:
    """The final chunk's finish reason, as OpenAI names it (``stop`` when a worker of
    an older release left it unset)."""
    return "length" if chunk.finish_reason == infer_pb2.FINISH_REASON_LENGTH else "stop"


def usage(u: infer_pb2.Usage) -> Usage:
    return Usage(prompt_tokens=u.input_tokens, completion_tokens=u.output_tokens,
                 total_tokens=u.input_tokens + u.output_tokens)
