"""The lab's networks behave like the networks they model: public hosts reach each other, a
host behind a NAT is seen at its router's address (on the same port behind a consistent NAT,
on random ports behind a ``fully-random`` one), a firewall drops unsolicited UDP but lets
answers in, partitions cut and heal, and the relay delays, drops and blocks."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.lab_env import ROOT, netlab

pytestmark = pytest.mark.lab

LAB_PY = str(ROOT / "tools" / "lab.py")


def echo(lab: netlab.Lab, host: netlab.Host, port: int = 7000) -> str:
    """Start a UDP echo on ``host``; its HOST:PORT."""
    proc = lab.python(host, [LAB_PY, "echo", "--host", host.address, "--port", str(port)],
                      stdout=subprocess.PIPE, text=True)
    return str(netlab.read_json_line(proc, timeout=30)["echo"])


def probe(host: netlab.Host, *targets: str, port: int = 0, tries: int = 3,
          timeout: float = 1.0) -> list[dict[str, Any]]:
    """Datagrams from one port of ``host`` to each target; one result per target."""
    out = subprocess.run(
        host.argv([sys.executable, LAB_PY, "probe", *targets, "--port", str(port),
                   "--tries", str(tries), "--timeout", str(timeout)]),
        capture_output=True, text=True, timeout=60, check=False,
    )
    results = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(results) == len(targets), out.stderr
    return results


def seen(result: dict[str, Any]) -> tuple[str, int]:
    """The source address the echo server saw."""
    assert result["answer"] is not None, result
    host, _, port = result["answer"]["seen"].rpartition(":")
    return host, int(port)


def test_public_hosts_reach_each_other_at_their_own_addresses(lab: netlab.Lab) -> None:
    a, b = lab.add_host("a"), lab.add_host("b")
    assert a.address.startswith("100.64.") and b.address.startswith("100.64.")
    [result] = probe(b, echo(lab, a), port=40000)
    assert seen(result) == (b.address, 40000)


def test_consistent_nat_shows_the_router_address_and_keeps_the_port(lab: netlab.Lab) -> None:
    a, b = lab.add_host("a"), lab.add_host("b")
    nat = lab.add_nat("home", "consistent")
    inside = lab.add_host("laptop", behind=nat)
    assert inside.address.startswith("198.18.")
    results = probe(inside, echo(lab, a), echo(lab, b), port=40000)
    # one inside socket, one outside address, whoever it talks to
    assert [seen(r) for r in results] == [(nat.router.address, 40000)] * 2
    assert inside.public_address == nat.router.address


def test_random_nat_maps_each_flow_to_a_random_port(lab: netlab.Lab) -> None:
    a, b = lab.add_host("a"), lab.add_host("b")
    nat = lab.add_nat("cgnat", "random")
    inside = lab.add_host("phone", behind=nat)
    targets = [echo(lab, a, 7000), echo(lab, a, 7001), echo(lab, b, 7000)]
    addresses = [seen(r) for r in probe(inside, *targets, port=40000)]
    assert {host for host, _ in addresses} == {nat.router.address}
    ports = {port for _, port in addresses}
    # three flows from one socket: three random ports (all equal by chance: ~1 in 4e9)
    assert len(ports) > 1, addresses


def test_firewall_drops_unsolicited_udp_and_lets_answers_in(lab: netlab.Lab) -> None:
    outside = lab.add_host("outside")
    fw = lab.add_nat("office", "firewall")
    inside = lab.add_host("desk", behind=fw)
    # a firewalled host keeps its public address (no translation) ...
    [answered] = probe(inside, echo(lab, outside), port=40000)
    assert seen(answered) == (inside.address, 40000)
    # ... but nobody outside can start a conversation with it
    [dropped] = probe(outside, echo(lab, inside), tries=2, timeout=0.5)
    assert dropped["answer"] is None and dropped["error"] == "timed out"


def test_host_firewall_opens_only_the_given_ports(lab: netlab.Lab) -> None:
    server, client = lab.add_host("server"), lab.add_host("client")
    lab.firewall(server, open_udp=[7001])
    lab.firewall(client)  # nothing open: it still gets its answers
    closed, opened = probe(client, echo(lab, server, 7000), echo(lab, server, 7001),
                           tries=2, timeout=0.5)
    assert closed["answer"] is None and opened["answer"] is not None


def test_partition_cuts_both_ways_and_heal_restores(lab: netlab.Lab) -> None:
    a, b, c = lab.add_host("a"), lab.add_host("b"), lab.add_host("c")
    nat = lab.add_nat("home", "consistent")
    inside = lab.add_host("inside", behind=nat)
    at_a, at_b = echo(lab, a), echo(lab, b)
    lab.partition(a, inside)
    cut, other = probe(inside, at_a, at_b, tries=1, timeout=0.5)
    assert cut["answer"] is None and other["answer"] is not None
    assert probe(a, echo(lab, c))[0]["answer"] is not None  # a still reaches everyone else
    lab.heal()
    assert probe(inside, at_a)[0]["answer"] is not None


def test_relay_delays_and_blocks(lab: netlab.Lab) -> None:
    server, middle, client = lab.add_host("server"), lab.add_host("middle"), lab.add_host("c")
    host, _, port = echo(lab, server).rpartition(":")
    relay = lab.add_relay(middle, (host, int(port)), delay_ms=150)
    [slow] = probe(client, f"{relay.address}:{relay.port}")
    # the echo saw the relay, and each direction waited 150 ms
    assert seen(slow)[0] == middle.address
    assert slow["rtt_ms"] >= 300, slow
    relay.set(blocked=True)
    [blocked] = probe(client, f"{relay.address}:{relay.port}", tries=2, timeout=0.5)
    assert blocked["answer"] is None
    relay.set(blocked=False, delay_ms=0)
    [fast] = probe(client, f"{relay.address}:{relay.port}")
    assert fast["answer"] is not None and fast["rtt_ms"] < 300


def test_lab_refuses_an_unknown_nat_kind(lab: netlab.Lab) -> None:
    with pytest.raises(ValueError, match="consistent, random, firewall"):
        lab.add_nat("x", "symmetric")
