"""Fixtures of the lab tests: a fresh ``tools/lab.py`` lab per test, always torn down."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.lab_env import netlab, require_lab


@pytest.fixture
def lab() -> Iterator[netlab.Lab]:
    require_lab()
    with netlab.Lab() as lab:
        yield lab
    assert not lab.leftovers(), f"namespaces left behind: {lab.leftovers()}"
