"""The one check that Node.js and the pinned npm packages are here, for every test that
talks to Node. They are part of the test environment (`tools/setup` runs `npm ci`), so
their absence fails the test; `TETHER_ALLOW_NO_NODE=1` turns that into a skip, saying so."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HOWTO = "needs node and the pinned node_modules: run tools/setup (it runs npm ci)"


def require_node(package: str = "hyperswarm") -> str:
    """The ``node`` executable, once ``node_modules/<package>`` is installed. Call it
    before ``trio.run``: a skip or failure raised inside a nursery arrives as a group."""
    node = shutil.which("node")
    if node is not None and (ROOT / "node_modules" / package).is_dir():
        return node
    if os.environ.get("TETHER_ALLOW_NO_NODE") == "1":
        pytest.skip(f"TETHER_ALLOW_NO_NODE=1: this test {HOWTO}")
    pytest.fail(f"this test {HOWTO} (or set TETHER_ALLOW_NO_NODE=1 to skip it)")
