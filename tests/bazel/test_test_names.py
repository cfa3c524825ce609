"""pytest imports a test module that sits in a folder without ``__init__.py`` under its bare
file name, so two such modules with one name stop the whole suite's collection. This keeps
those names unique (a module inside a package is named by its package and may repeat)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent


def test_package_less_test_modules_have_unique_names() -> None:
    by_name: dict[str, list[str]] = defaultdict(list)
    for path in TESTS.rglob("test_*.py"):
        if not (path.parent / "__init__.py").exists():
            by_name[path.name].append(str(path.relative_to(TESTS)))
    clashes = {name: paths for name, paths in by_name.items() if len(paths) > 1}
    assert clashes == {}, f"rename one of each: {clashes}"
