"""FleetIndex against the full scan it replaces: on random fleets (batching workers
with batch sizes, active sequences and KV-cache budgets among them), after random
heartbeats, departures, expiry and in-flight dispatches, the indexed ranking is
``scheduler.rank`` over the live workers, candidate for candidate."""

from __future__ import annotations

from typing import cast

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.discovery import InFlight, WorkerEntry
from orchestrator.fleet_index import MAX_VIEWS, FleetIndex
from orchestrator.scheduler import Candidate, Placement, Weights, rank
from tether.net import Peer
from tether.rpc import RpcConnection
from tether.v1 import health_pb2, presence_pb2

MODELS = [("m", "1"), ("m", "2"), ("n", "1")]
REGIONS = ["eu-west", "eu-north", "us-east", "ap-south"]
GPUS = ["a100", "h100", "cpu"]
WORKERS = [f"w{i}" for i in range(8)]
EXPIRY_S = 15.0

presences = st.builds(
    lambda wid, region, gpu, draining, served, warm, slots, in_use, depth, limit, batch: (
        presence_pb2.Presence(
            worker_id=wid,
            region=region,
            gpu_class=gpu,
            draining=draining,
            supported=[presence_pb2.ModelKey(model_id=m, version=v) for m, v in served],
            capacity=health_pb2.Capacity(
                slots=slots, in_use=in_use, queue_depth=depth, queue_limit=limit, **batch
            ),
            health=health_pb2.Health.Report(
                model_cache=[health_pb2.CachedModel(model_id=m, version=v) for m, v in warm]
            ),
        )
    ),
    st.sampled_from(WORKERS),
    st.sampled_from(REGIONS),
    st.sampled_from(GPUS),
    st.sampled_from([False, False, False, True]),
    st.lists(st.sampled_from(MODELS), min_size=1, max_size=3, unique=True),
    st.lists(st.sampled_from(MODELS), max_size=2, unique=True),
    st.integers(0, 4),
    st.integers(0, 5),
    st.integers(0, 5),
    st.integers(0, 3),
    st.one_of(
        st.just({}),  # measured by slots and queue alone
        st.fixed_dictionaries(
            {
                "max_batch_size": st.integers(1, 4),
                "active_sequences": st.integers(0, 5),
                "kv_cache_budget_bytes": st.sampled_from([0, 1000, 4000]),
                "kv_cache_used_bytes": st.integers(0, 5000),
            }
        ),
    ),
)
wants = st.builds(
    lambda model, region, gpus: Placement(
        request_region=region,
        model=presence_pb2.ModelKey(model_id=model[0], version=model[1]),
        gpu_classes=tuple(gpus),
    ),
    st.sampled_from(MODELS),
    st.sampled_from(REGIONS),
    st.lists(st.sampled_from(GPUS), max_size=2, unique=True),
)
weights = st.sampled_from([Weights(), Weights(region=0.0, queue=9.0), Weights(warm_cache=7.0)])
beat = st.tuples(st.just("beat"), st.integers(0, 15), presences)
ops = st.lists(
    st.one_of(
        beat, beat, beat, beat,
        st.tuples(st.just("leave"), st.integers(0, 15)),
        st.tuples(st.just("tick"), st.floats(0.0, 4.0)),
        st.tuples(st.just("start"), st.sampled_from(WORKERS)),
        st.tuples(st.just("end"), st.sampled_from(WORKERS)),
        st.tuples(st.just("place"), wants, weights),
    ),
    min_size=20,  # long enough for beats, dispatches and placements to meet
    max_size=80,
)


def peer(i: int) -> Peer:
    # The index never touches the connection: a peer that has none stands in.
    return Peer(remote_key=bytes([i]) * 32, rpc=cast(RpcConnection, None))


def as_list(cs: list[Candidate]) -> list[tuple[str, bytes, float, bool]]:
    return [(c.entry.worker_id, c.entry.peer.remote_key, c.score, c.full) for c in cs]


