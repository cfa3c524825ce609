"""Method tables shared by generated stubs and the runtime.

Generated servicer base classes (``tether/v1/*_rpc.py``) carry a
``__rpc_service__`` name and a ``__rpc_methods__`` table of ``MethodSpec``;
``collect_handlers`` turns servicer instances into the handler map a
connection dispatches on. Services see typed messages; bytes stop here, except
where a relay forwards a message it received unchanged: it yields the ``Encoded``
message, whose bytes go out as they came.

A server-streaming handler yields ``Responses``: one message, or a batch of them
(a sequence of messages and ``Encoded`` ones), which goes out in one frame when the
client accepts batches (``RpcOpen.accept_batch``) and the credits allow, else one
frame per message: a relay forwards what is already waiting in one go.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeAlias, TypeVar

import trio
from google.protobuf.message import DecodeError, Message

from tether.rpc.status import RpcError, StatusCode

MethodKind = Literal["unary", "server_stream"]

M = TypeVar("M", bound=Message)


@dataclass(frozen=True, slots=True)
class Encoded(Generic[M]):
    """A message with its serialized form as received: forwarded as these bytes (no
    re-encoding). Whoever changes ``message`` forwards the message, not this."""

    message: M
    data: bytes


#: What a server-streaming handler yields: a message, or a batch of them in order.
Responses: TypeAlias = M | Encoded[M] | Sequence[M | Encoded[M]]


@dataclass(frozen=True)
class MethodSpec:
    """One RPC method as declared in proto."""

    name: str
    kind: MethodKind
    request_type: type[Message]
    response_type: type[Message]


@dataclass
class ServerContext:
    """What a handler knows about the call it serves."""

    method: str
    metadata: Mapping[str, str]
    #: Absolute deadline on the trio clock (``math.inf`` when none).
    deadline: float = math.inf
    #: Opaque description of the peer (e.g. its public key in hex).
    peer: str = ""
    #: Trailing metadata the handler wants sent with the final status.
    trailing_metadata: dict[str, str] = field(default_factory=dict)

    @property
    def traceparent(self) -> str | None:
        """The caller's W3C ``traceparent``, if it sent one."""
        return self.metadata.get("traceparent")

    def time_remaining(self) -> float:
        return self.deadline - trio.current_time()

    def remaining_timeout(self) -> float | None:
        """The time left as a ``timeout=`` for onward calls (None: no deadline)."""
        if self.deadline == math.inf:
            return None
        return max(self.time_remaining(), 0.001)

    def abort(
        self, code: StatusCode, message: str, details: Mapping[str, str] | None = None
    ) -> None:
        """End the call now with ``code``."""
        raise RpcError(code, message, details)


UnaryFunc = Callable[[Any, ServerContext], Awaitable[Message]]
StreamFunc = Callable[[Any, ServerContext], AsyncIterator[Message]]


@dataclass(frozen=True)
class Handler:
    """A servicer method bound to its spec."""

    full_name: str
    spec: MethodSpec
    func: Callable[..., Any]

    def parse_request(self, payload: bytes) -> Message:
        try:
            return self.spec.request_type.FromString(payload)
        except DecodeError as exc:
            raise RpcError(
                StatusCode.INVALID_ARGUMENT,
                f"cannot decode {self.spec.request_type.DESCRIPTOR.full_name}: {exc}",
            ) from None

    def serialize_responses(self, item: object) -> list[bytes]:
        """What a streaming handler yielded (see ``Responses``), serialized in order."""
        if isinstance(item, (Message, Encoded)):
            return [self.serialize_response(item)]
        if isinstance(item, Sequence) and not isinstance(item, (str, bytes)):
            return [self.serialize_response(one) for one in item]
        return [self.serialize_response(item)]  # (raises: not a message)

    def serialize_response(self, message: object) -> bytes:
        if isinstance(message, Encoded):
            if not isinstance(message.message, self.spec.response_type):
                raise RpcError(
                    StatusCode.INTERNAL,
                    f"{self.full_name} forwarded {type(message.message).__name__}, "
                    f"expected {self.spec.response_type.__name__}",
                )
            return message.data
        if not isinstance(message, self.spec.response_type):
            raise RpcError(
                StatusCode.INTERNAL,
                f"{self.full_name} returned {type(message).__name__}, "
                f"expected {self.spec.response_type.__name__}",
            )
        return message.SerializeToString()


def full_method_name(service: str, method: str) -> str:
    return f"/{service}/{method}"


def collect_handlers(*servicers: object) -> dict[str, Handler]:
    """Build the dispatch table for servicer instances of generated bases."""
    table: dict[str, Handler] = {}
    for servicer in servicers:
        service = getattr(servicer, "__rpc_service__", None)
        methods: Mapping[str, MethodSpec] | None = getattr(servicer, "__rpc_methods__", None)
        if not isinstance(service, str) or methods is None:
            raise TypeError(f"{servicer!r} is not a generated servicer")
        for spec in methods.values():
            name = full_method_name(service, spec.name)
            if name in table:
                raise ValueError(f"method {name} registered twice")
            table[name] = Handler(name, spec, getattr(servicer, spec.name))
    return table
