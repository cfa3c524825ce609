"""Hyperswarm peer bookkeeping: retry buckets and priorities as in the npm package."""

from __future__ import annotations

import random

import trio
import trio.testing

from p2p_transport.crypto import key_pair
from p2p_transport.hyperdht.messages import PeerRecord
from p2p_transport.hyperswarm import Hyperswarm, PeerInfo
from p2p_transport.hyperswarm.swarm import MAX_ATTEMPTS, MIN_CONNECTION_TIME


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


def test_a_peer_out_of_attempts_is_tried_again_when_found_again() -> None:
    """A peer whose retries ran out (it was down for a while) and that a lookup finds again
    (restarted with the same key) gets another attempt, not silence until the process
    restarts: that was a dead peer cached for good."""
    swarm = Hyperswarm(None, None, None, key_pair_=key_pair())  # type: ignore[arg-type]
    record = PeerRecord(b"r" * 32)
    topic = b"t" * 32
    swarm._handle_peer(record, topic)
    peer = swarm.peers[record.public_key]
    assert peer.queued and swarm._queue == [peer]
    swarm._queue.clear()
    peer.queued = False
    peer.attempts = MAX_ATTEMPTS + 1  # every retry failed: given up
    swarm._handle_peer(record, topic)
    assert peer.queued and swarm._queue == [peer]  # dialled again


class _IdleConnection:
    """A test double for :class:`SwarmConnection`: just what the swarm's bookkeeping reads."""

    def __init__(self, peer: PeerInfo) -> None:
        self.peer = peer
        self.remote_public_key = peer.public_key
        self.is_initiator = False
        self.closed = trio.Event()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


def test_connection_lifetime_is_measured_on_trios_clock() -> None:
    """A connection that lived MIN_CONNECTION_TIME proves its peer (its failed attempts are
    forgiven). The swarm measures that on trio's clock like every other layer, so it holds
    under a virtual clock too (it read ``time.monotonic`` and saw about 0 s here)."""
    async def main() -> None:
        async def on_connection(_conn: object) -> None:
            await trio.sleep(MIN_CONNECTION_TIME)  # virtual time

        swarm = Hyperswarm(None, None, on_connection,  # type: ignore[arg-type]
                           key_pair_=key_pair())
        peer = PeerInfo(b"p" * 32)
        peer.attempts = 2
        await swarm._run_connection(_IdleConnection(peer))  # type: ignore[arg-type]
        assert peer.attempts == 0
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
