"""The admission scenarios of ``tests/services/test_admission.py`` on real Hyperswarm
connections over a loopback testnet, in real time: an unadmitted worker gets no work, a
revoked one leaves placement and its stream moves, an admission applies live. Only the
engine is the scripted test double."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.testnet import run_on_hyperswarm
from tests.services.test_admission import SCENARIOS, Scenario

pytestmark = [pytest.mark.interop, pytest.mark.slow]


@pytest.mark.parametrize("fn", SCENARIOS, ids=[f.__name__ for f in SCENARIOS])
def test_scenario_on_hyperswarm(fn: Scenario, tmp_path: Path) -> None:
    run_on_hyperswarm(fn, tmp_path)
