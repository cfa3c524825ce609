"""Build Tether's OCI images with no base image from a registry.

    python deploy/images/build.py [--region us-east --region eu-west] [--service gateway ...]
    bazel run //deploy:images -- [same flags]

One root filesystem serves every service; it is made from parts that are each built once and
cached under ``var/images/`` (keyed by what goes into them):

1. Debian (``bookworm``, variant ``essential`` plus ``python3``, no compilers, no apt) by
   ``mmdebstrap`` from the mirror apt is configured with;
2. the project's locked runtime dependencies (``deploy/images/requirements.lock``, binary
   wheels only, ``--no-deps``) in a virtual environment at ``/opt/tether/venv``;
3. the project's packages at ``/opt/tether/app`` (plus ``tools/publish_model.py``), compiled
   to bytecode inside the rootfs with hash-checked ``.pyc`` files (no timestamps).

These are written into one tar with sorted entries, owner root and every time clamped to
``SOURCE_DATE_EPOCH``, imported by ``buildah`` as ``tether/base:<version>``; each service image
is that base plus its configuration (entrypoint, the non-root user ``tether`` (10001), the
data volume ``/var/lib/tether``, ``TETHER_*`` defaults, labels), tagged
``tether/<service>:<version>-<region>`` with ``TETHER_REGION`` baked in (overridable at run time
with ``-e TETHER_REGION=...``). ``worker-gpu`` is ``worker-cpu`` plus NVIDIA's TensorRT where
its packages are reachable; where they are not (here) it is built without that layer, runs on
ONNX Runtime's CPU provider, and says so in its ``org.tether.tensorrt`` label and on stderr.

``--write-lock`` regenerates the lock from the working virtual environment: the closure of
``pyproject.toml``'s runtime dependencies, pinned to the installed versions.
Prints one progress line per step and, at the end, a JSON line with every image's size.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
LOCK = HERE / "requirements.lock"
CACHE = REPO / "var" / "images"
#: 2026-01-01T00:00:00Z: every file time and the images' creation time.
DEFAULT_EPOCH = 1767225600
SUITE = "bookworm"
PYTHON = "python3.11"
DEBIAN_PACKAGES = ("python3", "libstdc++6", "ca-certificates")
#: dpkg leaves these out of the rootfs: documentation, manuals, translations.
DPKG_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*",
                 "/usr/share/info/*", "/usr/share/lintian/*")
#: mmdebstrap's own merged-/usr setup: without it apt pulls in `usrmerge`, and with it Perl.
MERGED_USR = "/usr/share/mmdebstrap/hooks/merged-usr"
PACKAGES = ("tether", "app", "p2p_transport", "gateway", "orchestrator", "registry", "worker")
USER_ID = 10001
DATA_DIR = "/var/lib/tether"
DEFAULT_REGIONS = ("us-east", "eu-west")
#: service -> (command after ``tether``, description)
SERVICES: dict[str, tuple[list[str], str]] = {
    "gateway": (["gateway"], "Tether gateway: tenant tokens, HTTP/gRPC edges"),
    "orchestrator": (["orchestrator"], "Tether orchestrator: placement and jobs"),
    "registry": (["registry"], "Tether model registry"),
    "worker-cpu": (["worker"], "Tether inference worker (ONNX Runtime, CPU)"),
    "worker-gpu": (["worker"], "Tether inference worker (TensorRT when built with it)"),
}
#: Where NVIDIA's TensorRT wheels come from; not reachable from every build machine.
TENSORRT_INDEX = "https://pypi.nvidia.com"


class BuildError(Exception):
    """A step of the build failed; the message says which and why."""


def progress(message: str) -> None:
    print(f"images: {message}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kwargs: object) -> str:
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True,
                          **kwargs)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise BuildError(f"{' '.join(cmd[:3])} ... failed ({proc.returncode}):\n"
                         f"{(proc.stderr or proc.stdout)[-3000:]}")
    return str(proc.stdout)


def digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def project_version() -> str:
    with open(REPO / "pyproject.toml", "rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def apt_mirror(files: Iterable[str] | None = None) -> str:
    """The Debian mirror apt is configured with (deb822 or one-line sources)."""
    if files is None:
        files = [*sorted(glob.glob("/etc/apt/sources.list.d/*")), "/etc/apt/sources.list"]
    for name in files:
        try:
            text = Path(name).read_text()
        except OSError:
            continue
        for m in re.finditer(r"^URIs:\s*(\S+)|^deb\s+(?:\[[^]]*\]\s+)?(\S+)", text, re.M):
            uri = m.group(1) or m.group(2)
            if "security" not in uri:
                return uri
    return "http://deb.debian.org/debian"


# -- the lock ------------------------------------------------------------------------------

def runtime_closure() -> dict[str, str]:
    """``pyproject.toml``'s runtime dependencies and theirs, as installed: name -> version."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    with open(REPO / "pyproject.toml", "rb") as f:
        roots = tomllib.load(f)["project"]["dependencies"]
    todo = [(Requirement(r), "") for r in roots]
    found: dict[str, str] = {}
    while todo:
        req, extra = todo.pop()
        if req.marker and not req.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(req.name)
        dist = metadata.distribution(req.name)
        first = name not in found
        found[name] = dist.version
        for extra_name in req.extras | ({""} if first else set()):
            for sub in dist.requires or []:
                todo.append((Requirement(sub), extra_name))
    return found


