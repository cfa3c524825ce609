"""Sealed-request scenarios of ``tests/services/test_sealed_requests.py`` on real
Hyperswarm connections over a loopback testnet, in real time: the orchestrator and
the gateway are spied on as they serve real peers, and the Metadata Store is scanned."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import trio

from tests.integration.testnet import node_testnet
from tests.services.harness import fleet, swarm_networks, wall_ms
from tests.services.test_sealed_requests import SWARM_SCENARIOS, Scenario

pytestmark = [pytest.mark.interop, pytest.mark.slow]


@pytest.mark.parametrize("fn", SWARM_SCENARIOS, ids=[f.__name__ for f in SWARM_SCENARIOS])
def test_sealed_scenario_on_hyperswarm(fn: Scenario, tmp_path: Path) -> None:
    async def main() -> None:
        with trio.fail_after(100):
            async with node_testnet(3) as bootstrap:
                await fn(
                    functools.partial(
                        fleet, tmp_path, networks=swarm_networks(bootstrap), clock_ms=wall_ms
                    )
                )

    trio.run(main)
