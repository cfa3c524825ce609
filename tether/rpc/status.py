"""The RPC exception tree.

``StatusCode`` is :class:`tether.errors.StatusCode`, re-exported. Every error that crosses a
call boundary is an ``RpcError``, which is a ``tether.errors.TetherError`` like every other error
of Tether:

- ``RpcError`` -- a call ended with a non-OK status (from the peer or locally). Constructed as
  ``RpcError(code, message, details)``, it is an instance of the ``TetherError`` subclass of its
  code as well: ``RpcError(StatusCode.NOT_FOUND, ...)`` is a ``NotFound``, so a caller handles an
  error received over the wire with ``except NotFound`` (or ``except RpcError`` and
  ``exc.code``), never by its message text.
- ``RpcProtocolError(RpcError)`` -- the peer broke the framing or call protocol;
  it ends the affected call (code INTERNAL) and never the whole connection
  unless the framing itself cannot be resynchronised.

A service handler's ``TetherError`` is sent with its code, message and details; any other
exception becomes UNKNOWN with the exception's text (:meth:`RpcError.from_exception`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Self

from tether.errors import ERROR_CLASSES, Internal, StatusCode, TetherError
from tether.v1 import status_pb2

__all__ = ["RpcError", "RpcProtocolError", "StatusCode"]


class RpcError(TetherError):
    """A call ended with a non-OK status; also the ``TetherError`` subclass of its code."""

    def __new__(
        cls,
        code: StatusCode | int = StatusCode.UNKNOWN,
        message: str = "",
        details: Mapping[str, str] | None = None,
    ) -> Self:
        made: type[RpcError] = cls
        if cls is RpcError:  # a subclass (RpcProtocolError) chose its own class
            made = _RPC_CLASSES.get(StatusCode.coerce(code), cls)
        return super().__new__(made)  # type: ignore[return-value]

    def __init__(
        self,
        code: StatusCode | int,
        message: str = "",
        details: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, code=code, details=details)

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}" if self.message else self.code.name

    @classmethod
    def from_proto(cls, err: status_pb2.Error) -> RpcError:
        return RpcError(err.code, err.message, dict(err.details))

    @classmethod
    def from_exception(cls, exc: BaseException) -> RpcError:
        """Map a handler's exception to the status sent to the peer."""
        if isinstance(exc, RpcError):
            return exc
        if isinstance(exc, TetherError):
            return RpcError(exc.code, exc.message, exc.details)
        return RpcError(StatusCode.UNKNOWN, f"{type(exc).__name__}: {exc}")


def _rpc_class(sub: type[TetherError]) -> type[RpcError]:
    name = f"Rpc{sub.__name__}"
    doc = f"An RPC ended with {sub.default_code.name}: an ``RpcError`` and a ``{sub.__name__}``."
    namespace = {"__doc__": doc, "__module__": __name__, "__qualname__": name}
    return type(name, (RpcError, sub), namespace)


#: The class ``RpcError(code, ...)`` makes for each code with a ``TetherError`` subclass
#: (``RpcNotFound``, ...; module attributes too, so that they pickle).
_RPC_CLASSES: dict[StatusCode, type[RpcError]] = {
    code: _rpc_class(sub) for code, sub in ERROR_CLASSES.items()
}
globals().update({cls.__name__: cls for cls in _RPC_CLASSES.values()})


class RpcProtocolError(RpcError, Internal):
    """The peer sent a frame that breaks the framing or the call protocol."""

    def __new__(cls, message: str = "", details: Mapping[str, str] | None = None) -> Self:
        return super().__new__(cls, StatusCode.INTERNAL)

    def __init__(self, message: str, details: Mapping[str, str] | None = None) -> None:
        super().__init__(StatusCode.INTERNAL, f"protocol error: {message}", details)
