"""A registry restarted with the same key on real Hyperswarm is found again within one
lookup, however long it was down: nothing keeps the dead peer cached."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import trio

from p2p_transport.hyperswarm import swarm as hyperswarm
from tests.integration.processes import service_process
from tests.integration.testnet import node_testnet
from tests.services.harness import fleet, swarm_networks, wall_ms
from tests.services.test_request_path import collect, request
from tether.keys import KeyPair
from tether.net.swarm import SwarmNetwork

pytestmark = [pytest.mark.interop, pytest.mark.slow]


def test_a_registry_restarted_with_its_key_is_found_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Hyperswarm's retry buckets (1 s, 5 s, 15 s) shortened so that the connections to the
    # stopped registry run out of retries sooner.
    for name in ("BACKOFF_S", "BACKOFF_M", "BACKOFF_L"):
        monkeypatch.setattr(hyperswarm, name, 0.1)
    monkeypatch.setattr(hyperswarm, "BACKOFF_JITTER", 0.05)

    async def main() -> None:
        with trio.fail_after(180):
            async with (
                node_testnet(3) as bootstrap,
                fleet(tmp_path, networks=swarm_networks(bootstrap), clock_ms=wall_ms) as f,
            ):
                await f.add_worker("w1")
                await f.discovery.wait_for(lambda s: len(s) == 1)
                gw = await f.gateway()
                await collect(gw, request(correlation_id="before"), f.token("acme"))
                assert f.registry_key is not None
                f.stop_registry(f.registry_key)
                # Down until every retry of the orchestrator's and the gateway's
                # connections to it failed (each connect to a vanished key takes seconds).
                nets = (f.orchestrator_net, f.gateway_net)
                swarms = [n.swarm for n in nets if isinstance(n, SwarmNetwork)]
                key = f.registry_key.public_key

                def retrying() -> bool:
                    infos = [s.peers.get(key) for s in swarms]
                    return any(i is not None and i.attempts <= hyperswarm.MAX_ATTEMPTS
                               for i in infos)

                with trio.fail_after(90):
                    # Another object's state, with no event to wait on; bounded above.
                    while retrying():  # noqa: ASYNC110
                        await trio.sleep(1)
                await f.add_registry(f.registry_key)
                started = time.monotonic()
                # A tenant never resolved: only a live registry can answer.
                chunks = await collect(gw, request(correlation_id="after"), f.token("globex"))
                assert chunks[-1].done
                assert f.orchestrator_service.stale_resolutions == 0
                print(f"registry found again in {time.monotonic() - started:.2f} s")
                assert time.monotonic() - started < 6  # one lookup period of wait_for_peer

    trio.run(main)


def test_a_registry_process_killed_and_restarted_with_its_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registry as its own process, killed (SIGKILL: its announcement stays behind) and
    started again with the same key: meanwhile a model already resolved still resolves, and
    once back it is found again at the next lookup."""
    for name in ("BACKOFF_S", "BACKOFF_M", "BACKOFF_L"):
        monkeypatch.setattr(hyperswarm, name, 0.1)
    monkeypatch.setattr(hyperswarm, "BACKOFF_JITTER", 0.05)

    async def main() -> None:
        with trio.fail_after(180):
            async with (
                node_testnet(3) as bootstrap,
                fleet(tmp_path, networks=swarm_networks(bootstrap), clock_ms=wall_ms) as f,
            ):
                assert f.registry_key is not None
                f.stop_registry(f.registry_key)  # the registry runs in its own process here
                seed = os.urandom(32)
                key = KeyPair.from_seed(seed).public_key
                args = ("--db", str(tmp_path / "meta.db"), "--seed", seed.hex())
                module = "tests.integration.registry_process"
                async with service_process(module, bootstrap, *args) as registry:
                    await f.add_worker("w1")
                    await f.discovery.wait_for(lambda s: len(s) == 1)
                    gw = await f.gateway()
                    await collect(gw, request(correlation_id="before"), f.token("acme"))
                    registry.send_signal(signal.SIGKILL)
                await trio.sleep(6)  # past the 5 s resolution cache
                started = time.monotonic()
                chunks = await collect(gw, request(correlation_id="outage"), f.token("acme"))
                outage_s = time.monotonic() - started
                assert chunks[-1].done and f.orchestrator_service.stale_resolutions == 1

                nets = (f.orchestrator_net, f.gateway_net)
                swarms = [n.swarm for n in nets if isinstance(n, SwarmNetwork)]

                def retrying() -> bool:
                    infos = [s.peers.get(key) for s in swarms]
                    return any(i is not None and i.attempts <= hyperswarm.MAX_ATTEMPTS
                               for i in infos)

                with trio.fail_after(90):
                    # Another object's state, with no event to wait on; bounded above.
                    while retrying():  # noqa: ASYNC110
                        await trio.sleep(1)
                async with service_process(module, bootstrap, *args):
                    started = time.monotonic()
                    # A tenant never resolved: only a live registry can answer.
                    chunks = await collect(gw, request(correlation_id="after"), f.token("globex"))
                    found_s = time.monotonic() - started
                assert chunks[-1].done
                print(f"outage request took {outage_s:.2f} s; registry found again in "
                      f"{found_s:.2f} s")
                assert outage_s < 5 and found_s < 6

    trio.run(main)
