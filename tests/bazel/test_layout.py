"""Checks that the repository keeps the top-level layout Tether's build and docs rely on,
and its layering: ``p2p_transport`` (the transport) below ``tether`` (the shared library),
below the services, below ``app`` (the ``tether`` command, the composition root). A package
imports only from the layers below it, and a service never from another service."""

import re
from pathlib import Path

import pytest

# Resolving follows the runfiles symlinks back to the source tree, so this test sees the
# repository the same way whether pytest or Bazel runs it.
REPO = Path(__file__).resolve().parents[2]

SERVICES = ("gateway", "orchestrator", "registry", "worker")
#: Each package and the top-level packages it must not import (nor load by name).
BELOW = {
    "p2p_transport": ("tether", "app", *SERVICES),
    "tether": ("app", *SERVICES),
    **dict.fromkeys(SERVICES, ("app",)),
}


def imports_of(names: tuple[str, ...]) -> re.Pattern[str]:
    """An import statement of one of ``names``, or a module path of one as a string (what
    ``importlib.import_module`` would load)."""
    alternatives = "|".join(names)
    return re.compile(
        rf"^\s*(?:from|import)\s+(?:{alternatives})\b|[\"'](?:{alternatives})\.[a-z_.]+[\"']",
        re.MULTILINE,
    )


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


@pytest.mark.parametrize("package", sorted(BELOW))
def test_no_package_imports_a_layer_above_it(package: str) -> None:
    forbidden = imports_of(BELOW[package])
    for source in (REPO / package).rglob("*.py"):
        match = forbidden.search(source.read_text(encoding="utf-8"))
        assert match is None, (
            f"{source.relative_to(REPO)} imports a layer above {package}: "
            f"{match and match.group(0)}"
        )


def test_the_layering_check_sees_an_import_and_a_name() -> None:
    pattern = imports_of(BELOW["tether"])
    assert pattern.search("from registry.catalog import Catalog")
    assert pattern.search("    import gateway.main")
    assert pattern.search('importlib.import_module("worker.main")')
    assert not pattern.search("from tether.topics import registry")
    assert not pattern.search('log = logging.getLogger("tether.gateway.access")')


def test_topic_wiring_is_written_once() -> None:
    """Each service's topics are joined by its ``assemble`` (``<service>/assembly.py``),
    which its main and the test harness both run: neither joins topics of its own (but a
    worker's main, which asks the registry what to serve before it assembles)."""
    joins = re.compile(r"\b(?:net|network)\.join\((?!topics\.registry\()")
    for source in [REPO / "tests/services/harness.py", *(REPO / s / "main.py" for s in SERVICES)]:
        match = joins.search(source.read_text(encoding="utf-8"))
        assert match is None, f"{source.relative_to(REPO)} joins a topic outside assemble()"
    for service in SERVICES:
        assert "def assemble(" in (REPO / service / "assembly.py").read_text(encoding="utf-8")


def test_generated_messages_are_importable() -> None:
    from tether.v1 import infer_pb2

    request = infer_pb2.DESCRIPTOR.message_types_by_name
    assert request, "tether.v1.infer_pb2 declares no messages"
