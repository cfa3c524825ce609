"""Canary rollouts and drains, the orchestrator's pure core: weights, a stable choice
per request, halting on an error budget, and the refusals of malformed messages."""

from __future__ import annotations

import pytest

from orchestrator.rollout import Rollouts
from tether import operator
from tether.errors import InvalidArgument
from tether.rpc import StatusCode
from tether.v1 import control_pb2, presence_pb2


def rollout(model: str = "m", max_error_rate: float = 0.1, **bps: int) -> control_pb2.Rollout:
    msg = control_pb2.Rollout(model_id=model, max_error_rate=max_error_rate)
    for version, weight in bps.items():
        msg.weights.add(model=presence_pb2.ModelKey(model_id=model, version=version.replace(
            "v", "").replace("_", ".")), weight_bps=weight)
    return msg


def test_traffic_splits_by_weight_and_each_request_keeps_its_version() -> None:
    r = Rollouts()
    r.apply_rollout(rollout(v1_0=9000, v1_1=1000))
    picks = [r.choose("m", f"req-{i}") for i in range(4000)]
    assert 300 <= picks.count("1.1") <= 500 and picks.count("1.0") + picks.count("1.1") == 4000
    assert all(r.choose("m", f"req-{i}") == picks[i] for i in range(100))  # stable
    assert r.choose("other", "req-1") is None  # no rollout: 'latest'
    r.apply_rollout(rollout(v1_0=0, v1_1=0))  # all zero ends it
    assert r.choose("m", "req-1") is None


def test_a_version_past_its_error_budget_is_halted_and_its_share_moves() -> None:
    r = Rollouts(min_requests=10)
    r.apply_rollout(rollout(max_error_rate=0.2, v1_0=5000, v1_1=5000))
    for _ in range(9):  # too few outcomes to judge, however bad
        assert r.record("m", "1.1", StatusCode.INTERNAL) is None
    for _ in range(10):
        r.record("m", "1.0", StatusCode.OK)
        r.record("m", "1.0", StatusCode.INVALID_ARGUMENT)  # the caller's fault: not counted
    halted = r.record("m", "1.1", StatusCode.UNAVAILABLE)
    assert halted == "m: 1.0=100%, 1.1 halted (10/10 failed)"
    state = r.get("m")
    assert state is not None and state.live() == {"1.0": 10_000}
    assert {r.choose("m", f"x{i}") for i in range(200)} == {"1.0"}
    # The last version standing is never halted.
    for _ in range(30):
        assert r.record("m", "1.0", StatusCode.INTERNAL) is None
    assert state.live() == {"1.0": 10_000}


def test_within_budget_nothing_halts() -> None:
    r = Rollouts(min_requests=10)
    r.apply_rollout(rollout(max_error_rate=0.2, v1_0=5000, v1_1=5000))
    for i in range(50):
        code = StatusCode.INTERNAL if i % 10 == 0 else StatusCode.OK  # 10% failures
        assert r.record("m", "1.1", code) is None
    state = r.get("m")
    assert state is not None and set(state.live()) == {"1.0", "1.1"}


@pytest.mark.parametrize(
    ("msg", "words"),
    [
        (rollout(v1_0=5000, v1_1=4000), "add up to 9000 bps"),
        (rollout(max_error_rate=1.5, v1_0=10000), "max_error_rate"),
        (rollout(model="", v1_0=10000), "model_id is required"),
        (control_pb2.Rollout(model_id="m", weights=[
            control_pb2.CanaryWeight(model=presence_pb2.ModelKey(model_id="m", version="1.0"),
                                     weight_bps=5000)] * 2), "weighted twice"),
        (control_pb2.Rollout(model_id="m", weights=[
            control_pb2.CanaryWeight(model=presence_pb2.ModelKey(model_id="n", version="1.0"),
                                     weight_bps=10000)]), "names model 'n'"),
        (control_pb2.Rollout(model_id="m", weights=[
            control_pb2.CanaryWeight(model=presence_pb2.ModelKey(model_id="m"),
                                     weight_bps=10000)]), "names a version"),
    ],
)
def test_malformed_rollouts_are_refused(msg: control_pb2.Rollout, words: str) -> None:
    with pytest.raises(InvalidArgument, match=words):
        Rollouts().apply_rollout(msg)


def test_drains_take_workers_out_until_they_leave() -> None:
    r = Rollouts()
    assert r.apply_drain(control_pb2.Drain(worker_ids=["w1"]), {"w1", "w2"}) == "draining w1"
    assert not r.placeable("w1") and r.placeable("w2")
    r.forget({"w2"})  # w1 left; when it comes back it is placed again
    assert r.placeable("w1")
    assert r.apply_drain(control_pb2.Drain(), {"w1", "w2"}) == "draining w1, w2"
    assert not r.placeable("w1") and not r.placeable("w2") and r.placeable("w3")


def test_operator_messages_from_the_command_line_forms() -> None:
    msg = operator.rollout_message("m", ["1.0=97.5", "1.1=2.5"], max_error_rate=0.05,
                                   region="eu", now_ms=42)
    assert (msg.id, msg.region, msg.rollout.max_error_rate) == (42, "eu", pytest.approx(0.05))
    assert [(w.model.version, w.weight_bps) for w in msg.rollout.weights] == [
        ("1.0", 9750), ("1.1", 250)]
    Rollouts().apply_rollout(msg.rollout)  # a valid rollout as the orchestrator sees it
    for bad in ("1.1", "=10", "1.1=ten", "1.1=101", "1.1=-1"):
        with pytest.raises(ValueError, match="VERSION=PERCENT"):
            operator.rollout_message("m", [bad], max_error_rate=0.05, region="eu")
    drain = operator.drain_message(["w1"], region="eu", now_ms=43)
    assert list(drain.drain.worker_ids) == ["w1"] and drain.id == 43
