"""Request validation at the gateway (before any work) and at workers (for the input of a
sealed request, which only the worker can read). The limits themselves live in
``tether.limits`` and the rules of model ids and versions in ``tether.naming``; this module
applies them to a request and adds the checks of sealed requests."""

from __future__ import annotations

from tether import limits, naming, topics
from tether.errors import InvalidArgument
from tether.sealing import MAX_KEY_SLOTS
from tether.v1 import infer_pb2

#: A sealed input: the largest clear one plus room for the binding and the seal.
MAX_SEALED_BYTES = limits.MAX_TENSOR_BYTES + 64 * 1024


def validate_target(model_id: str, version: str, region: str) -> None:
    """Refuse a model, version or region that is not well formed (INVALID_ARGUMENT)."""
    naming.check_model_id(model_id)
    naming.check_requested_version(version)
    if region:
        topics.region(region)


def validate(request: infer_pb2.Infer.Request) -> None:
    """Refuse malformed requests with INVALID_ARGUMENT before any work."""
    validate_target(request.model_id, request.version, request.region)
    limits.check_shape(request)


def validate_sealed(request: infer_pb2.Infer.Request) -> None:
    """What can be checked of a request a client sealed itself: its clear fields and
    sizes. The input is checked by the worker that opens it (``validate``)."""
    validate_target(request.model_id, request.version, request.region)
    if request.HasField("input"):
        raise InvalidArgument("a sealed request carries its input only in `sealed`")
    if not request.correlation_id or not request.tenant_id:
        raise InvalidArgument("a sealed request names the correlation id and tenant it is bound to")
    limits.check_client_id("correlation id", request.correlation_id)
    limits.check_client_id("retry token", request.retry_token)
    if len(request.sealed.ciphertext) > MAX_SEALED_BYTES:
        raise InvalidArgument(f"sealed input exceeds {MAX_SEALED_BYTES} bytes")
    if not 1 <= len(request.sealed.keys) <= MAX_KEY_SLOTS:
        raise InvalidArgument(f"a sealed request has 1 to {MAX_KEY_SLOTS} key slots")
    limits.check_generation(request.params)
