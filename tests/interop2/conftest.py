"""The interop tests need node and the pinned node_modules (see tests/node_env.py)."""

from __future__ import annotations

import pytest
from interop2_helpers import require_node


@pytest.fixture(autouse=True)
def _node_available() -> None:
    # checked before trio starts: a skip raised inside a nursery would arrive as an error
    require_node()
