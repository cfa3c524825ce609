"""deploy/prometheus/: the rules pass ``promtool check rules`` and their unit tests
(``promtool test rules``); and a real Prometheus server, started here on 127.0.0.1,
scrapes a running ``tether up --metrics``, evaluates the rules and answers a recorded SLI.

``promtool`` and ``prometheus`` come from Debian's ``prometheus`` package
(``tools/install_system_deps.sh`` installs it).
"""

from __future__ import annotations

import json
import math
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.ops.test_grafana import panel_queries

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus"
SERVICES = ("registry", "orchestrator", "gateway", "worker")


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: install Debian's prometheus package " \
                 "(tools/install_system_deps.sh)"
    return path


def test_rules_pass_promtool_check_and_their_unit_tests() -> None:
    promtool = tool("promtool")
    for argv in (["check", "rules", "tether-rules.yml"],
                 ["test", "rules", "tether-rules.test.yml"],
                 ["check", "config", "prometheus.yml"]):
        done = subprocess.run([promtool, *argv], cwd=RULES, capture_output=True, text=True,
                              timeout=120, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "SUCCESS" in done.stdout


def free_ports(count: int) -> int:
    """A base port with ``count`` consecutive free ports above it (checked, not held)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        if base + count > 65535:
            continue
        try:
            for port in range(base, base + count):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no {count} consecutive free ports")


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    """The first stdout line of ``proc`` as JSON, within ``timeout`` seconds."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        assert left > 0, "tether up printed no ready line in time"
        readable, _, _ = select.select([proc.stdout], [], [], left)
        if readable:
            chunk = os.read(proc.stdout.fileno(), 4096)
            assert chunk, f"tether up exited ({proc.poll()}) before it was ready"
            buf += chunk
    return dict(json.loads(buf.split(b"\n", 1)[0]))


def get(url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None,
        ) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            status, body = reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except urllib.error.URLError:  # (not listening yet)
        return 0, None
    try:
        return status, json.loads(body)
    except json.JSONDecodeError:
        return status, body.decode()


def wait_for(what: str, check: Any, timeout: float = 60.0, every: float = 0.5) -> Any:
    """``check()`` until it returns something true, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"no {what} within {timeout:g} s (last: {got!r})"
        time.sleep(every)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGINT) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)
        raise


@pytest.fixture(scope="module")
def tether_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """``tether up`` with TETHER_METRICS_PORT set (it used to crash: every child bound
    the same port); its ready line."""
    base = free_ports(len(SERVICES))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TETHER_METRICS_PORT": str(base)}
    data_dir = tmp_path_factory.mktemp("tether")
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "up", "--data-dir", str(data_dir)],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        ready = read_line(proc, timeout=240)
        ready["base"] = base
        yield ready
    finally:
        code = stop(proc)
        assert proc.stderr is not None and proc.stdout is not None
        err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
        proc.stdout.close()
        assert code == 0, err[-4000:]
        assert "Traceback" not in err, err[-4000:]


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_tether_up_metrics_ports_probes_and_bounded_labels(tether_up: dict[str, Any]) -> None:
    base = tether_up["base"]
    assert tether_up["metrics"] == {
        name: f"http://127.0.0.1:{base + i}" for i, name in enumerate(SERVICES)}
    for url in tether_up["metrics"].values():
        assert get(url + "/healthz") == (200, {"status": "ok"})
        wait_for(f"{url}/readyz", lambda url=url: get(url + "/readyz")[0] == 200)
    http = tether_up["http"]
    wait_for("the gateway's /readyz", lambda: get(http + "/readyz")[0] == 200)
    ask = {"model": "kjv-textgen", "prompt": "In the beginning", "max_tokens": 3}
    status, answer = get(http + "/v1/completions", data=json.dumps(ask).encode(), headers={
        "authorization": f"Bearer {tether_up['token']}", "content-type": "application/json"})
    assert status == 200, answer
    made_up = {**ask, "model": "made-up-model-1234"}
    for headers in ({}, {"authorization": f"Bearer {tether_up['token']}"}):
        status, _ = get(http + "/v1/completions", data=json.dumps(made_up).encode(),
                        headers=headers)
        assert status in (401, 404)
    _, metrics = get(tether_up["metrics"]["gateway"] + "/metrics")
    requests = [line for line in metrics.splitlines() if line.startswith("tether_requests_total")]
    assert any('model="kjv-textgen"' in line and 'code="OK"' in line for line in requests)
    assert any('model="other"' in line and 'code="UNAUTHENTICATED"' in line for line in requests)
    assert any('model="other"' in line and 'code="NOT_FOUND"' in line for line in requests)
    assert "made-up-model" not in metrics

    # The gateway's gRPC edge answers the stock health client.
    with grpc.insecure_channel(tether_up["grpc"]) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ("", "tether.v1.Gateway"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_real_prometheus_scrapes_tether_and_records_the_slis(
    tether_up: dict[str, Any], tmp_path: Path
) -> None:
    prometheus = tool("prometheus")
    targets = [url.removeprefix("http://") for url in tether_up["metrics"].values()]
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({  # (JSON is YAML)
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES / "tether-rules.yml")],
        "scrape_configs": [{"job_name": "tether", "static_configs": [{"targets": targets}]}],
    }))
    port = free_ports(1)
    server = subprocess.Popen(
        [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    api = f"http://127.0.0.1:{port}/api/v1"

    def query(expr: str) -> list[dict[str, Any]]:
        status, body = get(f"{api}/query?" + urllib.parse.urlencode({"query": expr}))
        return list(body["data"]["result"]) if status == 200 else []

    try:
        wait_for("Prometheus", lambda: get(f"http://127.0.0.1:{port}/-/ready")[0] == 200
                 if server.poll() is None else pytest.fail("prometheus exited"))
        wait_for("every target scraped", lambda: len(query("up == 1")) == len(targets))
        ask = json.dumps({"model": "kjv-textgen", "prompt": "And God said", "max_tokens": 2})
        headers = {"authorization": f"Bearer {tether_up['token']}"}
        for _ in range(3):  # traffic between scrapes: the counters grow within the windows
            assert get(tether_up["http"] + "/v1/completions", data=ask.encode(),
                       headers=headers)[0] == 200
            time.sleep(1.5)

        def value(expr: str) -> float | None:
            """The one recorded sample of ``expr``, once it is a number."""
            found = query(expr)
            number = float(found[0]["value"][1]) if len(found) == 1 else math.nan
            return None if math.isnan(number) else number

        success = wait_for("a recorded success ratio", lambda: value(
            'tether:request_success:ratio_rate5m{service="gateway", model="kjv-textgen"}'))
        assert 0 < success <= 1
        errors = wait_for("a recorded error ratio", lambda: value(
            'tether:request_errors:ratio_rate1h{service="gateway"}') is not None)
        assert errors
        assert value('tether:request_errors:ratio_rate1h{service="gateway"}') == 0.0
        latency = wait_for("a latency quantile", lambda: value(
            'tether:request_duration_ms:p95_5m{service="gateway", model="kjv-textgen"}'))
        assert latency > 0
        # Every query of the Grafana dashboard runs, and finds its series.
        for expr in panel_queries():
            assert wait_for(f"an answer to {expr}", lambda expr=expr: query(expr)), expr
    finally:
        stop(server, signal.SIGTERM)
        assert server.stderr is not None
        server.stderr.close()