def write_lock() -> None:
    pins = runtime_closure()
    lines = ["# Tether's runtime dependencies for the images, pinned to the working environment.",
             "# Regenerate: python deploy/images/build.py --write-lock",
             *(f"{name}=={version}" for name, version in sorted(pins.items()))]
    LOCK.write_text("\n".join(lines) + "\n")
    progress(f"wrote {LOCK.relative_to(REPO)} ({len(pins)} packages)")


# -- the parts -----------------------------------------------------------------------------

def debian_rootfs(epoch: int, mirror: str) -> Path:
    """Step 1: Debian with python3, as a tar, built once per package set."""
    key = digest(SUITE, DEBIAN_PACKAGES, DPKG_EXCLUDES, MERGED_USR, epoch)
    out = CACHE / f"debian-{SUITE}-{key}.tar"
    if out.exists():
        progress(f"debian rootfs: cached {out.name}")
        return out
    if shutil.which("mmdebstrap") is None:
        raise BuildError("mmdebstrap is not installed (tools/install_system_deps.sh)")
    progress(f"debian rootfs: mmdebstrap {SUITE} from {mirror} ...")
    started = time.monotonic()
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial.tar")
    cmd = ["mmdebstrap", "--variant=essential", f"--hook-dir={MERGED_USR}",
           f"--include={','.join(DEBIAN_PACKAGES)}",
           *(f"--dpkgopt=path-exclude={p}" for p in DPKG_EXCLUDES),
           # the apt lists and caches are not part of the image
           "--customize-hook=rm -rf \"$1\"/var/lib/apt/lists/* \"$1\"/var/cache/apt/*"
           " \"$1\"/var/log/*",
           SUITE, str(partial), mirror]
    run(cmd, env=dict(os.environ, SOURCE_DATE_EPOCH=str(epoch)))
    partial.rename(out)
    progress(f"debian rootfs: built in {time.monotonic() - started:.0f} s")
    return out


def python_deps(lock_text: str, debian: Path) -> Path:
    """Step 2: the locked wheels in a venv, compiled by the rootfs's own Python."""
    key = digest(lock_text, debian.name)
    out = CACHE / f"venv-{key}"
    if (out / ".done").exists():
        progress(f"python dependencies: cached {out.name}")
        return out
    started = time.monotonic()
    shutil.rmtree(out, ignore_errors=True)
    site = out / "opt/tether/venv/lib" / PYTHON / "site-packages"
    site.mkdir(parents=True)
    progress("python dependencies: pip install --only-binary :all: -r requirements.lock ...")
    run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--no-deps", "--only-binary", ":all:", "--no-compile", "--target", str(site),
         "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
         "-r", str(LOCK)])
    shutil.rmtree(site / "bin", ignore_errors=True)  # console scripts with this host's paths
    progress(f"python dependencies: installed in {time.monotonic() - started:.0f} s")
    (out / ".done").write_text("")
    return out


def project_files() -> Iterator[tuple[str, Path]]:
    """(path in the image, path here) of every project file the services need."""
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*")):
            rel = path.relative_to(REPO)
            if (path.is_dir() or "__pycache__" in rel.parts or path.suffix == ".pyc"
                    or path.name == "BUILD.bazel" or rel.parts[:2] == ("worker", "models")):
                continue
            yield f"opt/tether/app/{rel}", path
    for name in ("tools/__init__.py", "tools/publish_model.py"):
        yield f"opt/tether/app/{name}", REPO / name


def generated_files(version: str) -> dict[str, tuple[bytes, int]]:
    """Small files written into the image: path -> (content, mode)."""
    site = f"opt/tether/venv/lib/{PYTHON}/site-packages"
    launcher = ("#!/opt/tether/venv/bin/python\nimport sys\nfrom app.cli import main\n"
                "sys.exit(main())\n")
    return {
        "opt/tether/venv/pyvenv.cfg": (
            b"home = /usr/bin\ninclude-system-site-packages = false\nversion = 3.11\n", 0o644),
        f"{site}/tether-app.pth": (b"/opt/tether/app\n", 0o644),
        "opt/tether/venv/bin/tether": (launcher.encode(), 0o755),
        "opt/tether/VERSION": (f"{version}\n".encode(), 0o644),
        "etc/passwd+": (f"tether:x:{USER_ID}:{USER_ID}:Tether:{DATA_DIR}:/usr/sbin/nologin\n"
                        .encode(), 0o644),
        "etc/group+": (f"tether:x:{USER_ID}:\n".encode(), 0o644),
    }


