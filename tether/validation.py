"""Request validation shared by the gateway (before any work) and workers (for the
input of a sealed request, which only the worker can read)."""

from __future__ import annotations

import re

from tether import topics
from tether.errors import InvalidArgument, TetherError
from tether.sealing import MAX_KEY_SLOTS
from tether.v1 import infer_pb2

MAX_PROMPT_CHARS = 16_384
MAX_TEXTS = 256
MAX_TENSOR_BYTES = 4 * 1024 * 1024
MAX_NEW_TOKENS = 1024
MAX_MESSAGES = 256
MAX_ROLE_CHARS = 64
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
#: A sealed input: the largest clear one plus room for the binding and the seal.
MAX_SEALED_BYTES = MAX_TENSOR_BYTES + 64 * 1024
_VERSION_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))?$")


def validate_target(model_id: str, version: str, region: str) -> None:
    """Refuse a model, version or region that is not well formed (INVALID_ARGUMENT)."""
    try:
        topics.model(model_id)
    except TetherError:
        raise InvalidArgument(
            f"model_id {model_id!r} is not a model name (e.g. 'tiny-stories')"
        ) from None
    if version and not _VERSION_RE.match(version):
        raise InvalidArgument(f"version {version!r} is not MAJOR or MAJOR.MINOR")
    if region:
        topics.region(region)


def validate(request: infer_pb2.Infer.Request) -> None:
    """Refuse malformed requests with INVALID_ARGUMENT before any work."""
    validate_target(request.model_id, request.version, request.region)
    kind = request.input.WhichOneof("kind")
    if kind is None:
        raise InvalidArgument(
            "input is empty: set input.text, input.messages, input.texts or input.tensors")
    if kind == "text" and len(request.input.text) > MAX_PROMPT_CHARS:
        raise InvalidArgument(f"prompt longer than {MAX_PROMPT_CHARS} characters")
    if kind == "messages":
        messages = request.input.messages.messages
        if not 1 <= len(messages) <= MAX_MESSAGES:
            raise InvalidArgument(f"input.messages needs 1 to {MAX_MESSAGES} messages")
        if any(not m.role or len(m.role) > MAX_ROLE_CHARS for m in messages):
            raise InvalidArgument(f"every message needs a role of 1 to {MAX_ROLE_CHARS} "
                                  "characters")
        if sum(len(m.content) for m in messages) > MAX_PROMPT_CHARS:
            raise InvalidArgument(f"the messages are longer than {MAX_PROMPT_CHARS} characters")
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
    validate_params(request.params)


def validate_params(params: infer_pb2.GenerationParams) -> None:
    if params.max_tokens > MAX_NEW_TOKENS:
        raise InvalidArgument(f"params.max_tokens is above {MAX_NEW_TOKENS}")
    if len(params.stop) > MAX_STOP_STRINGS or any(
            not 1 <= len(s) <= MAX_STOP_CHARS for s in params.stop):
        raise InvalidArgument(f"params.stop takes up to {MAX_STOP_STRINGS} strings of 1 to "
                              f"{MAX_STOP_CHARS} characters")


def validate_sealed(request: infer_pb2.Infer.Request) -> None:
    """What can be checked of a request a client sealed itself: its clear fields and
    sizes. The input is checked by the worker that opens it (``validate``)."""
    validate_target(request.model_id, request.version, request.region)
    if request.HasField("input"):
        raise InvalidArgument("a sealed request carries its input only in `sealed`")
    if not request.correlation_id or not request.tenant_id:
        raise InvalidArgument("a sealed request names the correlation id and tenant it is bound to")
    if len(request.sealed.ciphertext) > MAX_SEALED_BYTES:
        raise InvalidArgument(f"sealed input exceeds {MAX_SEALED_BYTES} bytes")
    if not 1 <= len(request.sealed.keys) <= MAX_KEY_SLOTS:
        raise InvalidArgument(f"a sealed request has 1 to {MAX_KEY_SLOTS} key slots")
    validate_params(request.params)
