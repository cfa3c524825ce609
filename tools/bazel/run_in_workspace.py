"""Runs a Python script of the repository in the source tree, for `bazel run` targets.

`bazel run` starts binaries inside their runfiles folder; code generators and other tools that
write into the repository must instead run at the workspace root, which Bazel names in
$BUILD_WORKSPACE_DIRECTORY. Usage: run_in_workspace.py SCRIPT [ARGS...], SCRIPT relative to the
workspace root. The script runs under the same interpreter (the project's .venv).
"""

import os
import sys


def main(argv: list[str]) -> int:
    workspace = os.environ.get("BUILD_WORKSPACE_DIRECTORY")
    if not workspace:
        print("run_in_workspace: start this target with `bazel run`", file=sys.stderr)
        return 2
    if not argv:
        print("usage: run_in_workspace.py SCRIPT [ARGS...]", file=sys.stderr)
        return 2
    script = os.path.join(workspace, argv[0])
    if not os.path.isfile(script):
        print(f"run_in_workspace: {argv[0]} does not exist in the workspace", file=sys.stderr)
        return 2
    os.chdir(workspace)
    env = dict(os.environ, PYTHONPATH=workspace)
    os.execve(sys.executable, [sys.executable, script, *argv[1:]], env)
    return 0  # not reached: execve replaces this process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
