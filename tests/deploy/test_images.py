"""The OCI images run a whole region: ``deploy/images/build.py`` builds them (the Debian rootfs
and the wheels are cached under ``var/images/`` across runs), then the services of
``deploy/compose/region.yaml`` start from them with podman, and a completion goes through the
gateway's HTTP edge to the KJV model on the worker.

podman-compose is not needed: the test reads the compose file and starts each service itself
with ``podman run`` in ``depends_on`` order (host network, the named volume, the environment
with the file's ``${VAR:-default}`` values filled in), waiting for each service's first line of
output (its ready line) before the next. Podman runs with ``runc`` and ``default_ulimits = []``
from a ``containers.conf`` of the test's own (``CONTAINERS_CONF``), which this kernel needs.

A machine without podman, buildah or mmdebstrap fails this test, unless
``TETHER_ALLOW_NO_IMAGES=1`` says to skip it. Needs root (mmdebstrap, chroot)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = [pytest.mark.images, pytest.mark.slow, pytest.mark.timeout(1500)]

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "deploy" / "compose" / "region.yaml"
REGION = "us-east"
READY_TIMEOUT_S = 120.0
ANSWER_TIMEOUT_S = 120.0
CONTAINERS_CONF = '[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\n'


def _missing_tools() -> list[str]:
    return [t for t in ("podman", "buildah", "mmdebstrap", "runc") if shutil.which(t) is None]


@pytest.fixture(scope="module")
def podman_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    missing = _missing_tools()
    if missing or os.geteuid() != 0:
        why = f"missing {', '.join(missing)}" if missing else "not root"
        if os.environ.get("TETHER_ALLOW_NO_IMAGES") == "1":
            pytest.skip(f"images: {why} (TETHER_ALLOW_NO_IMAGES=1)")
        pytest.fail(f"the image test needs podman, buildah, mmdebstrap and runc as root: {why} "
                    "(tools/install_system_deps.sh; TETHER_ALLOW_NO_IMAGES=1 skips it)")
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    return dict(os.environ, CONTAINERS_CONF=str(conf))


@pytest.fixture(scope="module")
def images(podman_env: dict[str, str]) -> dict[str, Any]:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "images" / "build.py"), "--region", REGION],
        env=dict(podman_env, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=1200)
    sys.stderr.write(proc.stderr)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"image build: {time.monotonic() - started:.0f} s, sizes (MiB) {report['images_mib']}")
    return report


def _podman(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """The compose file's ``${NAME}`` and ``${NAME:-default}`` in ``value``, filled in."""
    if isinstance(value, str):
        return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}",
                      lambda m: env.get(m.group(1)) or (m.group(2) or ""), value)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


def start_order(services: dict[str, Any]) -> list[str]:
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...] = ()) -> None:
        assert name not in path, f"depends_on cycle: {path}"
        for dep in services[name].get("depends_on", {}):
            visit(dep, (*path, name))
        if name not in order:
            order.append(name)

    for name in services:
        visit(name)
    return order


