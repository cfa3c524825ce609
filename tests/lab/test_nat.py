"""What the transport does across NATs: a client behind a NAT reaches a public server; two
peers behind NATs holepunch (consistent with consistent or random), and so does a host
behind a firewall (public address, unsolicited UDP dropped); two random NATs fail at once
with a clear error (a relay would be needed). Real processes (``python -m p2p_transport
rpc-serve`` and ``rpc-call``) on lab hosts, a Python DHT on a public host."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.lab_env import netlab

pytestmark = pytest.mark.lab

HOLEPUNCH = "HOLEPUNCH_DOUBLE_RANDOMIZED_NATS"


def place(lab: netlab.Lab, name: str, where: str) -> netlab.Host:
    if where == "public":
        return lab.add_host(name)
    return lab.add_host(name, behind=lab.add_nat(f"{name}-nat", where))


@pytest.mark.parametrize(
    ("server_at", "client_at", "expected"),
    [
        ("public", "consistent", "6869"),
        ("public", "random", "6869"),
        # a public (OPEN) client waits for the NATed server's first packet: the server says it
        # is not OPEN (holepunch relays) even to OPEN clients, as hyperdht does
        ("random", "public", "6869"),
        ("consistent", "consistent", "6869"),
        ("consistent", "random", "6869"),
        ("random", "random", HOLEPUNCH),
        # a public host behind a firewall (unsolicited UDP dropped) finds out with the DHT's
        # firewall check, claims CONSISTENT rather than OPEN and holepunches
        ("firewall", "consistent", "6869"),
        ("firewall", "random", "6869"),
        ("consistent", "firewall", "6869"),
        ("random", "firewall", "6869"),
        ("firewall", "firewall", "6869"),
    ],
)
def test_rpc_call_across_nats(lab: netlab.Lab, server_at: str, client_at: str,
                              expected: str) -> None:
    dht = lab.add_host("dht")
    testnet = lab.python(dht, ["-m", "p2p_transport", "testnet", "--host", dht.address,
                               "--port", "49737"], stdout=subprocess.PIPE, text=True)
    bootstrap = netlab.read_json_line(testnet, timeout=60)["bootstrap"][0]
    server, client = place(lab, "server", server_at), place(lab, "client", client_at)
    serving = lab.python(server, ["-m", "p2p_transport", "rpc-serve", "--host", server.address,
                                  "--bootstrap", bootstrap], stdout=subprocess.PIPE, text=True)
    assert serving.stdout is not None
    key = serving.stdout.readline().strip()
    assert len(key) == 64, key
    call = subprocess.run(
        client.argv([sys.executable, "-m", "p2p_transport", "rpc-call", "--key", key,
                     "--method", "echo", "--data", "6869", "--bootstrap", bootstrap,
                     "--host", client.address, "--timeout", "30"]),
        capture_output=True, text=True, timeout=90, check=False,
        env={"PYTHONPATH": str(netlab.ROOT), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    if expected == HOLEPUNCH:
        assert call.returncode == 1, call
        assert call.stdout.startswith(f"error HolepunchFailed: {HOLEPUNCH}"), call.stdout
    else:
        assert call.returncode == 0, call
        assert call.stdout.strip() == expected
