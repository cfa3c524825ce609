"""A registry restarted with the same key on real Hyperswarm is found again within one
lookup, however long it was down: nothing keeps the dead peer cached."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio

from p2p_transport.hyperswarm import swarm as hyperswarm
from tests.integration.testnet import node_testnet
from tests.services.harness import fleet, swarm_networks, wall_ms
from tests.services.test_request_path import collect, request
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
                    return any(s.peers[key].attempts <= hyperswarm.MAX_ATTEMPTS for s in swarms)

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
