"""What one request may ask for: every request limit, defined once.

The gateway checks a request's shape with these (it does not know the model), the
orchestrator checks it against the resolved model record before admission (so a
client error is never admitted, charged or dead-lettered), and the worker's engine
applies the same rules to what it runs. Each check raises ``InvalidArgument``.
"""

from __future__ import annotations

import math
import re

from tether.errors import InvalidArgument
from tether.v1 import infer_pb2, registry_pb2

#: Characters in one prompt or one text to embed.
MAX_PROMPT_CHARS = 16_384
#: Texts in one embedding request.
MAX_TEXTS = 256
#: Bytes of input tensors in one request.
MAX_TENSOR_BYTES = 4 * 1024 * 1024
#: Messages in one conversation, and the length of one message's role.
MAX_MESSAGES = 256
MAX_ROLE_CHARS = 64
#: Stop strings one request may give, and the length of each.
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
#: Tokens one request may generate.
MAX_NEW_TOKENS = 1024
#: Tokens generated when a request does not say (``params.max_tokens`` 0).
DEFAULT_MAX_TOKENS = 64
#: A model's input limit, in tokens, when its record declares none.
DEFAULT_MAX_INPUT = 256
#: Client-chosen correlation ids and retry tokens: printable, no spaces, at most 128
#: characters (the metadata store's column width).
CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")

#: The input kind each task takes, and how to ask for it.
_TASK_INPUT = {
    registry_pb2.TASK_TEXT_GENERATION: ("text", "input.text (a prompt) or input.messages"),
    registry_pb2.TASK_EMBEDDING: ("texts", "input.texts"),
    registry_pb2.TASK_TENSOR: ("tensors", "input.tensors"),
}
#: A word (whitespace-separated, with a letter in it) is at least one token in every
#: tokenizer Tether runs: a lower bound on a text's length without the tokenizer.
_WORD_RE = re.compile(r"\S*[A-Za-z]\S*")


def check_client_id(kind: str, value: str) -> None:
    """A correlation id or retry token chosen by the client (empty: Tether picks one)."""
    if value and not CLIENT_ID_RE.fullmatch(value):
        raise InvalidArgument(
            f"{kind} {value[:40]!r} must be 1 to 128 letters, digits or '_.:-', "
            "starting with a letter or digit",
            details={"field": kind.replace(" ", "_")},
        )


def max_tokens(params: infer_pb2.GenerationParams) -> int:
    """The tokens a text-generation request may produce (its ask, or the default)."""
    return params.max_tokens or DEFAULT_MAX_TOKENS


def check_generation(params: infer_pb2.GenerationParams) -> int:
    """Check generation parameters; returns the effective ``max_tokens``."""
    limit = max_tokens(params)
    if limit > MAX_NEW_TOKENS:
        raise InvalidArgument(
            f"max_tokens {limit} is over the limit of {MAX_NEW_TOKENS}",
            details={"field": "max_tokens", "limit": str(MAX_NEW_TOKENS)},
        )
    for value in (params.temperature, params.temperature_value):
        if value < 0 or not math.isfinite(value):
            raise InvalidArgument("temperature must be a finite number >= 0",
                                  details={"field": "temperature"})
    if params.HasField("repetition_penalty") and not (
            params.repetition_penalty > 0 and math.isfinite(params.repetition_penalty)):
        raise InvalidArgument("repetition_penalty must be a finite number > 0",
                              details={"field": "repetition_penalty"})
    if not 0 <= params.top_p <= 1:  # NaN fails this too
        raise InvalidArgument("top_p must be within [0, 1]", details={"field": "top_p"})
    if params.min_tokens > limit:
        raise InvalidArgument(f"min_tokens {params.min_tokens} is over max_tokens {limit}",
                              details={"field": "min_tokens"})
    check_stops(params)
    return limit


def check_stops(params: infer_pb2.GenerationParams) -> None:
    if len(params.stop) > MAX_STOP_STRINGS:
        raise InvalidArgument(f"{len(params.stop)} stop strings; at most {MAX_STOP_STRINGS}",
                              details={"field": "stop"})
    for i, stop in enumerate(params.stop):
        if not 1 <= len(stop) <= MAX_STOP_CHARS:
            raise InvalidArgument(f"stop string {i} must be 1 to {MAX_STOP_CHARS} characters",
                                  details={"field": "stop", "index": str(i)})


