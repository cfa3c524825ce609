"""`buf breaking` guards the wire contract: renumbering a field must fail against the baseline.

The baseline is proto/baseline.binpb, the committed buf image of the accepted contracts. These
tests copy proto/ to a temporary folder, so the tree itself is never edited.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

# Resolving follows Bazel's runfiles symlinks back to the source tree, where node_modules is.
REPO = Path(__file__).resolve().parents[2]
PROTO = REPO / "proto"
BASELINE = PROTO / "baseline.binpb"

# `string tenant_id = 1;`, first declared in Infer.Request: a field every client sends.
FIELD = re.compile(r"^(\s*string tenant_id = )(\d+);", re.MULTILINE)


def buf_breaking(module: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["npx", "--no-install", "buf", "breaking", str(module), "--against", str(BASELINE)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def proto_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "proto"
    shutil.copytree(PROTO, copy, ignore=shutil.ignore_patterns("baseline.binpb"))
    return copy


def test_unchanged_contracts_match_the_baseline(proto_copy: Path) -> None:
    result = buf_breaking(proto_copy)
    assert result.returncode == 0, result.stdout + result.stderr


def test_renumbering_a_field_is_a_breaking_change(proto_copy: Path) -> None:
    infer = proto_copy / "tether" / "v1" / "infer.proto"
    text = infer.read_text(encoding="utf-8")
    renumbered, count = FIELD.subn(r"\g<1>99;", text, count=1)
    assert count == 1, "Infer.Request.tenant_id not found; update FIELD to a field that exists"
    infer.write_text(renumbered, encoding="utf-8")

    result = buf_breaking(proto_copy)

    assert result.returncode != 0, "buf breaking accepted a renumbered field"
    assert "tenant_id" in result.stdout, result.stdout + result.stderr
