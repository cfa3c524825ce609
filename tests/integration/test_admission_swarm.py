"""The admission scenarios of ``tests/services/test_admission.py`` on real Hyperswarm
connections over a loopback testnet, in real time: an unadmitted worker gets no work, a
revoked one leaves placement and its stream moves, an admission applies live. Only the
engine is the scripted test double."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import trio

from tests.integration.testnet import node_testnet
from tests.services.harness import fleet, swarm_networks, wall_ms
from tests.services.test_admission import SCENARIOS, Scenario

pytestmark = [pytest.mark.interop, pytest.mark.slow]


@pytest.mark.parametrize("fn", SCENARIOS, ids=[f.__name__ for f in SCENARIOS])
def test_scenario_on_hyperswarm(fn: Scenario, tmp_path: Path) -> None:
    async def main() -> None:
        with trio.fail_after(100):
            async with node_testnet(3) as bootstrap:
                await fn(
                    functools.partial(
                        fleet, tmp_path, networks=swarm_networks(bootstrap), clock_ms=wall_ms
                    )
                )

    trio.run(main)
