"""Contract tests: committed golden wire bytes for every tether.v1 message.

Each vector is decoded with the current schema, compared by field *name* with
its committed text form, and re-encoded to the same bytes. A field renumbered,
retyped or removed in ``proto/`` therefore fails here until the vectors are
deliberately regenerated (``python tools/golden_vectors.py --write``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import golden_vectors  # noqa: E402

VECTORS = json.loads(golden_vectors.VECTORS.read_text())


def test_every_message_has_a_vector() -> None:
    missing = [n for n in golden_vectors.message_classes() if n not in VECTORS]
    assert missing == []


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_vector_decodes_and_reencodes(name: str) -> None:
    problems = golden_vectors.verify({name: VECTORS[name]}, complete=False)
    assert problems == []


def test_spec_contract_field_names() -> None:
    """The spec's contracts, field for field (§2 Key Contracts)."""
    from tether.v1 import health_pb2, infer_pb2

    def names(cls: Any) -> set[str]:
        return {f.camelcase_name for f in cls.DESCRIPTOR.fields}

    assert {
        "tenantId", "modelId", "version", "input", "correlationId", "retryToken", "traceId"
    } <= names(infer_pb2.Infer.Request)
    assert {"correlationId", "seq", "payload", "done"} <= names(infer_pb2.Infer.Chunk)
    assert {"workerId", "capacity", "gpuClass", "modelCache"} <= names(health_pb2.Health.Report)


def test_renumbering_a_field_breaks_the_vectors(tmp_path: Path) -> None:
    proto = tmp_path / "proto"
    shutil.copytree(ROOT / "proto", proto)
    infer = proto / "tether" / "v1" / "infer.proto"
    text = infer.read_text()
    assert "string model_id = 2;" in text
    infer.write_text(text.replace("string model_id = 2;", "string model_id = 12;"))
    out = tmp_path / "out"
    (out / "tether" / "v1").mkdir(parents=True)
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", f"-I{proto}", f"--python_out={out}",
            *sorted(str(p.relative_to(proto)) for p in proto.rglob("*.proto")),
        ],
        check=True,
        cwd=proto,
    )
    (out / "tether" / "__init__.py").write_text("")
    (out / "tether" / "v1" / "__init__.py").write_text("")
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "golden_vectors.py"), "--verify"],
        env={"PYTHONPATH": str(out), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "tether.v1.Infer.Request" in result.stdout
