"""Status codes and the RPC exception tree.

``StatusCode`` mirrors ``tether.v1.StatusCode`` (the gRPC code set) without the
proto prefix. Every error that crosses a call boundary is an ``RpcError``, which is a
``tether.errors.TetherError`` like every other error of Tether:

- ``RpcError`` -- a call ended with a non-OK status (from the peer or locally).
- ``RpcProtocolError(RpcError)`` -- the peer broke the framing or call protocol;
  it ends the affected call (code INTERNAL) and never the whole connection
  unless the framing itself cannot be resynchronised.

Any exception a service handler raises that carries an integer ``code``
attribute (and optionally ``message`` and ``details``) is sent with that code;
anything else becomes UNKNOWN with the exception's text.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from tether.errors import TetherError
from tether.v1 import status_pb2


class StatusCode(enum.IntEnum):
    """The gRPC status code set, valued as on the wire."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16

    @classmethod
    def coerce(cls, value: int) -> StatusCode:
        """Map any integer to a code; values outside the set become UNKNOWN."""
        try:
            return cls(value)
        except ValueError:
            return cls.UNKNOWN


# The proto enum and this one must never drift apart.
assert {f"STATUS_CODE_{c.name}": c.value for c in StatusCode} == dict(
    status_pb2.StatusCode.items()
), "StatusCode drifted from proto/tether/v1/status.proto"


class RpcError(TetherError):
    """A call ended with a non-OK status."""

    code: StatusCode

    def __init__(
        self,
        code: StatusCode | int,
        message: str = "",
        details: Mapping[str, str] | None = None,
    ) -> None:
        status = StatusCode.coerce(int(code))
        super().__init__(message, code=status, details=details)
        self.code = status

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}" if self.message else self.code.name

    def to_proto(self) -> status_pb2.Error:
        """The typed ``tether.v1.Error`` for this error."""
        return status_pb2.Error(
            code=self.code.value,  # type: ignore[arg-type]
            message=self.message,
            details=self.details,
        )

    @classmethod
    def from_proto(cls, err: status_pb2.Error) -> RpcError:
        return cls(err.code, err.message, dict(err.details))

    @classmethod
    def from_exception(cls, exc: BaseException) -> RpcError:
        """Map a handler's exception to the status sent to the peer."""
        if isinstance(exc, RpcError):
            return exc
        code = getattr(exc, "code", None)
        if isinstance(code, int) and not isinstance(code, bool):
            message = getattr(exc, "message", None)
            details = getattr(exc, "details", None)
            return cls(
                code,
                message if isinstance(message, str) else str(exc),
                details if isinstance(details, Mapping) else None,
            )
        return cls(StatusCode.UNKNOWN, f"{type(exc).__name__}: {exc}")


class RpcProtocolError(RpcError):
    """The peer sent a frame that breaks the framing or the call protocol."""

    def __init__(self, message: str, details: Mapping[str, str] | None = None) -> None:
        super().__init__(StatusCode.INTERNAL, f"protocol error: {message}", details)