class Region:
    """The compose file's services as podman containers (removed by :meth:`close`)."""

    def __init__(self, env: dict[str, str], values: dict[str, str]) -> None:
        self.env = env
        self.suffix = uuid.uuid4().hex[:8]
        self.volume = f"tether-test-data-{self.suffix}"
        spec = interpolate(yaml.safe_load(COMPOSE.read_text()), values)
        self.services: dict[str, Any] = spec["services"]
        self.containers: list[str] = []

    def run_args(self, name: str) -> list[str]:
        svc = self.services[name]
        assert svc["network_mode"] == "host"
        args = ["--network", "host", "--name", f"tether-test-{name}-{self.suffix}"]
        for mount in svc.get("volumes", []):
            source, target, *mode = mount.split(":")
            if source == "tether-data":
                source = self.volume
            else:
                source = str((COMPOSE.parent / source).resolve())
            args += ["-v", ":".join([source, target, *mode])]
        for key, value in svc.get("environment", {}).items():
            args += ["-e", f"{key}={value}"]
        if "entrypoint" in svc:
            args += ["--entrypoint", json.dumps(svc["entrypoint"])]
        return [*args, svc["image"], *svc.get("command", [])]

    def start(self) -> None:
        for name in start_order(self.services):
            conditions = [d.get("condition") for s in self.services.values()
                          for dep, d in s.get("depends_on", {}).items() if dep == name]
            if "service_completed_successfully" in conditions:
                proc = _podman(self.env, "run", "--rm", *self.run_args(name), timeout=300)
                assert proc.returncode == 0, f"{name}: {proc.stderr[-2000:]}"
                continue
            container = f"tether-test-{name}-{self.suffix}"
            proc = _podman(self.env, "run", "-d", *self.run_args(name))
            assert proc.returncode == 0, f"{name}: {proc.stderr[-2000:]}"
            self.containers.append(container)
            self.wait_ready(name, container)

    def wait_ready(self, name: str, container: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            out = _podman(self.env, "logs", container)
            if out.stdout.strip():
                return
            state = _podman(self.env, "inspect", "--format", "{{.State.Running}}", container)
            assert state.stdout.strip() == "true", f"{name} stopped:\n{out.stderr[-3000:]}"
            time.sleep(0.5)
        pytest.fail(f"{name} printed no ready line in {READY_TIMEOUT_S:.0f} s:\n"
                    f"{_podman(self.env, 'logs', container).stderr[-3000:]}")

    def run_once(self, image_of: str, *args: str) -> str:
        svc = self.services[image_of]
        proc = _podman(self.env, "run", "--rm", "--network", "host", "-v",
                       f"{self.volume}:/var/lib/tether", "--entrypoint", "tether",
                       svc["image"], *args)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout

    def logs(self) -> str:
        return "\n".join(f"--- {c}\n{_podman(self.env, 'logs', c).stderr[-2000:]}"
                         for c in self.containers)

    def close(self) -> None:
        for container in reversed(self.containers):
            _podman(self.env, "rm", "--force", "--time", "10", container)
        _podman(self.env, "volume", "rm", "--force", self.volume)


@pytest.fixture
def region(podman_env: dict[str, str], images: dict[str, Any]) -> Iterator[tuple[Region, int]]:
    http_port = _free_port(socket.SOCK_STREAM)
    values = {
        "TETHER_VERSION": images["version"], "TETHER_REGION": REGION,
        "TETHER_DHT_PORT": str(_free_port(socket.SOCK_DGRAM)),
        "TETHER_HTTP_PORT": str(http_port), "TETHER_GRPC_PORT": str(_free_port(socket.SOCK_STREAM)),
        **{f"TETHER_{s}_METRICS_PORT": str(_free_port(socket.SOCK_STREAM))
           for s in ("REGISTRY", "ORCHESTRATOR", "GATEWAY", "WORKER")},
    }
    reg = Region(podman_env, values)
    try:
        yield reg, http_port
    finally:
        reg.close()


def _post(url: str, body: dict[str, Any], token: str) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"authorization": f"Bearer {token}",
                                          "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_a_region_from_the_images_answers_through_the_gateway(
        region: tuple[Region, int], images: dict[str, Any]) -> None:
    reg, http_port = region
    for tag, mib in images["images_mib"].items():
        assert mib < 1024, f"{tag} is {mib} MiB"
    try:
        reg.start()
        token = reg.run_once("gateway", "token", "--tenant", "acme").strip()
        base = f"http://127.0.0.1:{http_port}"
        body = {"model": "kjv-textgen", "prompt": "In the beginning", "max_tokens": 8,
                "temperature": 0}
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        status, answer = 0, {}
        while time.monotonic() < deadline:  # until the worker's presence reaches the orchestrator
            status, answer = _post(f"{base}/v1/completions", body, token)
            if status == 200:
                break
            time.sleep(1)
        assert status == 200, f"{status} {answer}\n{reg.logs()}"
        text = answer["choices"][0]["text"]
        assert isinstance(text, str) and text.strip(), answer
        assert answer["usage"]["completion_tokens"] > 0
        with urllib.request.urlopen(f"{base}/readyz", timeout=10) as resp:
            assert resp.status == 200
    except BaseException:
        sys.stderr.write(reg.logs())
        raise


def test_images_run_as_a_non_root_user_with_the_region_baked_in(
        podman_env: dict[str, str], images: dict[str, Any]) -> None:
    tag = f"localhost/tether/gateway:{images['version']}-{REGION}"
    config = json.loads(_podman(podman_env, "image", "inspect", tag).stdout)[0]["Config"]
    assert config["User"] == "10001:10001"
    assert "/var/lib/tether" in config["Volumes"]
    assert f"TETHER_REGION={REGION}" in config["Env"]
    proc = _podman(podman_env, "run", "--rm", "--entrypoint", "sh", "-e", "TETHER_REGION=eu-west",
                   tag, "-c", "id -u; echo $TETHER_REGION; command -v gcc cc pip apt-get || true")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["10001", "eu-west"], proc.stdout  # no compilers, pip or apt
    gpu = json.loads(_podman(podman_env, "image", "inspect",
                             f"localhost/tether/worker-gpu:{images['version']}-{REGION}").stdout)
    assert gpu[0]["Config"]["Labels"]["org.tether.tensorrt"] in ("absent", "present")
