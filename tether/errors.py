"""The one exception tree every Tether service shares.

A :class:`TetherError` carries a status code from ``tether.v1.StatusCode`` (the gRPC code set),
a message a person can act on, and string details for machines. Each layer maps the errors of the
libraries it uses into this tree at its boundary; :meth:`TetherError.to_proto` turns one into the
``tether.v1.Error`` that travels in ``Infer.Chunk.error`` and RPC trailers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from tether.v1 import status_pb2

StatusCode = status_pb2.StatusCode


class TetherError(Exception):
    """An error with a status code, a human message and machine-readable details."""

    default_code: int = status_pb2.STATUS_CODE_UNKNOWN

    def __init__(
        self, message: str, *, code: int | None = None, details: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.code: int = self.default_code if code is None else code
        self.message = message
        self.details: dict[str, str] = dict(details or {})

    @property
    def code_name(self) -> str:
        return str(status_pb2.StatusCode.Name(self.code))

    def to_proto(self) -> status_pb2.Error:
        return status_pb2.Error(code=self.code, message=self.message, details=self.details)  # type: ignore[arg-type]

    @classmethod
    def from_proto(cls, err: status_pb2.Error) -> TetherError:
        sub = _BY_CODE.get(err.code, TetherError)
        return sub(err.message, code=err.code, details=dict(err.details))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code_name}, {self.message!r}, {self.details!r})"


class InvalidArgument(TetherError):
    """The caller sent something malformed: wrong shape, wrong type, too long."""

    default_code = status_pb2.STATUS_CODE_INVALID_ARGUMENT


class NotFound(TetherError):
    """An unknown model, version, artifact, job or token."""

    default_code = status_pb2.STATUS_CODE_NOT_FOUND


class AlreadyExists(TetherError):
    """A thing that must be unique was created twice with different contents."""

    default_code = status_pb2.STATUS_CODE_ALREADY_EXISTS


class PermissionDenied(TetherError):
    """Policy forbids it, or a signature is missing or not from a trusted key."""

    default_code = status_pb2.STATUS_CODE_PERMISSION_DENIED


class Unauthenticated(TetherError):
    """No valid credentials (e.g. an unknown or revoked tenant token)."""

    default_code = status_pb2.STATUS_CODE_UNAUTHENTICATED


#: The details key of a retry hint (milliseconds); the edges send it as ``Retry-After``.
RETRY_AFTER_MS = "retry_after_ms"


class ResourceExhausted(TetherError):
    """A quota, a queue or a cache budget is full; ``retry_after_s`` hints when to retry."""

    default_code = status_pb2.STATUS_CODE_RESOURCE_EXHAUSTED

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        details: Mapping[str, str] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, code=code, details=details)
        if retry_after_s is not None:
            self.details[RETRY_AFTER_MS] = str(max(1, math.ceil(retry_after_s * 1000)))


def retry_after_s(details: Mapping[str, str]) -> int | None:
    """Whole seconds (at least 1) for a ``Retry-After`` header, from an error's retry
    hint; None when it has none."""
    try:
        ms = int(details[RETRY_AFTER_MS])
    except (KeyError, ValueError):
        return None
    return max(1, math.ceil(ms / 1000))


class FailedPrecondition(TetherError):
    """The system is not in a state that allows the operation (e.g. schema not migrated)."""

    default_code = status_pb2.STATUS_CODE_FAILED_PRECONDITION


class Cancelled(TetherError):
    """The caller cancelled the operation."""

    default_code = status_pb2.STATUS_CODE_CANCELLED


class Unavailable(TetherError):
    """A dependency (store, replica, peer) could not be reached; retrying may help."""

    default_code = status_pb2.STATUS_CODE_UNAVAILABLE


class DataLoss(TetherError):
    """Stored bytes are corrupt: a digest mismatch, a truncated or tampered artifact."""

    default_code = status_pb2.STATUS_CODE_DATA_LOSS


class Internal(TetherError):
    """A bug or an unexpected failure inside Tether."""

    default_code = status_pb2.STATUS_CODE_INTERNAL


_BY_CODE: dict[int, type[TetherError]] = {
    sub.default_code: sub
    for sub in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        Unauthenticated,
        ResourceExhausted,
        FailedPrecondition,
        Cancelled,
        Unavailable,
        DataLoss,
        Internal,
    )
}
