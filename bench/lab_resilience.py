"""Resilience across hosts of the network lab (``tools/lab.py``; root, ``ip``, ``nft``, and
Node for the churn): two figures, each over several repetitions.

* ``resume``: the time for a request to resume after its orchestrator is killed. A network
  as in ``tests/lab/test_failover_hosts.py`` (store, DHT, registry, two orchestrators, a
  gateway, a worker and a client, each on its own host); four greedy streams run, and once
  each has 12 chunks the orchestrator owning most of them is SIGKILLed. Per repetition: the
  longest time from the kill to a stream's next chunk, among the streams the kill cut (a gap
  over 0.5 s; the others ran on the other orchestrator); then the killed one is started
  again with its key and the next repetition waits until the gateway uses it again.
* ``churn``: the time to converge after churn, as in ``tests/lab/test_dht_churn.py``: 30%
  of a 30-node DHT (Python and Node) killed and replaced and the orchestrator restarted,
  until it sees all three workers again; each repetition churns the DHT again.

The last line printed is JSON: per figure ``runs``, ``p50`` and ``max`` (seconds), and the
machine's load average when it ended.

    python bench/lab_resilience.py [--reps 5] [--only resume|churn]
"""

from __future__ import annotations

import argparse
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
#: A stream whose next chunk came this long after the kill was cut by it.
CUT_S = 0.5


def summary(runs: list[float]) -> dict[str, Any]:
    return {"runs": runs, "p50": round(statistics.median(runs), 2) if runs else None,
            "max": max(runs) if runs else None}


def resume_runs(reps: int) -> list[float]:
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
            victim = busiest(net, f"r{rep}-%")
            killed = time.monotonic()
            net.services[victim].kill()
            streams = netlab.read_json_line(proc, 240)["streams"]
            proc.wait(timeout=30)
            assert all(not s["error"] for s in streams), [s["error"] for s in streams]
            waits = [min((t for t in s["times"] if t > killed), default=killed) - killed
                     for s in streams]
            cut = [w for w in waits if w > CUT_S]
            print(f"resume {rep}: next chunk after the kill {sorted(round(w, 2) for w in waits)}",
                  file=sys.stderr)
            if cut:
                runs.append(round(max(cut), 2))
            net.restart(victim)
    return runs


def busiest(net: TetherNet, like: str) -> str:
    """The orchestrator that owns most of the jobs ``LIKE like``."""
    owners = [row[0] for row in net.sql(f"SELECT owner FROM jobs WHERE correlation_id LIKE "
                                        f"'{like}'")]
    return max(("orch-a", "orch-b"), key=lambda n: owners.count(net.services[n].key))


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
            figures = churn.converge_after_churn(net, dht)
            print(f"churn {rep}: {figures}", file=sys.stderr)
            runs.append(figures)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--only", choices=["resume", "churn"])
    args = parser.parse_args()
    why = netlab.unavailable()
    if why:
        raise SystemExit(f"lab_resilience: {why}")
    figures: dict[str, Any] = {"reps": args.reps}
    if args.only in (None, "resume"):
        figures["resume_after_orchestrator_kill_s"] = summary(resume_runs(args.reps))
    if args.only in (None, "churn"):
        runs = churn_runs(args.reps)
        figures["converge_after_churn_s"] = summary([r["converged_s"] for r in runs])
        figures["churn_orchestrator_ready_s"] = summary([r["orchestrator_ready_s"]
                                                        for r in runs])
        figures["churn_replacements_joined_s"] = summary([r["replacements_joined_s"]
                                                         for r in runs])
    figures["load_average"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
