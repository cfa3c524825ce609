"""The request-path scenarios of ``tests/services/test_request_path.py`` on real
Hyperswarm connections over a loopback testnet, in real time: the same service code,
no network double. Only the engine is the scripted test double (the real engines run
end to end in ``test_request_path.py`` of this folder)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.integration.testnet import node_testnet, run_on_hyperswarm
from tests.services.harness import fleet, swarm_networks, wall_ms
from tests.services.test_overload import SCENARIOS as OVERLOAD
from tests.services.test_overload import Scenario as OverloadScenario
from tests.services.test_request_path import SCENARIOS, Scenario

pytestmark = [pytest.mark.interop, pytest.mark.slow]


@pytest.mark.parametrize("fn", SCENARIOS, ids=[f.__name__ for f in SCENARIOS])
def test_scenario_on_hyperswarm(fn: Scenario, tmp_path: Path) -> None:
    run_on_hyperswarm(fn, tmp_path)


@pytest.mark.parametrize("fn", OVERLOAD, ids=[f.__name__ for f in OVERLOAD])
def test_overload_scenario_on_hyperswarm(fn: OverloadScenario, tmp_path: Path) -> None:
    async def main() -> None:
        with trio.fail_after(100):
            async with node_testnet(3) as bootstrap, fleet(
                tmp_path, networks=swarm_networks(bootstrap), clock_ms=wall_ms
            ) as f:
                await fn(f)

    trio.run(main)
