"""The README's "Running across machines", followed literally: its commands, read from the
README itself, run on separate hosts of the network lab (a DHT host, a registry+orchestrator
host, a gateway host, a worker host and a client host), each in its own folder with its own
``var/tether``, so keys travel only through ``--allow-caller`` and values typed between hosts
(the gateway's key, the token). Every host runs the README's firewall: inbound UDP only to
the ports its commands listen on (none on the client). A prompt streams back across them all,
and again to a client behind a NAT."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.lab_env import ROOT, netlab

pytestmark = [pytest.mark.lab, pytest.mark.slow]

SECTION = "## Running across machines"
READY_TIMEOUT_S = 180.0
#: What each host's folder shares with the repository (its "clone"); ``var/`` is its own.
CLONE = (".venv", "tools", "worker")


@dataclass
class Step:
    host: str
    command: str
    #: ``NAME=$(...)``: the variable that takes the command's output.
    capture: str | None = None
    background: bool = False


def readme_steps(text: str) -> list[Step]:
    """The section's shell block as steps: ``# on HOST`` comments say where, ``\\`` joins
    lines, ``&`` starts a service, ``NAME=$(cmd)`` keeps what ``cmd`` prints."""
    section = text.split(SECTION, 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    steps: list[Step] = []
    host = ""
    for raw in block.replace("\\\n", " ").splitlines():
        line = " ".join(raw.split())
        if not line:
            continue
        if line.startswith("#"):
            m = re.match(r"# on (\w+)", line)
            assert m, f"a comment that names no host: {line!r}"
            host = m.group(1)
            continue
        assert host, f"a command before any '# on HOST': {line!r}"
        m = re.fullmatch(r"(\w+)=\$\((.*)\)", line)
        if m:
            steps.append(Step(host, m.group(2), capture=m.group(1)))
        elif line.endswith("&"):
            steps.append(Step(host, line[:-1].strip(), background=True))
        else:
            steps.append(Step(host, line))
    return steps


def open_ports(steps: list[Step], host: str) -> list[int]:
    """The firewall rule of the README: a host opens the ports its services listen on."""
    return [int(port) for s in steps if s.host == host and s.background
            for port in re.findall(r"--(?:udp-)?port (\d+)", s.command)]


@pytest.fixture
def hosts(lab: netlab.Lab, tmp_path: Path) -> dict[str, netlab.Host]:
    names = ("dht", "registry", "gateway", "worker", "client")
    made = {name: lab.add_host(name) for name in names}
    for name in names:
        folder = tmp_path / name
        folder.mkdir()
        for entry in CLONE:
            (folder / entry).symlink_to(ROOT / entry)
    return made


def start_s3(lab: netlab.Lab, host: netlab.Host) -> str:
    """An S3-compatible server (moto's, as in the model-plane tests) on ``host``."""
    proc = lab.python(host, ["-m", "moto.server", "-H", host.address, "-p", "9000"],
                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    netlab.read_line(proc, READY_TIMEOUT_S, stream="stderr", want="Running on")
    return f"lab:lab-secret@{host.address}:9000"


@pytest.mark.timeout(400)
def test_readme_running_across_machines(lab: netlab.Lab, hosts: dict[str, netlab.Host],
                                        tmp_path: Path) -> None:
    steps = readme_steps((ROOT / "README.md").read_text())
    assert {s.host for s in steps} == set(hosts)
    for name, host in hosts.items():
        lab.firewall(host, open_udp=open_ports(steps, name))
    assert open_ports(steps, "dht") == [49737, 49738, 49739]
    assert open_ports(steps, "client") == []
    env = {**os.environ, "S3": start_s3(lab, hosts["registry"])}
    env.update({name.upper(): host.address for name, host in hosts.items()})
    logs = tmp_path / "logs"
    logs.mkdir()
    outputs: list[subprocess.CompletedProcess[str]] = []
    try:
        for i, step in enumerate(steps):
            host, cwd = hosts[step.host], tmp_path / step.host
            if step.background:
                with open(logs / f"{i:02d}-{step.host}.log", "w") as log:
                    proc = lab.run(host, ["bash", "-c", f"exec {step.command}"], cwd=cwd,
                                   env=env, stdout=subprocess.PIPE, stderr=log, text=True)
                netlab.read_line(proc, READY_TIMEOUT_S)
                continue
            done = subprocess.run(
                host.argv(["bash", "-c", step.command]), cwd=cwd,
                env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                timeout=READY_TIMEOUT_S, check=False,
            )
            assert done.returncode == 0, f"{step}: {done.stderr[-3000:]}"
            outputs.append(done)
            if step.capture:
                env[step.capture] = done.stdout.strip()
    except BaseException:
        for log_file in sorted(logs.iterdir()):
            print(f"--- {log_file.name}\n{log_file.read_text()[-3000:]}", file=sys.stderr)
        raise
    # every host has its own data folder and keys
    assert (tmp_path / "gateway" / "var" / "tether" / "keys" / "gateway.pub").is_file()
    assert not (tmp_path / "worker" / "var" / "tether" / "keys" / "gateway.pub").exists()
    assert shlex.split(steps[-1].command)[1] == "infer"
    check_answer(outputs[-1])
    # "A NAT in the way works for clients only": the same prompt from behind a NAT
    laptop = lab.add_host("laptop", behind=lab.add_nat("home", "consistent"))
    lab.firewall(laptop)
    behind_nat = subprocess.run(
        laptop.argv(["bash", "-c", steps[-1].command]), cwd=tmp_path / "client",
        env={**env, "CLIENT": laptop.address, "PYTHONPATH": str(ROOT)}, capture_output=True,
        text=True, timeout=READY_TIMEOUT_S, check=False,
    )
    check_answer(behind_nat)


def check_answer(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("In the beginning"), done
    # The README's command samples: the model may end its answer after a word or two.
    assert len(done.stdout.split()) > 3, done.stdout
    assert "tokens from kjv-textgen" in done.stderr
