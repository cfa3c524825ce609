"""Message framing under the RPC runtime.

The runtime sends and receives whole frames through a ``MessageStream``:

- over a byte stream (any ``trio.abc.Stream``), ``LengthPrefixedStream`` adds a
  4-byte little-endian length before each frame;
- over a message channel (a protomux channel of ``p2p_transport``) frames map
  one to one onto messages and no adapter is needed.

A length prefix above ``max_frame_size`` cannot be trusted: the adapter skips
that many bytes without buffering them (so the connection resynchronises on the
next frame) and reports the frame as oversized.
"""

from __future__ import annotations

import math
import struct
from typing import Protocol, runtime_checkable

import trio

#: Default bound on one frame: the largest request or chunk a call may carry
#: (4 MiB of payload plus envelope). Bigger inputs belong in artifacts.
DEFAULT_MAX_FRAME_SIZE = 4 * 1024 * 1024 + 1024

_LEN = struct.Struct("<I")


class FrameTooLarge(Exception):
    """A received frame was longer than the bound; its bytes were skipped."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the {limit}-byte limit")
        self.size = size
        self.limit = limit


@runtime_checkable
class MessageStream(Protocol):
    """A reliable, ordered stream of whole messages."""

    async def send_message(self, data: bytes) -> None:
        """Send one message: whole, or (when cancelled) not at all, never part of it,
        so that cancelling one call never breaks the stream the others share."""

    async def receive_message(self) -> bytes:
        """Receive one message; raises ``trio.EndOfChannel`` at the end."""

    async def aclose(self) -> None:
        """Close the stream."""


class LengthPrefixedStream:
    """Frames messages on a byte stream with a uint32-LE length prefix."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        receive_size: int = 65536,
    ) -> None:
        self.stream = stream
        self.max_frame_size = max_frame_size
        self._receive_size = receive_size
        self._buf = bytearray()
        self._eof = False

    async def send_message(self, data: bytes) -> None:
        """Send one frame. Cancellation is safe: the frame goes out whole or not at all
        (a ``send_all`` cancelled part way would leave the byte stream mid-frame, broken for
        every call on it), so a frame once started is finished under a shield."""
        if len(data) > self.max_frame_size:
            raise FrameTooLarge(len(data), self.max_frame_size)
        await trio.lowlevel.checkpoint_if_cancelled()
        with trio.CancelScope(shield=True):
            await self.stream.send_all(_LEN.pack(len(data)) + data)

    async def _fill(self) -> bool:
        if self._eof:
            return False
        chunk = await self.stream.receive_some(self._receive_size)
        if not chunk:
            self._eof = True
            return False
        self._buf += chunk
        return True

    async def receive_message(self) -> bytes:
        while len(self._buf) < 4:
            if not await self._fill():
                self._end_of_stream()
        (size,) = _LEN.unpack_from(self._buf)
        if size > self.max_frame_size:
            del self._buf[:4]
            await self._skip(size)
            raise FrameTooLarge(size, self.max_frame_size)
        while len(self._buf) < 4 + size:
            if not await self._fill():
                self._end_of_stream()
        frame = bytes(self._buf[4 : 4 + size])
        del self._buf[: 4 + size]
        return frame

    async def _skip(self, size: int) -> None:
        remaining = size
        while remaining:
            if not self._buf and not await self._fill():
                self._end_of_stream()
            take = min(remaining, len(self._buf))
            del self._buf[:take]
            remaining -= take

    def _end_of_stream(self) -> None:
        if self._buf:
            raise trio.BrokenResourceError(
                f"stream ended inside a frame ({len(self._buf)} bytes pending)"
            )
        raise trio.EndOfChannel

    async def aclose(self) -> None:
        await self.stream.aclose()


class MemoryMessageStream:
    """One end of an in-memory message pipe: whole messages through trio memory channels.

    Like a byte stream pair under ``LengthPrefixedStream``, a message is delivered whole or
    (when cancelled) not at all, one larger than ``max_frame_size`` is refused with
    :class:`FrameTooLarge`, and the buffer is unbounded: the RPC's per-call windows bound what
    is in flight. Closing one end ends the other's receiving (``trio.EndOfChannel``) and
    breaks its sending (``trio.BrokenResourceError``).
    """

    def __init__(
        self,
        send: trio.MemorySendChannel[bytes],
        receive: trio.MemoryReceiveChannel[bytes],
        max_frame_size: int,
    ) -> None:
        self._send = send
        self._receive = receive
        self.max_frame_size = max_frame_size

    async def send_message(self, data: bytes) -> None:
        if len(data) > self.max_frame_size:
            raise FrameTooLarge(len(data), self.max_frame_size)
        await self._send.send(bytes(data))

    async def receive_message(self) -> bytes:
        return await self._receive.receive()

    async def aclose(self) -> None:
        await self._send.aclose()
        await self._receive.aclose()


def memory_message_stream_pair(
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
) -> tuple[MemoryMessageStream, MemoryMessageStream]:
    """Two connected in-memory endpoints (for tests and in-process wiring)."""
    left_send, right_receive = trio.open_memory_channel[bytes](math.inf)
    right_send, left_receive = trio.open_memory_channel[bytes](math.inf)
    return (
        MemoryMessageStream(left_send, left_receive, max_frame_size),
        MemoryMessageStream(right_send, right_receive, max_frame_size),
    )