# -- the rootfs tar ------------------------------------------------------------------------

def _normal(info: tarfile.TarInfo, epoch: int) -> tarfile.TarInfo:
    info.mtime = min(int(info.mtime), epoch)
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.pax_headers = {}
    return info


def _tree(root: Path) -> Iterator[tuple[str, Path]]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            yield str(path.relative_to(root)), path


def assemble(debian: Path, deps: Path, version: str, epoch: int) -> Path:
    """Step 3: one deterministic tar of Debian + venv + project, compiled to bytecode."""
    files = list(project_files())
    key = digest(debian.name, deps.name, version, epoch,
                 hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),  # what it writes
                 [(dst, hashlib.sha256(src.read_bytes()).hexdigest()) for dst, src in files])
    out = CACHE / f"rootfs-{key}.tar"
    if out.exists():
        progress(f"rootfs: cached {out.name}")
        return out
    started = time.monotonic()
    work = CACHE / f"work-{key}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        with tarfile.open(debian) as tar:
            tar.extractall(work, filter="fully_trusted")
        shutil.copytree(deps / "opt", work / "opt", dirs_exist_ok=True, symlinks=True)
        for dst, src in files:
            (work / dst).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, work / dst)
        for dst, (content, mode) in generated_files(version).items():
            if dst.endswith("+"):
                with open(work / dst[:-1], "ab") as f:
                    f.write(content)
                continue
            (work / dst).parent.mkdir(parents=True, exist_ok=True)
            (work / dst).write_bytes(content)
            (work / dst).chmod(mode)
        python = work / "opt/tether/venv/bin/python"
        python.symlink_to("/usr/bin/python3")
        (work / DATA_DIR.lstrip("/")).mkdir(parents=True, exist_ok=True)
        os.chown(work / DATA_DIR.lstrip("/"), USER_ID, USER_ID)
        progress("rootfs: compiling bytecode with the image's python ...")
        run(["chroot", str(work), "/usr/bin/python3", "-m", "compileall", "-q", "-j", "0",
             "--invalidation-mode", "unchecked-hash", "/opt/tether"])
        partial = out.with_suffix(".partial.tar")
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
            for rel, path in _tree(work):
                info = tar.gettarinfo(str(path), arcname=rel)
                info = _normal(info, epoch)
                if rel == DATA_DIR.lstrip("/"):
                    info.uid = info.gid = USER_ID
                    info.uname = info.gname = "tether"
                if info.isreg():
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
        partial.rename(out)
        for stale in CACHE.glob("rootfs-*.tar"):  # an older tree's rootfs: 400+ MiB each
            if stale != out:
                stale.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    progress(f"rootfs: {out.stat().st_size / 2**20:.0f} MiB tar in "
             f"{time.monotonic() - started:.0f} s")
    return out


# -- the images ----------------------------------------------------------------------------

def tensorrt_reachable() -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{TENSORRT_INDEX}/tensorrt/", timeout=5):
            return True
    except OSError:
        return False


