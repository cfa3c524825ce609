"""A Python toolchain whose interpreter is the workspace's virtualenv.

Tether's Python dependencies are installed by pip from pyproject.toml into `.venv` at the
workspace root. Rather than re-resolving them through Bazel, py_binary and py_test targets run
that interpreter, so they see exactly the packages the rest of the tooling sees. The path is
found when the repository rule runs (from the location of the WORKSPACE file, or from
$TETHER_VENV), so no machine path is written into the sources.
"""

_BUILD = """\
load("@bazel_tools//tools/python:toolchain.bzl", "py_runtime_pair")

package(default_visibility = ["//visibility:public"])

py_runtime(
    name = "python3_runtime",
    interpreter_path = "{interpreter}",
    python_version = "PY3",
    stub_shebang = "#!{interpreter}",
)

py_runtime_pair(
    name = "runtime_pair",
    py3_runtime = ":python3_runtime",
)

toolchain(
    name = "python_toolchain",
    toolchain = ":runtime_pair",
    toolchain_type = "@bazel_tools//tools/python:toolchain_type",
)
"""

def _python_venv_impl(ctx):
    venv = ctx.os.environ.get("TETHER_VENV", "")
    if not venv:
        venv = str(ctx.path(Label("//:WORKSPACE")).dirname) + "/.venv"
    interpreter = ctx.path(venv + "/bin/python3")
    if not interpreter.exists:
        fail(("no Python interpreter at {}: create the virtualenv first with " +
              "`python3 -m venv .venv && .venv/bin/pip install -e '.[dev]'` " +
              "(or point TETHER_VENV at one)").format(interpreter))
    ctx.file("WORKSPACE", 'workspace(name = "{}")\n'.format(ctx.name))
    ctx.file("BUILD.bazel", _BUILD.format(interpreter = str(interpreter)))

python_venv = repository_rule(
    implementation = _python_venv_impl,
    environ = ["TETHER_VENV"],
    local = True,
)
