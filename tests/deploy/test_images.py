"""The OCI images run a whole region: ``deploy/images/build.py`` builds them (the Debian rootfs
and the wheels are cached under ``var/images/`` across runs), ``podman-compose`` (the PyPI
package, a dev dependency) starts ``deploy/compose/region.yaml`` from them as it is, and a
completion goes through the gateway's HTTP edge to the KJV model on the worker.

Podman runs with ``runc`` and ``default_ulimits = []`` from a ``containers.conf`` of the test's
own (``CONTAINERS_CONF``), which this kernel needs; the region gets free ports and a project
(and so a data volume) of its own, removed afterwards.

A machine without podman, buildah, mmdebstrap or runc, or not root (mmdebstrap, chroot), fails
this test, unless ``TETHER_ALLOW_NO_IMAGES=1`` says to skip it."""

from __future__ import annotations

import json
import os
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

pytestmark = [pytest.mark.images, pytest.mark.slow, pytest.mark.timeout(1500)]

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "deploy" / "compose" / "region.yaml"
REGION = "us-east"
ANSWER_TIMEOUT_S = 180.0
CONTAINERS_CONF = '[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\n'


def require_image_tools() -> None:
    """Return if images can be built and run here; else fail, saying why (or skip under
    ``TETHER_ALLOW_NO_IMAGES=1``)."""
    missing = [t for t in ("podman", "buildah", "mmdebstrap", "runc") if shutil.which(t) is None]
    if not missing and os.geteuid() == 0:
        return
    why = f"missing {', '.join(missing)}" if missing else "not root"
    if os.environ.get("TETHER_ALLOW_NO_IMAGES") == "1":
        pytest.skip(f"images: {why} (TETHER_ALLOW_NO_IMAGES=1)")
    pytest.fail(f"the image test needs podman, buildah, mmdebstrap and runc as root: {why} "
                "(tools/install_system_deps.sh; TETHER_ALLOW_NO_IMAGES=1 skips it)")


@pytest.mark.parametrize("allow", ["", "1"])
def test_a_machine_without_podman_fails_clearly_unless_allowed(
        allow: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "podman" else "/bin/x")
    monkeypatch.setenv("TETHER_ALLOW_NO_IMAGES", allow)
    outcome = pytest.skip.Exception if allow else pytest.fail.Exception
    with pytest.raises(outcome, match="missing podman"):
        require_image_tools()


@pytest.fixture(scope="module")
def podman_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    require_image_tools()
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    return dict(os.environ, CONTAINERS_CONF=str(conf))


@pytest.fixture(scope="module")
def images(podman_env: dict[str, str]) -> dict[str, Any]:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "images" / "build.py"), "--region", REGION],
        check=False, env=dict(podman_env, PYTHONPATH=str(REPO)), capture_output=True,
        text=True, timeout=1200)
    sys.stderr.write(proc.stderr)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"image build: {time.monotonic() - started:.0f} s, sizes (MiB) {report['images_mib']}")
    return report


def _podman(env: dict[str, str], *args: str,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], check=False, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _podman_compose() -> str:
    """The podman-compose of this Python environment (Debian's 1.0.3 mishandles host networking)."""
    here = Path(sys.executable).parent / "podman-compose"
    found = str(here) if here.exists() else shutil.which("podman-compose")
    if found is None:
        pytest.fail("podman-compose is not installed (the dev extra of pyproject.toml)")
    return found


class Region:
    """``deploy/compose/region.yaml`` up as its own compose project (``down`` by :meth:`close`)."""

    def __init__(self, env: dict[str, str], values: dict[str, str]) -> None:
        self.project = f"tether-test-{uuid.uuid4().hex[:8]}"
        self.env = dict(env, **values)
        self.volume = f"{self.project}_tether-data"
        self.compose = [_podman_compose(), "-p", self.project, "-f", str(COMPOSE)]

    def up(self) -> None:
        proc = subprocess.run([*self.compose, "up", "-d"], check=False, env=self.env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"podman-compose up: {proc.stderr[-3000:]}"

    def run_once(self, image: str, *args: str) -> str:
        proc = _podman(self.env, "run", "--rm", "--network", "host", "-v",
                       f"{self.volume}:/var/lib/tether", "--entrypoint", "tether", image, *args)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout

    def logs(self) -> str:
        names = _podman(self.env, "ps", "-a", "--format", "{{.Names}}", "--filter",
                        f"label=io.podman.compose.project={self.project}").stdout.split()
        return "\n".join(f"--- {n}\n{_podman(self.env, 'logs', n).stderr[-2000:]}" for n in names)

    def close(self) -> None:
        subprocess.run([*self.compose, "down", "-v", "-t", "10"], check=False, env=self.env,
                       capture_output=True, timeout=300)


@pytest.fixture
def region(podman_env: dict[str, str], images: dict[str, Any]) -> Iterator[tuple[Region, int]]:
    http_port = _free_port(socket.SOCK_STREAM)
    values = {
        "TETHER_VERSION": images["version"], "TETHER_REGION": REGION,
        "TETHER_DHT_PORT": str(_free_port(socket.SOCK_DGRAM)),
        "TETHER_HTTP_PORT": str(http_port),
        "TETHER_GRPC_PORT": str(_free_port(socket.SOCK_STREAM)),
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
        reg.up()
        gateway = f"localhost/tether/gateway:{images['version']}-{REGION}"
        token = reg.run_once(gateway, "token", "--tenant", "acme").strip()
        base = f"http://127.0.0.1:{http_port}"
        body = {"model": "kjv-textgen", "prompt": "In the beginning", "max_tokens": 8,
                "temperature": 0}
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        status: int = 0
        answer: dict[str, Any] = {}
        while time.monotonic() < deadline:  # until the gateway listens and a worker is placed
            try:
                status, answer = _post(f"{base}/v1/completions", body, token)
            except (urllib.error.URLError, ConnectionError):
                status, answer = 0, {}
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
    proc = _podman(podman_env, "run", "--rm", "--network", "none", "--entrypoint", "sh",
                   "-e", "TETHER_REGION=eu-west",
                   tag, "-c", "id -u; echo $TETHER_REGION; command -v gcc cc pip apt-get || true")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["10001", "eu-west"], proc.stdout  # no compilers, pip or apt
    gpu = json.loads(_podman(podman_env, "image", "inspect",
                             f"localhost/tether/worker-gpu:{images['version']}-{REGION}").stdout)
    assert gpu[0]["Config"]["Labels"]["org.tether.tensorrt"] in ("absent", "present")
