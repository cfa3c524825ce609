"""Resilience across hosts of the network lab (``tools/lab.py``; root, ``ip``, ``nft``, and
Node for the churn): two figures, each over several repetitions.

* ``resume``: the time for a request to resume after its orchestrator is killed. A network
  as in ``tests/lab/test_failover_hosts.py`` (store, DHT, registry, two orchestrators, a
  gateway, a worker and a client, each on its own host); four greedy streams run, and once
  each has 12 chunks the orchestrator owning most of them is SIGKILLed. Per repetition, over
  the streams it owned (the others ran on the other orchestrator): the longest time from the
  kill to the chunk that ends the stream's pause (chunks already on their way arrive first);
  then it is started again with its key and the next repetition waits until the gateway
  uses it again. A SIGKILLed process's host answers with ICMP port
  unreachable, which ends its connections at once; ``vanish`` measures the same when the
  orchestrator's host drops every packet instead (a machine that lost power), which only
  the gateway's probes find out.
* ``churn``: the time to converge after churn, as in ``tests/lab/test_dht_churn.py``: 30%
  of a 30-node DHT (Python and Node) killed and replaced and the orchestrator restarted,
  until it sees all three workers again; each repetition churns the DHT again.

The last line printed is JSON: per figure ``runs``, ``p50`` and ``max`` (seconds), and the
machine's load average when it ended.

    python bench/lab_resilience.py [--reps 5] [--only resume|vanish|churn]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.lab import test_dht_churn as churn  # noqa: E402
from tests.lab.tether_net import TetherNet  # noqa: E402
from tests.lab_env import netlab  # noqa: E402
from tests.node_env import require_node  # noqa: E402

STREAMS, TOKENS, AFTER = 4, 160, 12


def summary(runs: list[float]) -> dict[str, Any]:
    return {"runs": runs, "p50": round(statistics.median(runs), 2) if runs else None,
            "max": max(runs) if runs else None}


def resume_runs(reps: int, fault: str) -> list[float]:
    """Per repetition: the longest wait, from the fault to the next chunk, of the streams
    the faulted orchestrator owned. ``fault``: "kill" (SIGKILL) or "vanish" (its host drops
    every packet; the process is killed before the lab heals)."""
    runs: list[float] = []
    with netlab.Lab() as lab, tempfile.TemporaryDirectory(prefix="lab-resume-") as tmp:
        net = TetherNet.open(lab, Path(tmp))
        for name, service in (("registry", "registry"), ("orch-a", "orchestrator"),
                              ("orch-b", "orchestrator"), ("gw", "gateway")):
            net.spawn(name, service)
        net.worker("w1", slots=STREAMS * 2, wait=False)
        net.ready(*net.services)
        netlab.read_json_line(net.client("client", ["gw"], "warm"), 180)
        for rep in range(reps):
            wait_until_both_used(net, rep)
            proc = net.client("client", ["gw"], "stream", "--prefix", f"r{rep}", "--streams",
                              str(STREAMS), "--tokens", str(TOKENS), "--after", str(AFTER))
            netlab.read_json_line(proc, 180)
            owners = dict(net.sql(f"SELECT correlation_id, owner FROM jobs "
                                  f"WHERE correlation_id LIKE 'r{rep}-%'"))
            victim = max(("orch-a", "orch-b"),
                         key=lambda n: list(owners.values()).count(net.services[n].key))
            cut = {cid for cid, key in owners.items() if key == net.services[victim].key}
            host = net.services[victim].host
            faulted = time.monotonic()
            if fault == "kill":
                net.services[victim].kill()
            else:
                lab.isolate(host)
            streams = netlab.read_json_line(proc, 240)["streams"]
            proc.wait(timeout=30)
            assert all(not s["error"] for s in streams), [s["error"] for s in streams]
            waits = [resumed_after(s["times"], faulted) for s in streams if s["cid"] in cut]
            print(f"resume ({fault}) {rep}: {len(cut)} streams cut, next chunk after "
                  f"{sorted(round(w, 2) for w in waits)} s", file=sys.stderr)
            runs.append(round(max(waits), 2))
            if fault != "kill":
                net.services[victim].kill()
                lab.heal()
            net.restart(victim)
    return runs


def resumed_after(times: list[float], faulted: float) -> float:
    """Seconds from the fault to the chunk that ended the stream's longest pause after it
    (chunks already on their way when the fault came arrive first and do not count)."""
    after = [faulted, *(t for t in times if t > faulted)]
    _, end = max(itertools.pairwise(after), key=lambda ab: ab[1] - ab[0])
    return end - faulted


def wait_until_both_used(net: TetherNet, rep: int) -> None:
    """Requests until both orchestrators own one (the gateway found the restarted one)."""
    keys = {net.services[n].key for n in ("orch-a", "orch-b")}
    for attempt in range(30):
        proc = net.client("client", ["gw"], "stream", "--prefix", f"w{rep}-{attempt}",
                          "--streams", "2", "--tokens", "2", "--after", "1")
        netlab.read_json_line(proc, 120)
        netlab.read_json_line(proc, 120)
        proc.wait(timeout=30)
        owners = {row[0] for row in net.sql(
            f"SELECT owner FROM jobs WHERE correlation_id LIKE 'w{rep}-{attempt}-%'")}
        if owners == keys:
            return
        time.sleep(1)
    raise AssertionError("the gateway never used both orchestrators")


def churn_runs(reps: int) -> list[dict[str, Any]]:
    node = require_node("hyperdht")
    runs = []
    with netlab.Lab() as lab, tempfile.TemporaryDirectory(prefix="lab-churn-") as tmp:
        net, dht = churn.build(lab, Path(tmp), node)
        churn.sees_all_workers(net, 120)
        for rep in range(reps):
            try:
                figures = churn.converge_after_churn(net, dht)
            except (AssertionError, netlab.LabError) as exc:
                # Recorded, not raised: what failed after how much churn is a finding too.
                figures = {"error": str(exc)[-300:],
                           "client": net.log("client-client")[-600:]}
                print(f"churn {rep}: {figures}", file=sys.stderr)
                runs.append(figures)
                break
            print(f"churn {rep}: {figures}", file=sys.stderr)
            runs.append(figures)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--only", choices=["resume", "vanish", "churn"])
    args = parser.parse_args()
    why = netlab.unavailable()
    if why:
        raise SystemExit(f"lab_resilience: {why}")
    figures: dict[str, Any] = {"reps": args.reps}
    if args.only in (None, "resume"):
        figures["resume_after_orchestrator_kill_s"] = summary(resume_runs(args.reps, "kill"))
    if args.only in (None, "vanish"):
        figures["resume_after_orchestrator_host_lost_s"] = summary(
            resume_runs(args.reps, "vanish"))
    if args.only in (None, "churn"):
        runs = churn_runs(args.reps)
        done = [r for r in runs if "error" not in r]
        figures["converge_after_churn_s"] = summary([r["converged_s"] for r in done])
        figures["churn_orchestrator_ready_s"] = summary([r["orchestrator_ready_s"]
                                                        for r in done])
        figures["churn_replacements_joined_s"] = summary([r["replacements_joined_s"]
                                                         for r in done])
        figures["churn_failed"] = [r for r in runs if "error" in r]
    figures["load_average"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
