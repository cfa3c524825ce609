"""Service configuration: flags over a TOML config file over environment over defaults."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import trio

from tether import process
from worker import main as worker_main


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "tether.toml"
    path.write_text(text)
    return str(path)


def test_config_file_sections_flags_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TETHER_REGION", "sa-east")
    monkeypatch.setenv("TETHER_SLOTS", "3")
    config = write(
        tmp_path,
        'region = "eu-west"\nbootstrap = "127.0.0.1:49737"\n'
        f'data-dir = "{tmp_path / "data"}"\n[worker]\nslots = 6\nmodel = ["kjv-textgen@1.0"]\n'
        "[gateway]\nrate = 1.0\n",
    )
    args = process.parse_args(worker_main.build_parser(), ["--config", config], "worker")
    assert (args.region, args.slots, args.model) == ("eu-west", 6, ["kjv-textgen@1.0"])
    cfg = process.config_from_args(args)
    assert [(b.host, b.port) for b in cfg.bootstrap] == [("127.0.0.1", 49737)]
    assert cfg.data_dir == tmp_path / "data"
    # A flag wins over the file; the environment only fills what the file leaves out.
    args = process.parse_args(
        worker_main.build_parser(), ["--config", config, "--slots", "9"], "worker"
    )
    assert args.slots == 9
    args = process.parse_args(worker_main.build_parser(), [], "worker")
    assert (args.region, args.slots) == ("sa-east", 3)


def test_bad_config_files_are_refused_with_a_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TETHER_BOOTSTRAP", raising=False)
    with pytest.raises(SystemExit, match=r"unknown settings .*: colour"):
        process.parse_args(
            worker_main.build_parser(), ["--config", write(tmp_path, 'colour = "red"\n')], "worker"
        )
    with pytest.raises(SystemExit, match="cannot read config file"):
        process.parse_args(
            worker_main.build_parser(), ["--config", write(tmp_path, "slots = = 3\n")], "worker"
        )
    with pytest.raises(SystemExit, match="no DHT bootstrap node"):
        process.config_from_args(
            process.parse_args(worker_main.build_parser(), ["--data-dir", str(tmp_path)], "worker")
        )


def test_a_bootstrap_host_name_is_resolved_to_ipv4(monkeypatch: pytest.MonkeyPatch) -> None:
    """A DHT known by name (a Kubernetes StatefulSet pod: ``tether-dht-0.tether-dht``) is
    looked up once at start; before, the name reached the DHT's IPv4 encoder and failed."""
    looked_up: list[tuple[object, ...]] = []

    def getaddrinfo(host: str, port: int, family: int, kind: int) -> list[tuple[object, ...]]:
        looked_up.append((host, port, family))
        if host == "tether-dht-0.tether-dht":
            return [(family, kind, 17, "", ("10.1.2.3", port))]
        raise OSError(-2, "Name or service not known")

    monkeypatch.setattr(process.socket, "getaddrinfo", getaddrinfo)
    addrs = process.bootstrap_from(["tether-dht-0.tether-dht:49737,127.0.0.1:49738"])
    assert [(a.host, a.port) for a in addrs] == [("10.1.2.3", 49737), ("127.0.0.1", 49738)]
    assert looked_up == [("tether-dht-0.tether-dht", 49737, process.socket.AF_INET)]
    with pytest.raises(SystemExit, match=r"--bootstrap: cannot resolve 'nowhere' to an IPv4"):
        process.bootstrap_from(["nowhere:49737"])


