"""Invalid configuration is refused with one clear line and exit status 2, by every
service and by ``tether up`` (which checks everything before it publishes anything).

The checks are unit-tested on each service's ``configure``; a few cases run the real
processes to see the one line and the status.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app import localnet
from gateway import main as gateway_main
from orchestrator import main as orchestrator_main
from registry import main as registry_main
from tether import process
from worker import main as worker_main

REPO = Path(__file__).resolve().parents[2]
CONFIGURE: dict[str, Callable[[list[str]], Any]] = {
    "gateway": gateway_main.configure,
    "orchestrator": orchestrator_main.configure,
    "registry": registry_main.configure,
    "worker": worker_main.configure,
}


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("TETHER_"):
            monkeypatch.delenv(name)


def base(tmp_path: Path) -> list[str]:
    return ["--bootstrap", "127.0.0.1:1", "--data-dir", str(tmp_path / "data")]


@pytest.mark.parametrize("service", sorted(CONFIGURE))
def test_every_service_refuses_a_bad_region_log_level_and_data_dir(
    service: str, tmp_path: Path
) -> None:
    configure = CONFIGURE[service]
    configure(base(tmp_path))  # the defaults are fine
    assert not (tmp_path / "data").exists()  # checked, not made: the service makes it
    (tmp_path / "data").mkdir()
    cases = {
        "--region": [*base(tmp_path), "--region", "EU_West"],
        "log level 'loud'": [*base(tmp_path), "--log-level", "loud"],
        "is not a directory": [*base(tmp_path)[:3], str(tmp_path / "data" / "file")],
        "is not a writable directory": [*base(tmp_path)[:3],
                                        str(tmp_path / "data" / "file" / "below")],
    }
    (tmp_path / "data" / "file").write_text("not a folder")
    for words, argv in cases.items():
        with pytest.raises(process.ConfigError) as info:
            configure(argv)
        assert words in info.value.message, (words, info.value.message)
        assert "\n" not in info.value.message and info.value.code == 2


def test_an_unwritable_data_dir_is_refused(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        (locked / "probe").touch()
    except OSError:
        pass
    else:  # root writes anywhere: use a read-only file system instead
        locked = Path("/sys")
        if not locked.is_dir() or _writable(locked):
            pytest.skip("no unwritable directory available here")
    with pytest.raises(process.ConfigError, match="is not a writable directory"):
        process.data_dir_from(str(locked))


def _writable(folder: Path) -> bool:
    try:
        (folder / ".tether-probe").touch()
    except OSError:
        return False
    (folder / ".tether-probe").unlink()
    return True


@pytest.mark.parametrize(
    ("service", "variable", "value"),
    [
        ("worker", "TETHER_SLOTS", "two"),
        ("worker", "TETHER_SLOTS", "0"),
        ("worker", "TETHER_CACHE_MB", "0"),
        ("worker", "TETHER_QUEUE_LIMIT", "-1"),
        ("gateway", "TETHER_RATE", "0"),
        ("gateway", "TETHER_RATE", "fast"),
        ("gateway", "TETHER_BURST", "0"),
        ("gateway", "TETHER_HTTP_PORT", "http"),
        ("gateway", "TETHER_GRPC_PORT", "70000"),
        ("orchestrator", "TETHER_BREAKER_FAILURES", "0"),
        ("orchestrator", "TETHER_BREAKER_OPEN_S", "nan"),
        ("orchestrator", "TETHER_SLOW_FIRST_CHUNK_S", "-1"),
        ("registry", "TETHER_METRICS_PORT", "x"),
        # Read with int() before: a traceback, not one line.
        ("gateway", "TETHER_HTTP_PER_CLIENT", "lots"),
        ("worker", "TETHER_KV_CACHE_MB", "1.5"),
    ],
)
def test_bad_numeric_environment_values_are_refused(
    service: str, variable: str, value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(process.ConfigError) as info:
        CONFIGURE[service](base(tmp_path))
    assert info.value.message.startswith(f"{variable}={value!r}: "), info.value.message


def test_the_environment_is_read_after_the_flags_and_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Flags, then the config file, then ``TETHER_*``, then the defaults: a variable is read
    (and checked) only for a setting neither of the first two gives."""
    monkeypatch.setenv("TETHER_SLOTS", "two")
    assert worker_main.configure([*base(tmp_path), "--slots", "3"]).slots == 3
    config = tmp_path / "tether.toml"
    config.write_text("[worker]\nslots = 5\n")
    assert worker_main.configure([*base(tmp_path), "--config", str(config)]).slots == 5
    monkeypatch.setenv("TETHER_SLOTS", "7")
    monkeypatch.setenv("TETHER_ARTIFACTS", "/a, /b")
    monkeypatch.setenv("TETHER_ALLOW_ANY_CALLER", "1")
    settings = worker_main.configure(base(tmp_path))
    assert (settings.slots, settings.artifacts, settings.common.allow_any_caller) == (
        7, ["/a", "/b"], True)
    assert (settings.max_batch, settings.queue_limit, settings.common.udp_port) == (
        worker_main.DEFAULT_MAX_BATCH, 16, 0)  # the defaults, typed


