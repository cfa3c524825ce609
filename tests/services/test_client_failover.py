"""``tether.client.infer_across``: a gateway lost mid-stream hands the request to the next
one, and the client gets every chunk once, in order. The gateways are test doubles
(``ScriptedGateway``: a client whose stream follows a script), not real ones; the lab test
``tests/lab/test_failover_hosts.py`` kills a real gateway on its own host."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import pytest
import trio
import trio.lowlevel

from tether.client import infer_across
from tether.resume import Diverged
from tether.rpc import RpcError, StatusCode
from tether.v1 import infer_pb2

WORDS = ["In", " the", " beginning", " God", " created"]


def chunk(text: str, *, done: bool = False) -> infer_pb2.Infer.Chunk:
    return infer_pb2.Infer.Chunk(payload=infer_pb2.Payload(text=text), done=done)


class ScriptedGateway:
    """A test double of ``GatewayClient``: streams ``words`` (the last chunk done), failing
    with ``fail`` after ``fail_after`` chunks; records the requests it got."""

    def __init__(self, words: list[str], *, fail_after: int | None = None,
                 fail: StatusCode = StatusCode.UNAVAILABLE) -> None:
        self.words, self.fail_after, self.fail = words, fail_after, fail
        self.requests: list[infer_pb2.Infer.Request] = []

    async def infer(self, request: infer_pb2.Infer.Request, *,
                    timeout: float | None = None) -> AsyncGenerator[infer_pb2.Infer.Chunk]:
        self.requests.append(request)
        for i, word in enumerate(self.words):
            if self.fail_after is not None and i == self.fail_after:
                raise RpcError(self.fail, "connection closed")
            yield chunk(word, done=i == len(self.words) - 1)
            await trio.lowlevel.checkpoint()


def run(gateways: list[ScriptedGateway]) -> list[str]:
    async def main() -> list[str]:
        request = infer_pb2.Infer.Request(model_id="m", correlation_id="c-1")
        return [c.payload.text async for c in infer_across(gateways, request)]  # type: ignore[arg-type]
    return trio.run(main)


def test_a_lost_gateway_hands_the_stream_to_the_next_without_repeats() -> None:
    first, second = ScriptedGateway(WORDS, fail_after=2), ScriptedGateway(WORDS)
    assert run([first, second]) == WORDS
    a, b = first.requests[0], second.requests[0]
    assert a.params.seed and b.params.seed == a.params.seed  # pinned before the first try
    assert b.correlation_id == "c-1:g1" and a.correlation_id == "c-1"
    assert b.retry_token != a.retry_token


def test_a_replay_that_differs_is_not_spliced() -> None:
    other = ["In", " a", " garden", " east", " of"]
    with pytest.raises(Diverged):
        run([ScriptedGateway(WORDS, fail_after=3), ScriptedGateway(other)])


def test_other_errors_end_the_stream_and_the_last_loss_is_named() -> None:
    with pytest.raises(RpcError) as refused:
        run([ScriptedGateway(WORDS, fail_after=0, fail=StatusCode.INVALID_ARGUMENT),
             ScriptedGateway(WORDS)])
    assert refused.value.code == StatusCode.INVALID_ARGUMENT
    with pytest.raises(RpcError) as lost:
        run([ScriptedGateway(WORDS, fail_after=1), ScriptedGateway(WORDS, fail_after=3)])
    assert lost.value.code == StatusCode.UNAVAILABLE
    assert "gateway 1 was lost mid-stream after 3 chunks" in lost.value.message
