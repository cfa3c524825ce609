"""The one exception tree every Tether service shares, and the one ``StatusCode``.

A :class:`TetherError` carries a :class:`StatusCode` (the gRPC code set of
``tether.v1.StatusCode``), a message a person can act on, and string details for machines. Each
layer maps the errors of the libraries it uses into this tree at its boundary;
:meth:`TetherError.to_proto` turns one into the ``tether.v1.Error`` that travels in
``Infer.Chunk.error`` and RPC trailers, and :meth:`TetherError.from_proto` turns it back into the
matching subclass.

Every status code but OK and UNKNOWN has its subclass here (UNKNOWN is :class:`TetherError`
itself), so code that handles an error matches its class (``except NotFound``), never its text.
An error received over an RPC is a :class:`tether.rpc.RpcError` that is also the subclass of its
code (see ``tether/rpc/status.py``).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping

from tether.v1 import status_pb2


class StatusCode(enum.IntEnum):
    """The gRPC status code set, valued as on the wire. The values come from the proto
    (``proto/tether/v1/status.proto``); the names drop its ``STATUS_CODE_`` prefix."""

    OK = status_pb2.STATUS_CODE_OK
    CANCELLED = status_pb2.STATUS_CODE_CANCELLED
    UNKNOWN = status_pb2.STATUS_CODE_UNKNOWN
    INVALID_ARGUMENT = status_pb2.STATUS_CODE_INVALID_ARGUMENT
    DEADLINE_EXCEEDED = status_pb2.STATUS_CODE_DEADLINE_EXCEEDED
    NOT_FOUND = status_pb2.STATUS_CODE_NOT_FOUND
    ALREADY_EXISTS = status_pb2.STATUS_CODE_ALREADY_EXISTS
    PERMISSION_DENIED = status_pb2.STATUS_CODE_PERMISSION_DENIED
    RESOURCE_EXHAUSTED = status_pb2.STATUS_CODE_RESOURCE_EXHAUSTED
    FAILED_PRECONDITION = status_pb2.STATUS_CODE_FAILED_PRECONDITION
    ABORTED = status_pb2.STATUS_CODE_ABORTED
    OUT_OF_RANGE = status_pb2.STATUS_CODE_OUT_OF_RANGE
    UNIMPLEMENTED = status_pb2.STATUS_CODE_UNIMPLEMENTED
    INTERNAL = status_pb2.STATUS_CODE_INTERNAL
    UNAVAILABLE = status_pb2.STATUS_CODE_UNAVAILABLE
    DATA_LOSS = status_pb2.STATUS_CODE_DATA_LOSS
    UNAUTHENTICATED = status_pb2.STATUS_CODE_UNAUTHENTICATED

    @classmethod
    def coerce(cls, value: int) -> StatusCode:
        """Map any integer to a code; values outside the set become UNKNOWN."""
        try:
            return cls(value)
        except ValueError:
            return cls.UNKNOWN


class TetherError(Exception):
    """An error with a status code, a human message and machine-readable details."""

    default_code: StatusCode = StatusCode.UNKNOWN

    def __init__(
        self, message: str, *, code: int | None = None, details: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.code = StatusCode.coerce(self.default_code if code is None else code)
        self.message = message
        self.details: dict[str, str] = dict(details or {})

    @property
    def code_name(self) -> str:
        """The proto's name of the code (``STATUS_CODE_NOT_FOUND``)."""
        return f"STATUS_CODE_{self.code.name}"

    def to_proto(self) -> status_pb2.Error:
        return status_pb2.Error(
            code=self.code.value,
            message=self.message,
            details=self.details,
        )

    @classmethod
    def from_proto(cls, err: status_pb2.Error) -> TetherError:
        """The error ``err`` describes, as the subclass of its code."""
        return error_class(err.code)(err.message, code=err.code, details=dict(err.details))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code_name}, {self.message!r}, {self.details!r})"


class InvalidArgument(TetherError):
    """The caller sent something malformed: wrong shape, wrong type, too long."""

    default_code = StatusCode.INVALID_ARGUMENT


class NotFound(TetherError):
    """An unknown model, version, artifact, job or token."""

    default_code = StatusCode.NOT_FOUND


class AlreadyExists(TetherError):
    """A thing that must be unique was created twice with different contents."""

    default_code = StatusCode.ALREADY_EXISTS


class PermissionDenied(TetherError):
    """Policy forbids it, or a signature is missing or not from a trusted key."""

    default_code = StatusCode.PERMISSION_DENIED


class Unauthenticated(TetherError):
    """No valid credentials (e.g. an unknown or revoked tenant token)."""

    default_code = StatusCode.UNAUTHENTICATED


#: The details key of a retry hint (milliseconds); the edges send it as ``Retry-After``.
RETRY_AFTER_MS = "retry_after_ms"


class ResourceExhausted(TetherError):
    """A quota, a queue or a cache budget is full; ``retry_after_s`` hints when to retry."""

    default_code = StatusCode.RESOURCE_EXHAUSTED

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

    default_code = StatusCode.FAILED_PRECONDITION


class Cancelled(TetherError):
    """The caller cancelled the operation."""

    default_code = StatusCode.CANCELLED


class Unavailable(TetherError):
    """A dependency (store, replica, peer) could not be reached; retrying may help."""

    default_code = StatusCode.UNAVAILABLE


class DataLoss(TetherError):
    """Stored bytes are corrupt: a digest mismatch, a truncated or tampered artifact."""

    default_code = StatusCode.DATA_LOSS


class Internal(TetherError):
    """A bug or an unexpected failure inside Tether."""

    default_code = StatusCode.INTERNAL


class DeadlineExceeded(TetherError):
    """The operation's deadline passed before it finished."""

    default_code = StatusCode.DEADLINE_EXCEEDED


class Aborted(TetherError):
    """The operation was aborted (a conflict a retry at a higher level may resolve)."""

    default_code = StatusCode.ABORTED


class OutOfRange(TetherError):
    """A value past the end of a valid range."""

    default_code = StatusCode.OUT_OF_RANGE


class Unimplemented(TetherError):
    """The method or feature is not implemented by this peer."""

    default_code = StatusCode.UNIMPLEMENTED


#: The subclass of each status code (UNKNOWN and OK: :class:`TetherError` itself).
ERROR_CLASSES: dict[StatusCode, type[TetherError]] = {
    sub.default_code: sub
    for sub in (
        Cancelled,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
}


def error_class(code: int) -> type[TetherError]:
    """The :class:`TetherError` subclass that stands for ``code``."""
    return ERROR_CLASSES.get(StatusCode.coerce(code), TetherError)
