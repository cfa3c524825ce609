"""The committed codec/crypto vectors are exactly what the pinned npm packages produce today."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from transport_node_harness import REPO_ROOT, node_script, require_node

pytestmark = pytest.mark.interop


def test_committed_vectors_match_node() -> None:
    require_node()
    out = subprocess.run(
        ["node", str(node_script("cenc-vectors.mjs"))],
        cwd=REPO_ROOT, capture_output=True, check=True, timeout=60,
    ).stdout
    committed = Path(__file__).parents[1] / "transport" / "fixtures" / "cenc_vectors.json"
    assert json.loads(out) == json.loads(committed.read_text())
