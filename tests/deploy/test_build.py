"""The parts of ``deploy/images/build.py`` that need no podman: the lock is the closure of
``pyproject.toml``'s runtime dependencies as installed, the project files leave out models and
build files, apt's mirror is found in either sources format, and tar entries are normalised
(owner root, times clamped) so that the rootfs is the same from one build to the next."""

from __future__ import annotations

import importlib.util
import sys
import tarfile
import tomllib
from pathlib import Path
from types import ModuleType

from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]


def _build() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "tether_image_build", REPO / "deploy" / "images" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


build = _build()


def test_the_lock_is_the_runtime_closure_of_the_working_environment() -> None:
    """The same packages, and pyproject's own pins exactly (a transitive dependency's version
    may move on a fresh install without the lock being wrong)."""
    pins = dict(line.split("==") for line in build.LOCK.read_text().splitlines()
                if line and not line.startswith("#"))
    installed = build.runtime_closure()
    assert set(pins) == set(installed), "regenerate: deploy/images/build.py --write-lock"
    with open(REPO / "pyproject.toml", "rb") as f:
        roots = tomllib.load(f)["project"]["dependencies"]
    for root in roots:
        name, version = root.split("==")
        assert pins[canonicalize_name(name.split("[")[0])] == version, root
    assert "trio" in pins and "onnxruntime" in pins
    assert not {"pytest", "mypy", "ruff", "torch", "grpcio-tools"} & set(pins)


def test_project_files_leave_out_models_and_build_files() -> None:
    files = dict(build.project_files())
    assert "opt/tether/app/app/cli.py" in files
    assert "opt/tether/app/tools/publish_model.py" in files
    assert not [f for f in files if "/worker/models/" in f or "__pycache__" in f
                or f.endswith(("BUILD.bazel", ".pyc"))]


def test_apt_mirror_from_either_sources_format(tmp_path: Path) -> None:
    deb822 = tmp_path / "debian.sources"
    deb822.write_text("Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n"
                      "\nTypes: deb\nURIs: http://security.example/debian-security\n")
    one_line = tmp_path / "sources.list"
    one_line.write_text("# a comment\ndeb [arch=amd64] http://other.example/debian bookworm main\n")
    assert build.apt_mirror([str(deb822)]) == "http://mirror.example/debian"
    assert build.apt_mirror([str(one_line)]) == "http://other.example/debian"
    assert build.apt_mirror([str(tmp_path / "missing")]) == "http://deb.debian.org/debian"


def test_tar_entries_are_normalised() -> None:
    info = tarfile.TarInfo("usr/bin/x")
    info.mtime, info.uid, info.gid, info.uname = 2_000_000_000, 1000, 1000, "someone"
    info.pax_headers = {"atime": "1"}
    out = build._normal(info, 1_767_225_600)
    assert (out.mtime, out.uid, out.gid, out.uname, out.gname) == (
        1_767_225_600, 0, 0, "root", "root")
    assert out.pax_headers == {}
    older = tarfile.TarInfo("etc/y")
    older.mtime = 100
    assert build._normal(older, 1_767_225_600).mtime == 100
