"""Hyperswarm peer bookkeeping: retry buckets and priorities as in the npm package."""

from __future__ import annotations

import random

from p2p_transport.hyperswarm import PeerInfo


def test_retry_buckets() -> None:
    rng = random.Random(0)
    p = PeerInfo(b"k" * 32)
    delays: list[float] = []
    for attempts in range(4):
        p.attempts = attempts
        d = p.backoff(rng)
        assert d is not None
        delays.append(d)
    p.attempts = 4
    assert 1.0 <= delays[0] < 1.5  # first retry fast
    assert 5.0 <= delays[1] < 5.5  # unproven peer: medium, then long
    assert 15.0 <= delays[2] < 15.5 and 15.0 <= delays[3] < 15.5
    assert p.backoff(rng) is None  # more than 3 attempts: give up
    p.proven = True
    p.attempts = 1
    assert 1.0 <= (p.backoff(rng) or 0) < 1.5
    p.attempts = 2
    assert 5.0 <= (p.backoff(rng) or 0) < 5.5
    p.attempts = 4
    p.explicit = True  # explicit peers keep being retried, slowly
    assert 600.0 <= (p.backoff(rng) or 0) < 720.0
    p.banned = True
    assert p.backoff(rng) is None


def test_priorities() -> None:
    p = PeerInfo(b"k" * 32)
    got = []
    for attempts in range(5):
        p.attempts = attempts
        got.append(p.priority())
    assert got == [2, 4, 3, 1, 0]


def test_a_peer_found_again_after_its_retries_ran_out_starts_over() -> None:
    """As npm's _handlePeer: a peer no longer prioritised is reset when a lookup finds it
    again (a process restarted under the same key); one still being retried is not."""
    p = PeerInfo(b"k" * 32, proven=True)
    for attempts in (4, 3):
        p.attempts = attempts
        p.found_again()
        assert p.attempts == 0 and not p.proven and p.priority() == 2
    p.attempts, p.proven = 2, True
    p.found_again()
    assert p.attempts == 2 and p.proven
