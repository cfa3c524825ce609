"""Two regions (spec §8) on lab hosts: ``us-east`` and ``eu-west``, each with a registry, a
gateway, two orchestrators and a worker, every service on a host of its own. The Metadata
Store is a PostgreSQL primary in us-east and a streaming replica in eu-west
(``pg_basebackup -R``: ``standby.signal`` and ``primary_conninfo``); eu-west's services read
what may lag from the replica (``--metadata-read-url``) and write to the primary. Each
region's orchestrators also watch the other region's workers (``--watch-region``) and each
gateway falls back to the other region's orchestrators (``--fallback-region``).

Checked, in order: requests are placed in their own region; eu-west's gateway reads only
from the replica (PostgreSQL's ``pg_stat_activity`` on each server); a drained local pool
(its worker stopped with SIGTERM) sends us-east's requests to eu-west's worker; and losing
both us-east orchestrators mid-stream (SIGKILL) moves us-east's gateway's traffic, streams
in flight included, to eu-west's orchestrators, with every stream's text intact and no
job left running.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.lab.tether_net import TetherNet, until
from tests.lab_env import netlab

pytestmark = [pytest.mark.lab, pytest.mark.slow]

TOKENS = 120
OTHER = {"us-east": "eu-west", "eu-west": "us-east"}
SHORT = {"us-east": "us", "eu-west": "eu"}


def build(lab: netlab.Lab, folder: Path) -> tuple[TetherNet, netlab.Postgres]:
    net = TetherNet.open(lab, folder, store_host="db-us")
    replica = lab.postgres(lab.add_host("db-eu"), replica_of=net.store)
    for region, r in SHORT.items():
        reads = ("--metadata-read-url", replica.url) if region == "eu-west" else ()
        net.spawn(f"reg-{r}", "registry", region=region, extra=reads)
        for i in (1, 2):
            net.spawn(f"orch-{r}-{i}", "orchestrator", region=region,
                      extra=("--watch-region", OTHER[region], *reads))
        net.spawn(f"gw-{r}", "gateway", region=region,
                  extra=("--fallback-region", OTHER[region], *reads))
        net.worker(f"w-{r}", region=region, wait=False, extra=reads)
    net.ready(*net.services)
    return net, replica


def stream(net: TetherNet, region: str, prefix: str, *, streams: int = 2,
           kill: tuple[str, ...] = ()) -> list[dict]:
    """Streams through ``region``'s gateway; ``kill`` SIGKILLed once each has 10 chunks."""
    r = SHORT[region]
    proc = net.client(f"client-{r}", [f"gw-{r}"], "stream", "--prefix", prefix, "--streams",
                      str(streams), "--tokens", str(TOKENS), "--after", "10", region=region)
    netlab.read_json_line(proc, 180)
    for name in kill:
        net.services[name].kill()
    got: list[dict] = netlab.read_json_line(proc, 240)["streams"]
    proc.wait(timeout=30)
    return got


def client_addresses(db: netlab.Postgres, host: netlab.Host) -> set[str]:
    rows = db.sql(host, "SELECT DISTINCT host(client_addr) FROM pg_stat_activity "
                        "WHERE backend_type = 'client backend' AND client_addr IS NOT NULL")
    return set(rows.split())


@pytest.mark.timeout(600)
def test_two_regions_with_a_replica_and_a_lost_region(lab: netlab.Lab, tmp_path: Path) -> None:
    started = time.monotonic()
    net, replica = build(lab, tmp_path)
    try:
        for region, r in SHORT.items():
            warm = net.client(f"client-{r}", [f"gw-{r}"], "warm", region=region)
            netlab.read_json_line(warm, 180)

        # each region's requests run on its own worker
        reference = stream(net, "us-east", "home-us")[0]
        assert not reference["error"] and reference["chunks"] >= TOKENS, reference
        assert not stream(net, "eu-west", "home-eu")[0]["error"]
        workers = dict(net.sql("SELECT correlation_id, worker_id FROM jobs "
                               "WHERE correlation_id LIKE 'home-%'"))
        assert workers == {"home-us-0": "w-us", "home-us-1": "w-us",
                           "home-eu-0": "w-eu", "home-eu-1": "w-eu"}, workers

        # eu-west's gateway reads from the replica only; its writers use the primary
        gw_eu = net.services["gw-eu"].host.address
        on_replica = client_addresses(replica, net.store_host)
        on_primary = client_addresses(net.store, net.store_host)
        assert gw_eu in on_replica and gw_eu not in on_primary, (on_replica, on_primary)
        assert net.services["reg-eu"].host.address in on_replica
        assert net.services["orch-eu-1"].host.address in on_primary  # jobs are written there
        assert replica.sql(net.store_host, "SELECT pg_is_in_recovery()").strip() == "t"

        # us-east's pool drained: its requests cross to eu-west's worker (which both us-east
        # orchestrators know: Place, through the gateway, asks each in turn)
        placed = net.client("client-us", ["gw-us"], "place", "--workers", "2", "--rounds",
                            "4", region="us-east")
        assert netlab.read_json_line(placed, 120)["placed"] == ["w-eu", "w-us"]
        w_us = net.services["w-us"]
        w_us.process.send_signal(signal.SIGTERM)
        w_us.process.wait(timeout=60)
        crossed = stream(net, "us-east", "drained")
        for s in crossed:
            assert not s["error"] and s["text"] == reference["text"], s["error"] or s["text"]
        workers = dict(net.sql("SELECT correlation_id, worker_id FROM jobs "
                               "WHERE correlation_id LIKE 'drained-%'"))
        assert set(workers.values()) == {"w-eu"}, workers

        # both us-east orchestrators die mid-stream: us-east's gateway resumes its streams
        # through eu-west's orchestrators, and new requests go there too
        lost = stream(net, "us-east", "lost", streams=4, kill=("orch-us-1", "orch-us-2"))
        for s in lost:
            assert not s["error"], s
            assert s["text"] == reference["text"], s
        owners = {row[0] for row in net.sql(
            "SELECT owner FROM jobs WHERE correlation_id LIKE 'lost-%'")}
        eu_keys = {net.services[f"orch-eu-{i}"].key for i in (1, 2)}
        assert owners and owners <= eu_keys, (owners, eu_keys)
        after = stream(net, "us-east", "after", streams=1)
        assert not after[0]["error"], after
        [[owner]] = net.sql("SELECT owner FROM jobs WHERE correlation_id = 'after-0'")
        assert owner in eu_keys

        jobs = net.wait_jobs_finished(timeout=60)
        running = {c: s for c, s in jobs.items() if s not in ("SUCCEEDED", "FAILED",
                                                               "CANCELLED")}
        assert not running, running
        until(lambda: replica.sql(net.store_host, "SELECT count(*) FROM jobs "
                                  "WHERE correlation_id = 'after-0'").strip() == "1",
              10, "the replica has the last job")
    except BaseException:
        print(net.logs())
        raise
    print(f"two regions: {time.monotonic() - started:.0f} s")