def image_id(tag: str) -> str | None:
    proc = subprocess.run(["podman", "image", "inspect", "--format", "{{.Id}}", tag],
                          check=False, capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def buildah_commit(container: str, tag: str, epoch: int) -> None:
    """Commit ``container`` as ``tag``; the image the tag named before is removed if unused."""
    before = image_id(tag)
    run(["buildah", "commit", "--quiet", "--rm", "--timestamp", str(epoch), container, tag])
    if before is not None and before != image_id(tag):
        subprocess.run(["podman", "rmi", before], check=False, capture_output=True)


def remove_other_bases(keep: str) -> None:
    """Older base images (their service images were retagged onto the new base just now)."""
    tags = run(["podman", "images", "--format", "{{.Repository}}:{{.Tag}}",
                "--filter", "reference=localhost/tether/base"]).split()
    for tag in tags:
        if tag != keep:
            subprocess.run(["podman", "rmi", tag], check=False, capture_output=True)


def base_image(rootfs: Path, version: str, epoch: int) -> str:
    tag = f"localhost/tether/base:{version}-{rootfs.stem.split('-', 1)[1]}"
    if run(["buildah", "images", "--quiet", "--filter", f"reference={tag}"]).strip():
        progress(f"base image: cached {tag}")
        return tag
    progress(f"base image: importing {rootfs.name} ...")
    ctr = run(["buildah", "from", "--quiet", "scratch"]).strip()
    run(["buildah", "add", "--quiet", ctr, str(rootfs), "/"])
    buildah_commit(ctr, tag, epoch)
    return tag


def service_image(base: str, service: str, region: str, version: str, *, epoch: int,
                  tensorrt: bool) -> str:
    command, title = SERVICES[service]
    tag = f"localhost/tether/{service}:{version}-{region}"
    ctr = run(["buildah", "from", "--quiet", base]).strip()
    trt = "absent" if service == "worker-gpu" and not tensorrt else (
        "present" if service == "worker-gpu" else "n/a")
    env = {"PATH": "/opt/tether/venv/bin:/usr/local/bin:/usr/bin:/bin",
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1",
           "TETHER_DATA_DIR": DATA_DIR, "TETHER_REGION": region,
           "TETHER_METRICS_HOST": "0.0.0.0"}
    cfg = ["buildah", "config",
           "--entrypoint", json.dumps(["/opt/tether/venv/bin/tether", *command]),
           "--cmd", "", "--user", f"{USER_ID}:{USER_ID}", "--workingdir", DATA_DIR,
           "--volume", DATA_DIR, "--stop-signal", "SIGTERM",
           "--label", f"org.opencontainers.image.title=tether/{service}",
           "--label", f"org.opencontainers.image.description={title}",
           "--label", f"org.opencontainers.image.version={version}",
           "--label", "org.opencontainers.image.licenses=Apache-2.0",
           "--label", f"org.tether.region={region}",
           "--label", f"org.tether.tensorrt={trt}"]
    for name, value in env.items():
        cfg += ["--env", f"{name}={value}"]
    if service == "worker-gpu":
        cfg += ["--env", "NVIDIA_VISIBLE_DEVICES=all",
                "--env", "NVIDIA_DRIVER_CAPABILITIES=compute,utility"]
    run([*cfg, ctr])
    buildah_commit(ctr, tag, epoch)
    return tag


def image_size(tag: str) -> int:
    out = run(["podman", "image", "inspect", "--format", "{{.Size}}", tag])
    return int(out.strip())


def build(regions: Iterable[str], services: Iterable[str], epoch: int,
          mirror: str) -> dict[str, object]:
    started = time.monotonic()
    version = project_version()
    for tool in ("buildah", "podman"):
        if shutil.which(tool) is None:
            raise BuildError(f"{tool} is not installed (tools/install_system_deps.sh)")
    lock_text = LOCK.read_text()
    debian = debian_rootfs(epoch, mirror)
    deps = python_deps(lock_text, debian)
    rootfs = assemble(debian, deps, version, epoch)
    base = base_image(rootfs, version, epoch)
    services = list(services)
    tensorrt = "worker-gpu" in services and tensorrt_reachable()
    if "worker-gpu" in services and not tensorrt:
        progress(f"worker-gpu: NVIDIA's TensorRT packages ({TENSORRT_INDEX}) are not reachable; "
                 "building it without the TensorRT layer (ONNX Runtime, CPU provider)")
    elif tensorrt:
        progress("worker-gpu: TensorRT is reachable but its layer is not built yet; "
                 "building it without (ONNX Runtime, CPU provider)")
        tensorrt = False
    sizes: dict[str, int] = {}
    for region in regions:
        for service in services:
            tag = service_image(base, service, region, version, epoch=epoch,
                                tensorrt=tensorrt)
            sizes[tag] = image_size(tag)
            progress(f"{tag}: {sizes[tag] / 2**20:.0f} MiB")
    remove_other_bases(base)
    return {"version": version, "base": base,
            "rootfs_tar_mib": round(rootfs.stat().st_size / 2**20),
            "images_mib": {t: round(s / 2**20) for t, s in sizes.items()},
            "seconds": round(time.monotonic() - started, 1), "tensorrt": tensorrt}


REGION = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--region", action="append", default=[],
                   help="a region to tag images for (repeatable; default "
                   f"{', '.join(DEFAULT_REGIONS)})")
    p.add_argument("--service", action="append", default=[], choices=sorted(SERVICES),
                   help="build only these services (repeatable; default all)")
    p.add_argument("--mirror", default=None, help="Debian mirror (default: apt's)")
    p.add_argument("--write-lock", action="store_true",
                   help="regenerate requirements.lock from the working environment and stop")
    args = p.parse_args(argv)
    if args.write_lock:
        write_lock()
        return 0
    regions = args.region or list(DEFAULT_REGIONS)
    for region in regions:
        if not REGION.fullmatch(region):
            p.error(f"region {region!r} is not lowercase words joined by dashes")
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", DEFAULT_EPOCH))
    try:
        report = build(regions, args.service or list(SERVICES), epoch, args.mirror or apt_mirror())
    except BuildError as exc:
        print(f"images: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
