"""Checks that the repository keeps the top-level layout Tether's build and docs rely on."""

import re
from pathlib import Path

import pytest

# Resolving follows the runfiles symlinks back to the source tree, so this test sees the
# repository the same way whether pytest or Bazel runs it.
REPO = Path(__file__).resolve().parents[2]

SERVICES = ("gateway", "orchestrator", "registry", "worker")


@pytest.mark.parametrize(
    "path",
    ["WORKSPACE", "BUILD.bazel", "pyproject.toml", "proto/buf.yaml", "proto/tether/v1"],
)
def test_top_level_entries_exist(path: str) -> None:
    assert (REPO / path).exists(), f"{path} is missing from the repository root"


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_has_a_bazel_binary_and_main(service: str) -> None:
    assert (REPO / service / "BUILD.bazel").is_file()
    main = (REPO / service / "main.py").read_text(encoding="utf-8")
    assert "def main(" in main


def test_services_never_import_each_other() -> None:
    for service in SERVICES:
        others = "|".join(s for s in SERVICES if s != service)
        forbidden = re.compile(rf"^\s*(?:from|import)\s+(?:{others})\b", re.MULTILINE)
        for source in (REPO / service).rglob("*.py"):
            match = forbidden.search(source.read_text(encoding="utf-8"))
            assert match is None, f"{source} imports another service: {match and match.group(0)}"


def test_generated_messages_are_importable() -> None:
    from tether.v1 import infer_pb2

    request = infer_pb2.DESCRIPTOR.message_types_by_name
    assert request, "tether.v1.infer_pb2 declares no messages"
