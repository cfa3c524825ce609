"""The in-memory message pipe (``memory_message_stream_pair``) keeps the ``MessageStream``
contract a byte stream under ``LengthPrefixedStream`` gives, without ``trio.testing``."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from tether.rpc import FrameTooLarge, MessageStream, memory_message_stream_pair


async def _contract() -> None:
    left, right = memory_message_stream_pair(max_frame_size=8)
    assert isinstance(left, MessageStream)
    await left.send_message(b"one")
    await left.send_message(bytearray(b"two"))  # type: ignore[arg-type]
    assert [await right.receive_message(), await right.receive_message()] == [b"one", b"two"]
    with pytest.raises(FrameTooLarge):
        await left.send_message(b"x" * 9)
    with trio.CancelScope() as scope:  # a cancelled receive takes nothing
        scope.cancel()
        await right.receive_message()
    await right.send_message(b"back")
    assert await left.receive_message() == b"back"
    await left.aclose()
    with pytest.raises(trio.EndOfChannel):
        await right.receive_message()
    with pytest.raises(trio.BrokenResourceError):
        await right.send_message(b"nobody")
    with pytest.raises(trio.ClosedResourceError):
        await left.send_message(b"closed")


def test_the_memory_pipe_keeps_the_message_stream_contract() -> None:
    trio.run(_contract, clock=trio.testing.MockClock(autojump_threshold=0))