@pytest.mark.parametrize("signals", [1, 2])
def test_a_signal_runs_the_stop_hooks_and_a_second_one_stops_at_once(
    signals: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One SIGTERM lets a stop hook (say, an orchestrator's drain) finish; a second one
    cuts it short. (Real signals, so real time: well under a second.)"""
    ran: list[str] = []
    runtime = process.Runtime(stop_timeout_s=120)

    async def drain() -> None:
        ran.append("drain started")
        await trio.sleep(0.5 if signals == 1 else 60)
        ran.append("drain finished")

    async def body() -> None:
        runtime.on_stop(drain)
        await trio.sleep(0.05)
        for _ in range(signals):
            os.kill(os.getpid(), signal.SIGTERM)
            await trio.sleep(0.05)
        await trio.sleep_forever()

    async def main() -> None:
        with trio.fail_after(10):
            await runtime.run_until_signalled(body)

    trio.run(main)
    assert ran == (["drain started", "drain finished"] if signals == 1 else ["drain started"])


def test_udp_port_and_host_for_a_firewall(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Across machines a service binds its machine's address on a fixed UDP port (what a
    firewall opens); `tether infer --host` is where a client talks from."""
    from app import cli

    common = ["--bootstrap", "100.64.0.2:49737", "--data-dir", str(tmp_path)]
    args = process.parse_args(
        worker_main.build_parser(), [*common, "--host", "100.64.0.5", "--udp-port", "49740"],
        "worker",
    )
    cfg = process.config_from_args(args)
    assert (cfg.host, cfg.udp_port) == ("100.64.0.5", 49740)
    monkeypatch.setenv("TETHER_UDP_PORT", "49741")
    args = process.parse_args(worker_main.build_parser(), common, "worker")
    assert process.config_from_args(args).udp_port == 49741
    monkeypatch.delenv("TETHER_UDP_PORT")
    args = process.parse_args(worker_main.build_parser(), common, "worker")
    assert process.config_from_args(args).udp_port == 0
    infer = cli.build_parser().parse_args(["infer", "--host", "100.64.0.6", "--token", "t"])
    assert infer.host == "100.64.0.6"


def test_stop_hooks_belong_to_a_runtime_and_run_newest_first() -> None:
    """Each process's runtime owns its hooks (no module-wide list shared by every service
    in a process); the newest runs first, so a drain registered after its network's close
    runs while the network can still talk."""
    ran: list[str] = []
    first, second = process.Runtime(), process.Runtime()

    def hook(name: str):
        async def run() -> None:
            ran.append(name)
        return run

    first.on_stop(hook("close the network"))
    first.on_stop(hook("drain"))
    second.on_stop(hook("another process's hook"))
    trio.run(first.stop)
    assert ran == ["drain", "close the network"]
    assert not hasattr(process, "_STOP_HOOKS") and not hasattr(process, "on_stop")


def test_the_readme_lists_every_variable_each_service_reads() -> None:
    """The README's table of ``TETHER_*`` variables is the services' settings: each
    service's row set equals what its parser reads (plus the log format, read by
    ``tether.logs``), with the flag it stands for, and no source names a variable the
    table leaves out."""
    import re

    from gateway.main import build_parser as gateway
    from orchestrator.main import build_parser as orchestrator
    from registry.main import build_parser as registry
    from worker.main import build_parser as worker

    repo = Path(__file__).resolve().parents[2]
    rows = re.findall(r"^\| `(TETHER_[A-Z0-9_]+)` \| (?:`(--[a-z-]+)`)? *\| ([a-z, ]+) \|",
                      (repo / "README.md").read_text(encoding="utf-8"), re.MULTILINE)
    assert rows, "no variable table in README.md"
    parsers = {"gateway": gateway(), "orchestrator": orchestrator(), "registry": registry(),
               "worker": worker()}
    for service, parser in parsers.items():
        listed = {var for var, _, who in rows if who == "all" or service in who.split(", ")}
        assert listed == {*parser.variables(), "TETHER_LOG_FORMAT"}, service
        flags = {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings}
        for dest, setting in parser.environment.items():
            assert (setting.variable, flags[dest]) in {(v, f) for v, f, _ in rows}, dest
    sources = [repo / "tether" / "process.py", repo / "tether" / "logs.py",
               *(p for s in parsers for p in (repo / s).rglob("*.py"))]
    named = {v for p in sources for v in re.findall(r"TETHER_[A-Z0-9_]+", p.read_text())}
    assert named <= {var for var, _, _ in rows}
