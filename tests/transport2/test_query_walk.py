"""The DHT query walk's sans-IO core (``QueryWalk``) without trio: order, the concurrency
bound, timeouts and DOWN_HINTs, duplicates, the k closest, the table top-up, the end.
The trio adapter (``query``) and its commit run in ``test_dht_rpc.py`` and the interop tests."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from p2p_transport.cenc import SocketAddress
from p2p_transport.dht_rpc import Response
from p2p_transport.dht_rpc.messages import node_id
from p2p_transport.dht_rpc.query import Candidate, QueryError, QueryWalk
from p2p_transport.dht_rpc.routing import distance

TARGET = bytes(32)


def addr(i: int) -> SocketAddress:
    return SocketAddress(f"10.0.{i // 250}.{i % 250 + 1}", 1000 + i)


def by_distance(addrs: list[SocketAddress]) -> list[SocketAddress]:
    return sorted(addrs, key=lambda a: distance(node_id(a), TARGET))


def response(a: SocketAddress, closer: Sequence[SocketAddress] = (), error: int = 0) -> Response:
    return Response(1, a, node_id(a), None, tuple(closer), error, None)


def no_table(n: int) -> list[tuple[SocketAddress, bytes | None]]:
    return []


def answer(walk: QueryWalk, cand: Candidate, closer: Sequence[SocketAddress] = (),
           error: int = 0) -> object:
    return walk.on_response(cand, response(cand.addr, closer, error), cand.addr,
                            node_id(cand.addr))


def test_given_nodes_are_asked_in_order_and_the_walk_ends_when_all_answered() -> None:
    nodes = [addr(i) for i in range(3)]
    walk = QueryWalk(TARGET, None, no_table, nodes=nodes, k=20)
    first = walk.next_requests()
    assert [c.addr for c in first] == nodes
    assert walk.inflight == 3 and not walk.done
    for c in first:
        assert answer(walk, c) is not None
    assert walk.next_requests() == [] and walk.done
    assert walk.result.successes == 3 and len(walk.result.replies) == 3
    # closest replies are sorted by XOR distance to the target
    assert walk.result.closest_nodes == by_distance(nodes)


def test_in_flight_never_exceeds_concurrency() -> None:
    nodes = [addr(i) for i in range(10)]
    walk = QueryWalk(TARGET, None, no_table, nodes=nodes, k=20, concurrency=3)
    batch = walk.next_requests()
    asked = [c.addr for c in batch]
    assert len(batch) == 3
    for _ in range(20):  # bounded: one answer per round
        if not batch:
            break
        answer(walk, batch[0])
        new = walk.next_requests()
        asked += [c.addr for c in new]
        batch = [*batch[1:], *new]
        assert walk.inflight == len(batch) <= 3
    assert asked == nodes and walk.done


def test_closer_nodes_from_a_reply_are_asked_and_referred_duplicates_asked_once() -> None:
    a, b = addr(1), addr(2)
    walk = QueryWalk(TARGET, None, no_table, nodes=[a, b], k=20)
    ca, cb = walk.next_requests()
    c, d = addr(3), addr(4)
    answer(walk, ca, [c, d, b])  # b is in flight already: not asked twice
    answer(walk, cb, [c, a])  # c pending, a answered: neither added again
    nxt = walk.next_requests()
    assert sorted(x.addr.port for x in nxt) == [c.port, d.port]
    assert [x.addr for x in nxt] == [d, c]  # a stack: the last referred is asked first
    for x in nxt:
        answer(walk, x)
    assert walk.next_requests() == [] and walk.done
    assert walk.result.successes == 4


def test_own_id_in_closer_nodes_is_skipped() -> None:
    me = addr(9)
    walk = QueryWalk(TARGET, node_id(me), no_table, nodes=[addr(1)], k=20)
    (cand,) = walk.next_requests()
    answer(walk, cand, [me])
    assert walk.next_requests() == [] and walk.done


def test_a_timeout_hints_the_referrers_and_later_referrers_too() -> None:
    a, b, down = addr(1), addr(2), addr(3)
    walk = QueryWalk(TARGET, None, no_table, nodes=[a, b], k=20)
    ca, cb = walk.next_requests()
    answer(walk, ca, [down])
    (cdown,) = walk.next_requests()
    walk.on_timeout(cdown)
    assert walk.take_down_hints() == [(a, down)]
    answer(walk, cb, [down])  # b refers us to a node known down: b is told at once
    assert walk.take_down_hints() == [(b, down)]
    assert walk.next_requests() == [] and walk.done
    assert (walk.result.successes, walk.result.errors) == (2, 1)


def test_error_replies_count_as_errors_and_are_not_replies() -> None:
    walk = QueryWalk(TARGET, None, no_table, nodes=[addr(1)], k=20)
    (cand,) = walk.next_requests()
    assert answer(walk, cand, error=2) is None
    assert walk.result.replies == [] and walk.result.closest_replies == []
    assert (walk.result.successes, walk.result.errors) == (0, 1)


def test_only_the_k_closest_are_kept_and_farther_candidates_are_skipped() -> None:
    nodes = [addr(i) for i in range(12)]
    ordered = by_distance(nodes)
    k = 4
    # ask the nearest k first, then the farthest: they are no closer than the k-th best
    walk = QueryWalk(TARGET, None, no_table, nodes=ordered[:k], k=k, concurrency=10)
    for c in walk.next_requests():
        answer(walk, c, ordered[k:])
    assert walk.result.closest_nodes == ordered[:k]
    assert walk.next_requests() == [] and walk.done  # none of the farther ones was asked
    assert walk.result.successes == k


def test_bootstrap_and_table_seed_the_walk() -> None:
    table = [(addr(i), node_id(addr(i))) for i in range(2)]
    boot = [addr(100)]
    walk = QueryWalk(TARGET, None, lambda n: table[:n], bootstrap=boot, k=20)
    # the table's nodes first (pushed first, so asked last), then the bootstrap node
    assert [c.addr for c in walk.next_requests()] == [boot[0], table[1][0], table[0][0]]
    assert walk.pending == []


def test_a_dry_walk_of_given_nodes_tops_up_from_the_table_once() -> None:
    calls: list[int] = []
    extra = addr(50)

    def table(n: int) -> list[tuple[SocketAddress, bytes | None]]:
        calls.append(n)
        return [(extra, node_id(extra))]

    walk = QueryWalk(TARGET, None, table, nodes=[addr(1)], k=20)
    (cand,) = walk.next_requests()
    walk.on_timeout(cand)  # 0 successes < k / 4: ask the table
    (topped,) = walk.next_requests()
    assert topped.addr == extra and calls == [20]
    walk.on_timeout(topped)
    assert walk.next_requests() == [] and walk.done and calls == [20]


def test_nothing_to_ask_is_done_at_once() -> None:
    walk = QueryWalk(TARGET, None, no_table, k=20)
    assert walk.next_requests() == [] and walk.done
    assert walk.next_requests() == []


def test_misuse_is_refused() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        QueryWalk(TARGET, None, no_table, nodes=[], concurrency=0)
    walk = QueryWalk(TARGET, None, no_table, nodes=[addr(1)])
    with pytest.raises(ValueError, match="no request in flight"):
        walk.on_timeout(Candidate(addr(1), None))  # nothing in flight yet


def test_outcome_and_commit_checks() -> None:
    walk = QueryWalk(TARGET, None, no_table, nodes=[addr(1), addr(2)], k=20)
    with pytest.raises(ValueError, match="not over"):
        walk.outcome(committing=False)  # not over yet
    c1, c2 = walk.next_requests()
    walk.on_timeout(c1)
    walk.on_timeout(c2)
    assert walk.next_requests() == [] and walk.done
    with pytest.raises(QueryError, match="no node responded"):
        walk.outcome(committing=False)
    with pytest.raises(QueryError, match="Too few nodes"):
        walk.outcome(committing=True)

    walk = QueryWalk(TARGET, None, no_table, nodes=[addr(1), addr(2)], k=20)
    for c in walk.next_requests():
        answer(walk, c)
    walk.next_requests()
    assert len(walk.outcome(committing=True).closest_replies) == 2
    walk.check_commits([QueryError("one refused")])  # one of two failed: the query stands
    with pytest.raises(QueryError, match="every commit failed: b"):
        walk.check_commits([QueryError("a"), QueryError("b")])