def test_bad_numbers_in_flags_and_config_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(process.ConfigError, match="--slots: 0 is below the minimum of 1"):
        worker_main.configure([*base(tmp_path), "--slots", "0"])
    config = tmp_path / "tether.toml"
    config.write_text("[worker]\nslots = 0\n")
    with pytest.raises(process.ConfigError, match=r"--slots: '?0'? is below"):
        worker_main.configure([*base(tmp_path), "--config", str(config)])
    config.write_text("[gateway]\nrate = -2.5\n")
    with pytest.raises(process.ConfigError, match=r"--rate: '-2\.5' is not a positive number"):
        gateway_main.configure([*base(tmp_path), "--config", str(config)])


@pytest.mark.parametrize("service", ["gateway", "orchestrator", "registry"])
def test_a_corrupt_sqlite_file_is_refused(service: str, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "metadata.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(process.ConfigError, match=r"cannot open the metadata store .*"
                       r"file is not a database"):
        CONFIGURE[service](base(tmp_path))


def run_tether(argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    environment.update(env, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", *argv], capture_output=True, text=True, timeout=120,
        cwd=REPO, env=environment, check=False,
    )


def test_a_service_process_says_one_line_and_exits_2(tmp_path: Path) -> None:
    done = run_tether(["gateway.main", *base(tmp_path), "--region", "EU_West"])
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "tether gateway: --region: invalid region 'EU_West': expected something like 'eu-west'"]
    done = run_tether(["worker.main", *base(tmp_path)], TETHER_SLOTS="two")
    assert (done.returncode, done.stderr.splitlines()) == (
        2, ["tether worker: TETHER_SLOTS='two': 'two' is not a whole number"])


def test_tether_up_checks_everything_before_publishing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    done = run_tether(["app.cli", "up", "--data-dir", str(data), "--region", "EU_West"])
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "tether up: --region: invalid region 'EU_West': expected something like 'eu-west'"]
    assert not (data / "artifacts").exists() and not (data / "metadata.db").exists()
    # A value only a service reads (the worker's slots) is checked before publishing too.
    done = run_tether(["app.cli", "up", "--data-dir", str(data)], TETHER_SLOTS="0")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "tether up: TETHER_SLOTS='0': 0 is below the minimum of 1"]
    assert not data.exists()  # checked, nothing made
    done = run_tether(["app.cli", "up", "--data-dir", str(data)], TETHER_LOG_LEVEL="loud")
    assert (done.returncode, len(done.stderr.splitlines())) == (2, 1)
    assert done.stderr.startswith("tether up: log level 'loud' is not one of DEBUG")


def test_local_network_check_covers_every_service(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_BREAKER_FAILURES", "none")
    with pytest.raises(process.ConfigError, match="TETHER_BREAKER_FAILURES"):
        localnet.check_config(tmp_path / "data", region="local")
    monkeypatch.delenv("TETHER_BREAKER_FAILURES")
    localnet.check_config(tmp_path / "data", region="local")
