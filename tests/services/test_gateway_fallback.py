"""The gateway's fallback regions (``gateway.orchestrators``): another region's
orchestrators take its work only while none of its own is usable. The network is a test
double (``PeerList``: the peers a real network would have found on each topic); the lab
test ``tests/lab/test_regions.py`` kills a region's orchestrators between real processes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing

from gateway.orchestrators import Orchestrators
from tether import topics
from tether.errors import Unavailable
from tether.net import Peer

US, EU = topics.control("us-east"), topics.control("eu-west")


@dataclass
class OpenRpc:
    closed: bool = False


@dataclass
class PeerList:
    """A test double of ``tether.net.Network``: the peers found so far, and who watches."""

    found: list[Peer] = field(default_factory=list)
    watchers: list[Callable[[Peer], None]] = field(default_factory=list)

    def peers(self) -> list[Peer]:
        return list(self.found)

    def on_peer(self, callback: Callable[[Peer], None]) -> Callable[[], None]:
        self.watchers.append(callback)
        return lambda: self.watchers.remove(callback)

    async def refresh(self, topic: str) -> None:
        pass

    def add(self, key: bytes, topic: str) -> Peer:
        peer = Peer(key, OpenRpc(), {topic})  # type: ignore[arg-type]
        self.found.append(peer)
        for watch in list(self.watchers):
            watch(peer)
        return peer


def run(test: Callable[[], object]) -> None:
    trio.run(test, clock=trio.testing.MockClock(autojump_threshold=0))  # type: ignore[arg-type]


def test_own_region_first_then_the_fallback_while_none_is_usable() -> None:
    async def main() -> None:
        net = PeerList()
        pool = Orchestrators(net, US, fallback_topics=[EU])  # type: ignore[arg-type]
        eu = net.add(b"e" * 32, EU)
        us = net.add(b"u" * 32, US)
        assert await pool.pick(exclude=set(), timeout=1) is us
        pool.avoid(us)  # e.g. draining
        assert await pool.pick(exclude=set(), timeout=1) is eu
        us2 = net.add(b"v" * 32, US)
        assert await pool.pick(exclude=set(), timeout=1) is us2  # back home
    run(main)


def test_waits_for_the_first_orchestrator_of_any_region() -> None:
    async def main() -> None:
        net = PeerList()
        pool = Orchestrators(net, US, fallback_topics=[EU])  # type: ignore[arg-type]
        async with trio.open_nursery() as nursery:
            async def later() -> None:
                await trio.sleep(3)
                net.add(b"e" * 32, EU)
            nursery.start_soon(later)
            picked = await pool.pick(exclude=set(), timeout=10)
        assert picked.remote_key == b"e" * 32
        with pytest.raises(Unavailable, match=r"tether/control/us-east.*eu-west"):
            await pool.pick(exclude={b"e" * 32}, timeout=2)
    run(main)


def test_without_fallback_regions_only_its_own_region() -> None:
    async def main() -> None:
        net = PeerList()
        pool = Orchestrators(net, US)  # type: ignore[arg-type]
        net.add(b"e" * 32, EU)
        with pytest.raises(Unavailable, match="us-east"):
            await pool.pick(exclude=set(), timeout=2)
    run(main)


def test_fallback_region_settings_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.main import fallback_regions_from
    from tether.process import ConfigError

    assert fallback_regions_from(["eu-west", "eu-west,ap-south"], "us-east") == [
        "eu-west", "ap-south"]
    monkeypatch.setenv("TETHER_FALLBACK_REGIONS", "eu-west")
    assert fallback_regions_from(None, "us-east") == ["eu-west"]
    with pytest.raises(ConfigError, match="own region"):
        fallback_regions_from(["us-east"], "us-east")
    with pytest.raises(ConfigError, match="--fallback-region"):
        fallback_regions_from(["Not A Region"], "us-east")
