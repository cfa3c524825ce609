"""Helpers the generated stubs call: typed decoding and typed streams."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import TracebackType
from typing import Generic, TypeVar

from google.protobuf.message import DecodeError, Message

from tether.rpc.connection import DEFAULT_INITIAL_WINDOW, ResponseStream
from tether.rpc.service import Encoded
from tether.rpc.status import RpcProtocolError

M = TypeVar("M", bound=Message)


def decode_response(message_type: type[M], payload: bytes) -> M:
    """Parse a response; a payload that does not decode is a protocol error."""
    try:
        return message_type.FromString(payload)
    except DecodeError as exc:
        raise RpcProtocolError(
            f"cannot decode {message_type.DESCRIPTOR.full_name}: {exc}"
        ) from None


class TypedResponseStream(Generic[M]):
    """A ``ResponseStream`` that yields parsed messages of one type."""

    def __init__(self, stream: ResponseStream, message_type: type[M]) -> None:
        self._stream = stream
        self._type = message_type

    async def __aenter__(self) -> TypedResponseStream[M]:
        await self._stream.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stream.__aexit__(exc_type, exc, tb)

    def __aiter__(self) -> AsyncIterator[M]:
        return self

    async def __anext__(self) -> M:
        return decode_response(self._type, await self._stream.__anext__())

    async def next_batch(self, most: int = DEFAULT_INITIAL_WINDOW) -> list[Encoded[M]]:
        """The next response and those already received behind it (up to ``most``), in
        order, each parsed and with its bytes (to forward unchanged), never waiting for
        more; empty once the stream has ended."""
        return [
            Encoded(decode_response(self._type, data), data)
            for data in await self._stream.next_batch(most)
        ]

    async def cancel(self, reason: str = "cancelled by client") -> None:
        await self._stream.cancel(reason)
