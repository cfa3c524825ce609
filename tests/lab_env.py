"""The one check that this machine can make network labs (``tools/lab.py``: root, ``ip``,
``nft``, namespaces that accept veth pairs and nftables masquerade), for every lab test. CI
runs as root with nftables installed (``tools/install_system_deps.sh``), so a machine that
cannot fails the test and says why; ``TETHER_ALLOW_NO_LAB=1`` turns that into a skip, saying so."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "tools") not in sys.path:
    sys.path.insert(0, str(ROOT / "tools"))

import lab as netlab  # noqa: E402

_why: list[str | None] = []


def require_lab() -> None:
    """Return if labs can be made here; else fail (or skip under TETHER_ALLOW_NO_LAB=1)."""
    if not _why:
        _why.append(netlab.unavailable())
    why = _why[0]
    if why is None:
        return
    if os.environ.get("TETHER_ALLOW_NO_LAB") == "1":
        pytest.skip(f"TETHER_ALLOW_NO_LAB=1: {why}")
    pytest.fail(f"{why} (or set TETHER_ALLOW_NO_LAB=1 to skip the lab tests)")


__all__ = ["netlab", "require_lab"]
