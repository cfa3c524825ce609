"""``tether.resume``: what a client has, checked against a replay by digest."""

from __future__ import annotations

import pytest

from tether.resume import LOST_SERVER, Diverged, Resume
from tether.rpc import RpcError, StatusCode
from tether.v1 import infer_pb2


def chunk(text: str, *, done: bool = False) -> infer_pb2.Infer.Chunk:
    return infer_pb2.Infer.Chunk(payload=infer_pb2.Payload(text=text), done=done,
                                 worker_id="w2")


def test_a_replay_is_spliced_after_what_the_client_has() -> None:
    resume = Resume()
    for text in ("a", "b"):
        resume.replay()
        resume.delivered(chunk(text))
    replay = resume.replay()
    assert [replay.accept(chunk(t)) for t in ("a", "b", "c")] == [False, False, True]
    lost = resume.lost("orchestrator 3f2a", RpcError(StatusCode.UNAVAILABLE, "gone"))
    assert lost.message == "orchestrator 3f2a was lost mid-stream after 2 chunks: gone"
    assert lost.details == {"orchestrator_id": "3f2a", "delivered": "2",
                            LOST_SERVER: "orchestrator 3f2a"}
    assert "no other orchestrator could resume it" in resume.unresumed(lost).message


def test_a_lost_server_is_known_by_its_details_not_its_text() -> None:
    """An error that crossed the wire keeps the key; a message that merely says "was lost"
    (a worker's own text) is not taken for a lost server."""
    resume = Resume()
    resume.delivered(chunk("a"))
    lost = resume.lost("worker w1", RpcError(StatusCode.UNAVAILABLE, "closed"))
    received = RpcError.from_proto(lost.to_proto())  # as the gateway receives it
    resume.lost_servers.append("orchestrator 3f2a")
    assert resume.unresumed(received).message.endswith("no other orchestrator could resume it")
    text_only = RpcError(StatusCode.UNAVAILABLE, "the disk was lost during the write")
    assert "resuming failed" in resume.unresumed(text_only).message


@pytest.mark.parametrize("replayed", [["a", "x"], ["a"]])
def test_a_replay_that_differs_or_ends_early_is_not_spliced(replayed: list[str]) -> None:
    resume = Resume()
    for text in ("a", "b"):
        resume.delivered(chunk(text))
    replay = resume.replay()
    with pytest.raises(Diverged, match="differs from the 2 chunks already sent"):
        for i, text in enumerate(replayed):
            replay.accept(chunk(text, done=i == len(replayed) - 1))


def test_nothing_sent_yet_is_lost_before_its_first_chunk() -> None:
    lost = Resume().lost("worker w1", RpcError(StatusCode.UNAVAILABLE, "closed"))
    assert lost.message == "worker w1 was lost before its first chunk: closed"
