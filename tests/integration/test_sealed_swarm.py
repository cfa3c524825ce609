"""Sealed-request scenarios of ``tests/services/test_sealed_requests.py`` on real
Hyperswarm connections over a loopback testnet, in real time: the orchestrator and
the gateway are spied on as they serve real peers, and the Metadata Store is scanned."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.testnet import run_on_hyperswarm
from tests.services.test_sealed_requests import SWARM_SCENARIOS, Scenario

pytestmark = [pytest.mark.interop, pytest.mark.slow]


@pytest.mark.parametrize("fn", SWARM_SCENARIOS, ids=[f.__name__ for f in SWARM_SCENARIOS])
def test_sealed_scenario_on_hyperswarm(fn: Scenario, tmp_path: Path) -> None:
    run_on_hyperswarm(fn, tmp_path)