@settings(max_examples=300, deadline=None)
@given(ops)
def test_indexed_ranking_is_the_full_ranking_of_the_live_fleet(ops: list[tuple]) -> None:
    index = FleetIndex(EXPIRY_S)
    entries: dict[bytes, WorkerEntry] = {}
    in_flight = InFlight()
    now = 0.0
    peers = [peer(i) for i in range(16)]
    for op in ops:
        if op[0] == "beat":
            p = peers[op[1]]
            entries[p.remote_key] = entry = WorkerEntry(op[2], p, now)
            index.update(p.remote_key, entry)
            in_flight.heartbeat(op[2].worker_id)
        elif op[0] == "leave":
            entries.pop(peers[op[1]].remote_key, None)
            index.remove(peers[op[1]].remote_key)
        elif op[0] == "tick":
            now += op[1]
        elif op[0] == "start":
            in_flight.started(op[1])
        elif op[0] == "end":
            in_flight.ended(op[1])
        else:
            _, want, w = op
            live = sorted(
                (e for e in entries.values() if e.last_seen >= now - EXPIRY_S),
                key=lambda e: (e.worker_id, e.peer.remote_key),
            )
            index.expire(now)
            assert set(index.worker_ids()) == {e.worker_id for e in live}
            assert as_list(list(index.ranked(want, w, in_flight))) == as_list(
                rank(live, want, w, in_flight)
            )


def test_views_beyond_the_limit_are_dropped_and_built_again() -> None:
    index = FleetIndex(EXPIRY_S)
    p = presence_pb2.Presence(
        worker_id="w", region="eu-west",
        supported=[presence_pb2.ModelKey(model_id="m", version="1")],
    )
    index.update(b"k" * 32, WorkerEntry(p, peer(1), 0.0))
    for i in range(MAX_VIEWS + 3):
        want = Placement(f"r{i}", presence_pb2.ModelKey(model_id="m", version="1"))
        assert [c.entry.worker_id for c in index.ranked(want, Weights())] == ["w"]
    p.capacity.in_use = 3  # a later heartbeat reaches the views kept and the new ones
    index.update(b"k" * 32, WorkerEntry(p, peer(1), 1.0))
    first = Placement("r0", presence_pb2.ModelKey(model_id="m", version="1"))
    last = Placement(f"r{MAX_VIEWS + 2}", presence_pb2.ModelKey(model_id="m", version="1"))
    for want in (first, last):
        (c,) = index.ranked(want, Weights())
        assert c.score == 10.0 + 2.0 * 0.5 + 3.0 / 4.0
    index.expire(16.1)
    assert not list(index.ranked(first, Weights())) and not index.worker_ids()


def test_a_correction_in_sequences_alone_is_scored_again() -> None:
    """Two dispatches were open at the heartbeat of a batching worker that reports
    them as requests (3 in use) but no sequences yet: by slots nothing is unreported,
    by sequences two are, and its batch of 2 is full. The index scores it again as
    ``rank`` does, though its correction in requests is 0."""
    p = presence_pb2.Presence(
        worker_id="w1", region="eu-west",
        supported=[presence_pb2.ModelKey(model_id="m", version="1")],
        capacity=health_pb2.Capacity(slots=8, in_use=3, queue_limit=8, max_batch_size=2),
    )
    index = FleetIndex(EXPIRY_S)
    entry = WorkerEntry(p, peer(1), 0.0)
    index.update(peer(1).remote_key, entry)
    in_flight = InFlight()
    in_flight.started("w1")
    in_flight.started("w1")
    in_flight.heartbeat("w1")
    want = Placement("eu-west", presence_pb2.ModelKey(model_id="m", version="1"))
    assert not next(index.ranked(want, Weights())).full  # the heartbeat's own score
    (c,) = index.ranked(want, Weights(), in_flight)
    assert c.full
    assert as_list([c]) == as_list(rank([entry], want, Weights(), in_flight))
