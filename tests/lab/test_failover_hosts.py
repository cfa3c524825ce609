"""Failover across hosts: a worker, an orchestrator, a registry and a gateway, each on a lab host
of its own, killed (SIGKILL) while four greedy streams run; the survivors carry on.

Hosts: the store (PostgreSQL), the DHT, two registries, two orchestrators, two gateways, two
workers and a client, each its own namespace (``tests/lab/tether_net.py``). The client streams
through ``tether.client.infer_across`` with both gateways. Per phase: every stream ends with
exactly the text of a stream no fault touched (greedy decoding: no chunk repeated, none
lost), and once the streams are over the Metadata Store holds no job still running: the
phase's jobs SUCCEEDED; a lost gateway's jobs end on their own (CANCELLED by the orchestrator
when its caller is gone, or SUCCEEDED if it had finished) while their resubmissions
(``<cid>:g1``) SUCCEEDED.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.lab.tether_net import TetherNet
from tests.lab_env import netlab

pytestmark = [pytest.mark.lab, pytest.mark.slow]

TOKENS = 160
AFTER = 12
STREAMS = 4
GATEWAYS = ["gw-a", "gw-b"]


def build(lab: netlab.Lab, folder: Path) -> TetherNet:
    net = TetherNet.open(lab, folder)
    for name in ("registry-a", "registry-b"):
        net.start(name, "registry")
    for name in ("orch-a", "orch-b"):
        net.start(name, "orchestrator")
    for name in GATEWAYS:
        net.start(name, "gateway")
    for worker_id in ("w1", "w2"):
        net.worker(worker_id)
    return net


def run_streams(net: TetherNet, prefix: str, victim: str | None) -> tuple[float, list[dict]]:
    """Four streams; ``victim`` killed once each has AFTER chunks. (kill time, streams)"""
    proc = net.client("client", GATEWAYS, "stream", "--prefix", prefix, "--streams",
                      str(STREAMS), "--tokens", str(TOKENS), "--after", str(AFTER))
    netlab.read_json_line(proc, 180)
    killed = time.monotonic()
    if victim is not None:
        net.services[victim].kill()
    streams = netlab.read_json_line(proc, 240)["streams"]
    proc.wait(timeout=30)
    return killed, streams


def check_streams(phase: str, streams: list[dict], reference: dict) -> None:
    for s in streams:
        assert not s["error"], f"{phase}: {s['cid']} failed: {s['error']}"
        assert s["text"] == reference["text"], f"{phase}: {s['cid']} differs: {s['text']!r}"
        assert s["chunks"] == reference["chunks"], f"{phase}: {s['cid']}: {s['chunks']} chunks"


@pytest.mark.timeout(900)
def test_services_killed_mid_stream_on_their_own_hosts(lab: netlab.Lab, tmp_path: Path) -> None:
    net = build(lab, tmp_path)
    try:
        warm = net.client("client", GATEWAYS, "warm")
        netlab.read_json_line(warm, 180)
        # both orchestrators see both workers before anything is killed
        placed = net.client("client", GATEWAYS, "place", "--workers", "2", "--rounds", "4")
        assert netlab.read_json_line(placed, 120)["placed"] == ["w1", "w2"]
        reference = run_streams(net, "ref", None)[1][0]
        assert reference["chunks"] >= TOKENS and not reference["error"], reference

        # w1 (ties break by worker id, so it runs every stream) dies: w2 resumes them
        _, streams = run_streams(net, "worker", "w1")
        check_streams("worker killed", streams, reference)

        # the gateways spread streams over both orchestrators; orch-a dies and gw resumes
        # its streams through orch-b, which takes the jobs over
        _, streams = run_streams(net, "orch", "orch-a")
        check_streams("orchestrator killed", streams, reference)
        owners = net.sql("SELECT DISTINCT owner FROM jobs WHERE correlation_id LIKE 'orch-%'")
        assert owners == [[net.services["orch-b"].key]], owners

        # a registry dies mid-stream: streams go on; a new request resolves through the other
        # (after the orchestrator's 5 s resolution cache)
        _, streams = run_streams(net, "registry", "registry-a")
        check_streams("registry killed", streams, reference)
        time.sleep(6)
        again = net.client("client", GATEWAYS, "warm", "--timeout", "60")
        assert netlab.read_json_line(again, 90)["warm"] < 30

        # gw-a dies: the client resumes every stream through gw-b
        _, streams = run_streams(net, "gw", "gw-a")
        check_streams("gateway killed", streams, reference)

        jobs = net.wait_jobs_finished(timeout=120)
        running = {cid: s for cid, s in jobs.items() if s not in ("SUCCEEDED", "FAILED",
                                                                   "CANCELLED")}
        assert not running, f"jobs left unfinished: {running}"
        for prefix in ("worker", "orch", "registry"):
            for i in range(STREAMS):
                assert jobs[f"{prefix}-{i}"] == "SUCCEEDED", (prefix, i, jobs)
        for i in range(STREAMS):
            assert jobs[f"gw-{i}:g1"] == "SUCCEEDED", jobs
            assert jobs[f"gw-{i}"] in ("CANCELLED", "SUCCEEDED"), jobs
    except BaseException:
        print(net.logs())
        raise
