#!/usr/bin/env python3
"""Generate code from ``proto/``: the one command for all generated sources.

Writes, from ``proto/tether/v1/*.proto``:

- ``tether/v1/*_pb2.py`` and ``*_pb2.pyi``: protobuf message classes (protoc);
- ``tether/v1/*_rpc.py``: trio client stubs and servicer bases
  (``tools/protoc_gen_tether.py``);
- ``tether/v1/services_pb2_grpc.py``: gRPC stubs and servicers (grpcio-tools),
  for the gateway's gRPC edge and any gRPC client;
- ``clients/ts/src/gen/**/*_pb.ts``: TypeScript messages (``protoc-gen-es``
  from the repository's ``node_modules``; skipped with a warning when Node
  packages are not installed, never in ``--check``);
- ``clients/js/src/gen/**/*_pb.js`` and ``.d.ts``: the same messages as
  JavaScript with type declarations, for the JavaScript client (``clients/js``).

``--check`` regenerates into a scratch directory and fails, listing the files,
when the committed output differs: generated code is committed and CI runs this
check so it can never drift from the schema.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PY_OUT = Path("tether/v1")
TS_OUT = Path("clients/ts/src/gen")
JS_OUT = Path("clients/js/src/gen")
PLUGIN = ROOT / "tools" / "protoc_gen_tether.py"
PROTOC_GEN_ES = ROOT / "node_modules" / ".bin" / "protoc-gen-es"


def proto_files() -> list[str]:
    return sorted(str(p.relative_to(PROTO_DIR)) for p in (PROTO_DIR / "tether").rglob("*.proto"))


def _plugin_wrapper(tmp: Path) -> Path:
    """protoc needs an executable; run our plugin with this interpreter."""
    wrapper = tmp / "protoc-gen-tether"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{PLUGIN}" "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    return wrapper


def generate(out_root: Path, *, typescript: bool) -> None:
    files = proto_files()
    with tempfile.TemporaryDirectory() as tmp:
        wrapper = _plugin_wrapper(Path(tmp))
        args = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"--python_out={out_root}",
            f"--pyi_out={out_root}",
            f"--plugin=protoc-gen-tether={wrapper}",
            f"--tether_out={out_root}",
        ]
        if typescript:
            (out_root / TS_OUT).mkdir(parents=True, exist_ok=True)
            (out_root / JS_OUT).mkdir(parents=True, exist_ok=True)
            args += [
                f"--plugin=protoc-gen-es={PROTOC_GEN_ES}",
                f"--es_out={out_root / TS_OUT}",
                "--es_opt=target=ts",
                f"--plugin=protoc-gen-esjs={PROTOC_GEN_ES}",
                f"--esjs_out={out_root / JS_OUT}",
                "--esjs_opt=target=js+dts,import_extension=js",
            ]
        subprocess.run([*args, *files], check=True, cwd=ROOT)
        # gRPC code for the file that declares services only (the others would get
        # empty modules).
        subprocess.run(
            [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}",
             f"--grpc_python_out={out_root}", *[f for f in files if f.endswith("services.proto")]],
            check=True, cwd=ROOT,
        )


def generated_files(root: Path) -> set[Path]:
    found = {p.relative_to(root) for p in (root / PY_OUT).glob("*_pb2.py*")}
    found |= {p.relative_to(root) for p in (root / PY_OUT).glob("*_rpc.py")}
    found |= {p.relative_to(root) for p in (root / PY_OUT).glob("*_pb2_grpc.py")}
    if (root / TS_OUT).exists():
        found |= {p.relative_to(root) for p in (root / TS_OUT).rglob("*.ts")}
    if (root / JS_OUT).exists():
        found |= {p.relative_to(root) for p in (root / JS_OUT).rglob("*_pb.*")}
    return found


def check() -> int:
    if not PROTOC_GEN_ES.exists():
        print("gen_protos --check: node_modules missing; run `npm ci` first", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        generate(out, typescript=True)
        fresh, committed = generated_files(out), generated_files(ROOT)
        drift = sorted(str(p) for p in fresh ^ committed)
        drift += sorted(
            str(p) for p in fresh & committed if not filecmp.cmp(out / p, ROOT / p, shallow=False)
        )
    if drift:
        print("generated code is out of date with proto/; run: python tools/gen_protos.py")
        for name in drift:
            print(f"  {name}")
        return 1
    print(f"generated code matches proto/ ({len(fresh)} files)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if committed code drifted")
    opts = parser.parse_args()
    if opts.check:
        return check()
    typescript = PROTOC_GEN_ES.exists()
    if not typescript:
        print("warning: node_modules missing; TypeScript not generated (run npm ci)")
    for stale in generated_files(ROOT):
        os.remove(ROOT / stale)
    for out in (TS_OUT, JS_OUT):
        if typescript and (ROOT / out).exists():
            shutil.rmtree(ROOT / out)
    generate(ROOT, typescript=typescript)
    print(f"generated {len(generated_files(ROOT))} files from {len(proto_files())} protos")
    return 0


if __name__ == "__main__":
    sys.exit(main())