def check_messages(messages: infer_pb2.ChatMessages) -> None:
    items = messages.messages
    if not 1 <= len(items) <= MAX_MESSAGES:
        raise InvalidArgument(f"input.messages needs 1 to {MAX_MESSAGES} messages")
    if any(not m.role or len(m.role) > MAX_ROLE_CHARS for m in items):
        raise InvalidArgument(f"every message needs a role of 1 to {MAX_ROLE_CHARS} characters")
    if sum(len(m.content) for m in items) > MAX_PROMPT_CHARS:
        raise InvalidArgument(f"the messages are longer than {MAX_PROMPT_CHARS} characters")


def check_shape(request: infer_pb2.Infer.Request) -> None:
    """What any model refuses: sizes, parameters, ids (the gateway's checks)."""
    check_client_id("correlation id", request.correlation_id)
    check_client_id("retry token", request.retry_token)
    kind = request.input.WhichOneof("kind")
    if kind is None:
        raise InvalidArgument(
            "input is empty: set input.text, input.messages, input.texts or input.tensors")
    if kind == "text" and len(request.input.text) > MAX_PROMPT_CHARS:
        raise InvalidArgument(f"prompt longer than {MAX_PROMPT_CHARS} characters")
    if kind == "messages":
        check_messages(request.input.messages)
    if kind == "texts":
        texts = request.input.texts.texts
        if not texts or len(texts) > MAX_TEXTS:
            raise InvalidArgument(f"input.texts needs 1 to {MAX_TEXTS} texts")
        if any(len(t) > MAX_PROMPT_CHARS for t in texts):
            raise InvalidArgument(f"a text is longer than {MAX_PROMPT_CHARS} characters")
    if kind == "tensors":
        size = sum(len(t.data) for t in request.input.tensors.tensors)
        if size > MAX_TENSOR_BYTES:
            raise InvalidArgument(f"input tensors exceed {MAX_TENSOR_BYTES} bytes")
    check_generation(request.params)


def check_for_model(request: infer_pb2.Infer.Request, record: registry_pb2.ModelRecord) -> None:
    """What this model refuses: the wrong task, an input over its declared length.

    Prompt lengths are checked by a lower bound on their tokens (the orchestrator has no
    tokenizer); the engine checks the exact count and its refusal is still a client error.
    """
    if request.HasField("sealed"):
        # Only the worker can read a sealed input; it checks it against these limits.
        check_client_id("correlation id", request.correlation_id)
        check_client_id("retry token", request.retry_token)
        check_generation(request.params)
        return
    check_shape(request)
    caps = record.capabilities
    name = f"{record.model.model_id} {record.model.version}"
    wanted = _TASK_INPUT.get(caps.task)
    kind = request.input.WhichOneof("kind")
    chat = kind == "messages" and wanted is not None and wanted[0] == "text"
    if wanted is not None and kind != wanted[0] and not chat:
        task = registry_pb2.Task.Name(caps.task).removeprefix("TASK_").lower()
        raise InvalidArgument(f"{name} is a {task} model: send {wanted[1]}",
                              details={"field": "input", "task": task})
    limit = caps.max_input_length or DEFAULT_MAX_INPUT
    if kind == "text":
        texts = [request.input.text]
    elif kind == "messages":
        texts = [m.content for m in request.input.messages.messages]
    elif kind == "texts":
        texts = list(request.input.texts.texts)
    else:
        texts = []
    for i, text in enumerate(texts):
        words = len(_WORD_RE.findall(text))
        if words > limit:
            raise InvalidArgument(
                f"input is at least {words} tokens, {name} takes at most {limit}",
                details={"field": "input", "index": str(i), "limit": str(limit)},
            )
    if kind == "tensors" and caps.max_input_length:
        for t in request.input.tensors.tensors:
            count = math.prod(t.shape) if t.shape else 0
            if count > caps.max_input_length:
                raise InvalidArgument(
                    f"input {t.name!r} has {count} elements, {name} takes at most "
                    f"{caps.max_input_length}",
                    details={"field": "input", "limit": str(caps.max_input_length)},
                )
