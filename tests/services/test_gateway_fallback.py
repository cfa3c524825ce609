"""The gateway's fallback regions (``gateway.orchestrators``): another region's
orchestrators take its work only while none of its own is usable. The network is a test
double (``PeerList``: the peers a real network would have found on each topic); the lab
test ``tests/lab/test_regions.py`` kills a region's orchestrators between real processes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
import trio.testing

from gateway.orchestrators import Orchestrators
from tether import topics
from tether.errors import Unavailable
from tether.net import Peer
from tether.rpc import RpcError, StatusCode

US, EU = topics.control("us-east"), topics.control("eu-west")


@dataclass
class OpenRpc:
    """A test double of an RPC connection: answers every call NOT_FOUND (alive)."""

    closed: bool = False

    async def unary(self, method: str, payload: bytes, **kw: object) -> bytes:
        raise RpcError(StatusCode.NOT_FOUND, "no such job")


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


def test_fallback_region_settings_are_checked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from gateway.main import configure, fallback_regions_from
    from tether.process import ConfigError

    assert fallback_regions_from(["eu-west", "eu-west,ap-south"], "us-east") == [
        "eu-west", "ap-south"]
    monkeypatch.setenv("TETHER_FALLBACK_REGIONS", "eu-west,ap-south")
    settings = configure(["--region", "us-east", "--bootstrap", "127.0.0.1:49737",
                          "--data-dir", str(tmp_path / "data")])
    assert settings.fallback_regions == ["eu-west", "ap-south"]
    with pytest.raises(ConfigError, match="own region"):
        fallback_regions_from(["us-east"], "us-east")
    with pytest.raises(ConfigError, match="--fallback-region"):
        fallback_regions_from(["Not A Region"], "us-east")


def test_a_lost_orchestrator_makes_the_gateway_look_again_for_a_while() -> None:
    """A restart under the same key is found by a lookup: the gateway looks the control
    topics up every REFIND_EVERY_S after losing a connection, and stops after REFIND_FOR_S."""
    from gateway.orchestrators import REFIND_EVERY_S, REFIND_FOR_S

    async def main() -> None:
        net = CountingPeerList()
        pool = Orchestrators(net, US, fallback_topics=[EU])  # type: ignore[arg-type]
        peer = net.add(b"u" * 32, US)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool.watch)
            await trio.sleep(30)
            assert net.refreshed == []  # nothing lost: Hyperswarm's own refresh suffices
            peer.rpc.closed = True  # type: ignore[misc]
            await trio.sleep(REFIND_EVERY_S * 3 + 1)
            assert net.refreshed[:2] == [US, EU] and 3 <= len(net.refreshed) // 2 <= 4
            await trio.sleep(REFIND_FOR_S + 10)
            settled = len(net.refreshed)
            await trio.sleep(60)
            assert len(net.refreshed) == settled  # gave up: the key stays gone
            nursery.cancel_scope.cancel()
    run(main)


@dataclass
class CountingPeerList(PeerList):
    refreshed: list[str] = field(default_factory=list)

    async def refresh(self, topic: str) -> None:
        self.refreshed.append(topic)


@dataclass
class SilentRpc(OpenRpc):
    """A test double of a connection to a hung orchestrator: calls time out until
    ``answering``."""

    answering: bool = False

    async def unary(self, method: str, payload: bytes, **kw: object) -> bytes:
        if self.answering:
            raise RpcError(StatusCode.NOT_FOUND, "no such job")
        await trio.sleep(float(kw.get("timeout") or 1))  # type: ignore[arg-type]
        raise RpcError(StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")

    async def aclose(self) -> None:
        self.closed = True


def test_a_key_dropped_for_not_answering_takes_work_again_only_once_it_answers() -> None:
    async def main() -> None:
        net = PeerList()
        pool = Orchestrators(net, US)  # type: ignore[arg-type]
        good = net.add(b"b" * 32, US)
        hung = Peer(b"a" * 32, SilentRpc(), {US})  # type: ignore[arg-type]
        net.found.append(hung)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool.watch)
            await trio.sleep(5)
            assert hung.rpc.closed  # dropped by the probes
            again = Peer(b"a" * 32, SilentRpc(), {US})  # type: ignore[arg-type]
            net.found.append(again)  # a lookup found it again: a new connection
            picks = {(await pool.pick(exclude=set(), timeout=1)).remote_key for _ in range(4)}
            assert picks == {good.remote_key}
            again.rpc.answering = True  # type: ignore[attr-defined]
            await trio.sleep(2.5)  # probed, answered
            picks = {(await pool.pick(exclude=set(), timeout=1)).remote_key for _ in range(4)}
            assert picks == {good.remote_key, again.remote_key}
            nursery.cancel_scope.cancel()
    run(main)
