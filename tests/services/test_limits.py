"""Client-chosen ids are checked like the rest of a request (``tether.limits``), at the
gateway and again at the orchestrator; names of the topic namespace match whole."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from tests.services.harness import MODEL, Fleet, fleet
from tether import blocking, limits, topics
from tether.errors import InvalidArgument
from tether.rpc import RpcError, StatusCode
from tether.v1 import infer_pb2


def run(body, tmp_path: Path) -> None:
    async def main() -> None:
        async with fleet(tmp_path) as f:
            await body(f)

    with blocking.inline():
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def request(cid: str) -> infer_pb2.Infer.Request:
    req = infer_pb2.Infer.Request(model_id=MODEL, correlation_id=cid)
    req.input.text = "hello"
    req.params.max_tokens = 2
    return req


async def collect(stub, req, metadata) -> list[infer_pb2.Infer.Chunk]:
    async with stub.Infer(req, metadata=metadata) as chunks:
        return [c async for c in chunks]


@pytest.mark.parametrize(
    "value", ["a b", "x" * 129, "tok\n", "é", "-lead", "semi;colon", "slash/y", "\x00"]
)
def test_bad_client_ids_are_refused(value: str) -> None:
    for kind in ("correlation id", "retry token"):
        with pytest.raises(InvalidArgument, match=kind):
            limits.check_client_id(kind, value)


@pytest.mark.parametrize("value", ["", "c-0f3a", "Job_42", "a" * 128, "tenant:job.7-x"])
def test_good_client_ids_pass(value: str) -> None:
    limits.check_client_id("correlation id", value)


@pytest.mark.parametrize("value", ["eu-west\n", "eu-west\nx"])
def test_topic_parts_match_whole(value: str) -> None:
    with pytest.raises(topics.TopicError):
        topics.region(value)


def test_the_gateway_validates_client_chosen_ids(tmp_path: Path) -> None:
    async def body(f: Fleet) -> None:
        await f.add_worker("w1")
        await f.discovery.wait_for(lambda s: len(s) == 1)
        gw = await f.gateway()
        token = f.token("acme")
        for cid, token_ in (("a b", ""), ("x" * 129, ""), ("ok-1", "tok\n"), ("ok-2", "é")):
            req = request(cid)
            req.retry_token = token_
            with pytest.raises(RpcError) as info:
                await collect(gw, req, token)
            assert info.value.code == StatusCode.INVALID_ARGUMENT, (cid, token_)
            assert info.value.details["field"] in ("correlation_id", "retry_token")
        req = request("Client.Id:42_x-" + "y" * 100)
        req.retry_token = "retry-2"
        assert (await collect(gw, req, token))[-1].done

    run(body, tmp_path)



@pytest.mark.parametrize(("params", "words"), [
    (infer_pb2.GenerationParams(temperature_value=-0.5), "temperature"),
    (infer_pb2.GenerationParams(temperature_value=float("nan")), "temperature"),
    (infer_pb2.GenerationParams(repetition_penalty=0), "repetition_penalty"),
    (infer_pb2.GenerationParams(repetition_penalty=float("inf")), "repetition_penalty"),
])
def test_sampling_fields_with_presence_are_checked_before_any_work(
    params: infer_pb2.GenerationParams, words: str
) -> None:
    """The gateway refuses what the engine would (``worker.engine.sampling_params``)."""
    with pytest.raises(InvalidArgument, match=words):
        limits.check_generation(params)
    limits.check_generation(infer_pb2.GenerationParams(temperature_value=0,
                                                       repetition_penalty=1.1))
