"""DHT churn on lab hosts: a DHT of 30 persistent nodes (a bootstrap node on its own host;
five hosts with a group of three Python storage nodes and a group of three Node
``hyperdht`` nodes each) under a Tether network (registry, orchestrator, gateway and three
workers, each on its own host). While the workers heartbeat, 30% of the DHT's nodes are
killed (whole groups, Python and Node) and as many fresh ones join, and the orchestrator is
killed and started again: it must find every worker through the churned DHT (its
gateway's ``Place`` names all three), and the time that takes is measured
(``bench/lab_resilience.py`` repeats it).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.lab.tether_net import LabDht, TetherNet
from tests.lab_env import netlab
from tests.node_env import require_node

pytestmark = [pytest.mark.lab, pytest.mark.slow]

WORKERS = ("w1", "w2", "w3")


def build(lab: netlab.Lab, folder: Path, node: str) -> tuple[TetherNet, LabDht]:
    dht = LabDht.open(lab, hosts=5, per_group=3, node=node)
    net = TetherNet.open(lab, folder, bootstrap=dht.bootstrap)
    for name, service in (("registry", "registry"), ("orch", "orchestrator"),
                          ("gw", "gateway")):
        net.spawn(name, service)
    for worker_id in WORKERS:
        net.worker(worker_id, slots=2, wait=False)
    net.ready(*net.services)
    return net, dht


def sees_all_workers(net: TetherNet, timeout: float) -> None:
    placed = net.client("client", ["gw"], "place", "--workers", str(len(WORKERS)),
                        "--rounds", "1", "--timeout", str(timeout))
    assert netlab.read_json_line(placed, timeout + 30)["placed"] == list(WORKERS)
    placed.wait(timeout=30)


def converge_after_churn(net: TetherNet, dht: LabDht, fraction: float = 0.3) -> dict:
    """Kill ``fraction`` of the DHT's nodes and start as many fresh ones, and kill and
    restart the orchestrator (it must find the workers anew); figures in seconds from the
    kill: until the orchestrator is up, until it sees every worker (``converged_s``), and
    until the replacement nodes had bootstrapped."""
    start = time.monotonic()
    killed, started = dht.churn(fraction)
    net.services["orch"].kill()
    net.restart("orch")
    restarted = time.monotonic()
    sees_all_workers(net, 120)
    converged = time.monotonic()
    dht.joined(started)
    return {"killed_nodes": sum(len(g.nodes) for g in killed),
            "killed_kinds": sorted({g.kind for g in killed}),
            "replaced_nodes": sum(len(g.nodes) for g in started),
            "orchestrator_ready_s": round(restarted - start, 2),
            "converged_s": round(converged - start, 2),
            "replacements_joined_s": round(time.monotonic() - start, 2)}


@pytest.mark.timeout(600)
def test_discovery_converges_after_30_percent_of_the_dht_is_replaced(
    lab: netlab.Lab, tmp_path: Path,
) -> None:
    node = require_node("hyperdht")
    net, dht = build(lab, tmp_path, node)
    try:
        assert dht.size() == 30
        assert {g.kind for g in dht.alive()} == {"python", "node"}
        sees_all_workers(net, 120)
        figures = converge_after_churn(net, dht)
        print("churn:", figures)
        assert figures["killed_nodes"] == 9 and figures["replaced_nodes"] == 9
        assert figures["killed_kinds"] == ["node", "python"]
        assert dht.size() == 30
        assert figures["converged_s"] < 90
        # and requests run again
        warm = net.client("client", ["gw"], "warm", "--timeout", "60")
        assert netlab.read_json_line(warm, 90)["warm"] < 60
    except BaseException:
        print(net.logs())
        raise
