"""``SwarmNetwork`` announces the topics it serves again every ``REANNOUNCE_S``: DHT churn
takes announcements away with the nodes that held them (``tests/lab/test_dht_churn.py``,
``bench/lab_resilience.py``). The swarm here is a test double (``JoinLog``) that records
the joins a real ``Hyperswarm`` would run."""

from __future__ import annotations

from dataclasses import dataclass, field

import trio
import trio.testing

from tether import topics
from tether.keys import KeyPair
from tether.net.swarm import REANNOUNCE_S, SwarmNetwork


class Flushed:
    async def flushed(self) -> bool:
        return True


@dataclass
class JoinLog:
    """A test double of ``Hyperswarm``: ``join`` records (topic, server, client)."""

    joins: list[tuple[bytes, bool, bool]] = field(default_factory=list)

    def join(self, topic: bytes, *, server: bool = True, client: bool = True) -> Flushed:
        self.joins.append((topic, server, client))
        return Flushed()


def test_served_topics_are_announced_again_and_looked_up_ones_are_not() -> None:
    async def main() -> None:
        net = SwarmNetwork(KeyPair.generate(), {})
        swarm = JoinLog()
        net._swarm = swarm  # type: ignore[assignment]
        served, looked_up = topics.presence("eu-west"), topics.control("eu-west")
        await net.join(served, server=True, client=False)
        await net.join(looked_up, server=False, client=True)
        swarm.joins.clear()
        with trio.move_on_after(REANNOUNCE_S * 3.35):
            await net._reannounce()
        assert swarm.joins == [(topics.topic_key(served), True, False)] * 3

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
