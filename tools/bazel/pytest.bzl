"""`pytest_test`: a py_test that runs pytest, from the project's virtualenv, on given files."""

def pytest_test(name, srcs, data = [], deps = [], args = [], **kwargs):
    """Runs pytest on `srcs` with the repository's pytest configuration.

    Args:
      name: target name.
      srcs: the test files (test_*.py); other .py files they import go in `data` or `deps`.
      data: fixtures and other files the tests read.
      deps: py_library targets the tests import.
      args: extra pytest arguments, after the file names.
      **kwargs: passed to py_test (size, tags, timeout, ...).
    """
    native.py_test(
        name = name,
        srcs = ["//tools/bazel:pytest_main.py"] + srcs,
        main = "//tools/bazel:pytest_main.py",
        args = ["$(rootpath %s)" % src for src in srcs] + args,
        data = ["//:pyproject.toml"] + data,
        deps = deps,
        python_version = "PY3",
        **kwargs
    )

def pytest_area(area, deps = [], **kwargs):
    """One pytest_test over every test_*.py under tests/<area>/, if there are any.

    Called from tests/BUILD.bazel. Fixtures, helpers and conftest files in the folder travel as
    data, so tests that read files next to them find them in the runfiles, and so do the
    helpers every area may import from the `tests` package itself (node_env.py).
    """
    tests = native.glob([area + "/**/test_*.py"])
    if not tests:
        return
    pytest_test(
        name = area.replace("/", "_") + "_test",
        srcs = tests,
        data = native.glob(
            [area + "/**/*"],
            exclude = tests + [area + "/**/__pycache__/**"],
        ) + ["__init__.py", "node_env.py"],
        deps = deps,
        **kwargs
    )
