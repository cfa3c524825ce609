"""`tether up --metrics` and the metrics flags, without starting a network: each service's
port, the environment children never inherit, and a clear exit (not a traceback) when a
metrics port is taken."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from app import cli, localnet

ROOT = Path(__file__).resolve().parents[2]


def test_each_service_gets_its_own_port_from_the_base() -> None:
    metrics = localnet.Metrics("0.0.0.0", 9400)
    ports = [metrics.flags(name)[-1] for name in localnet.SERVICES]
    assert ports == ["9400", "9401", "9402", "9403"]
    assert metrics.flags("gateway")[:2] == ["--metrics-host", "0.0.0.0"]
    assert localnet.Metrics().flags("worker") == ["--metrics-host", "127.0.0.1",
                                                  "--metrics-port", "0"]


def test_tether_metrics_port_turns_metrics_on_for_up_and_is_not_inherited(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TETHER_METRICS_PORT", "9500")
    monkeypatch.setenv("TETHER_METRICS_HOST", "127.0.0.2")
    args = cli.build_parser().parse_args(["up"])
    assert (args.metrics, args.metrics_port, args.metrics_host) == (True, 9500, "127.0.0.2")
    env = localnet._env()
    assert "TETHER_METRICS_PORT" not in env and "TETHER_METRICS_HOST" not in env
    monkeypatch.delenv("TETHER_METRICS_PORT")
    args = cli.build_parser().parse_args(["up"])
    assert (args.metrics, args.metrics_port) == (False, 0)
    assert cli.build_parser().parse_args(["up", "--metrics"]).metrics


def test_a_taken_metrics_port_is_a_clear_exit(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "registry.main", "--bootstrap", "127.0.0.1:9",
             "--data-dir", str(tmp_path), "--metrics-port", str(port)],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
            text=True, timeout=120, check=False,
        )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert f"registry: cannot serve metrics on 127.0.0.1:{port}" in done.stderr
    assert "tether up --metrics" in done.stderr
