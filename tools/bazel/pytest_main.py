"""Runs pytest on the files a Bazel py_test target names.

Each `py_test` under tests/ uses this file as its main module and passes its test files as
arguments. It runs from the target's runfiles folder, where pyproject.toml is present as data, so
the project's pytest configuration (strict markers, warnings as errors, timeouts) applies exactly
as it does when pytest runs from the repository root.
"""

import os
import sys

import pytest


def main(argv: list[str]) -> int:
    args = [
        "-p",
        "no:cacheprovider",  # the runfiles folder is not a place to keep a cache
        "-c",
        "pyproject.toml",
        "--rootdir",
        ".",
    ]
    xml_output = os.environ.get("XML_OUTPUT_FILE")
    if xml_output:
        args += ["--junitxml", xml_output]
    return int(pytest.main([*args, *argv]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
