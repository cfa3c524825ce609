"""The architecture diagrams: sources use only PlantUML's bundled C4 library, and they render
offline to SVG and PNG with tools/render_diagrams.sh."""

import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

# Resolving follows Bazel's runfiles symlinks back to the source tree, where node_modules is.
REPO = Path(__file__).resolve().parents[2]
DIAGRAMS = REPO / "docs" / "diagrams"
RENDER = REPO / "tools" / "render_diagrams.sh"

EXPECTED = {
    "Context-Tether",
    "Container-Tether",
    "Component-Orchestrator",
    "Component-Worker",
    "Deployment-Tether",
    "Sequence-Request-Lifecycle",
}

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Words PlantUML puts into the picture it draws instead of a diagram it cannot render.
ERROR_MARKERS = ("Syntax Error", "Cannot open URL", "Cannot include", "Dot executable")


def sources() -> list[Path]:
    return sorted(DIAGRAMS.glob("*.puml"))


def test_every_spec_diagram_has_a_source() -> None:
    assert {path.stem for path in sources()} == EXPECTED


@pytest.mark.parametrize("source", sources(), ids=lambda path: path.stem)
def test_sources_include_only_the_bundled_library(source: Path) -> None:
    text = source.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines[0] == f"@startuml {source.stem}", "output files are named after @startuml"
    for line in lines:
        if line.lstrip().startswith("!include"):
            assert line.split(maxsplit=1)[1].startswith("<C4/"), line
    assert "!includeurl" not in text
    assert "http://" not in text
    assert "https://" not in text


@pytest.mark.parametrize("source", sources(), ids=lambda path: path.stem)
def test_renders_are_committed(source: Path) -> None:
    for suffix in (".svg", ".png"):
        render = source.with_suffix(suffix)
        assert render.is_file(), f"{render.name} is missing: run tools/render_diagrams.sh"


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE, "not a PNG file"
    assert data[12:16] == b"IHDR", "PNG does not start with an IHDR chunk"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("java") is None, reason="rendering needs a Java runtime")
def test_a_c4_diagram_renders_offline_to_svg_and_png(tmp_path: Path) -> None:
    source = DIAGRAMS / "Component-Orchestrator.puml"

    result = subprocess.run(
        [str(RENDER), "-o", str(tmp_path), str(source)],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "Component-Orchestrator.png",
        "Component-Orchestrator.svg",
    ]
    svg = (tmp_path / "Component-Orchestrator.svg").read_text(encoding="utf-8")
    root = ET.fromstring(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    for marker in ERROR_MARKERS:
        assert marker not in svg
    for label in ("DiscoverySub", "Scheduler", "Reservation", "Metadata"):
        assert label in svg, f"{label!r} is missing from the rendered SVG"

    width, height = png_size((tmp_path / "Component-Orchestrator.png").read_bytes())
    # PlantUML's error picture is a small box of text; this diagram is well over 1000 px wide.
    assert width > 1000
    assert height > 400
