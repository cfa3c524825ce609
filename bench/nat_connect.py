"""Connection set-up through NATs in the network lab: Python<->Python against Node<->Node.

For each pair of NAT kinds (server NAT / client NAT), a lab (``tools/lab.py``) with a Python
DHT of 6 nodes on a public host, a server behind one NAT and a client behind another. The
client connects ``--attempts`` times, each from a fresh DHT (no cached path), and measures
connect + secret-stream + one echo (``tests/lab/hp_peer.py`` and
``tests/interop2/node/nat_peer.mjs``, the same protocol). Reported per pair and side: the
success rate, the median and p90 set-up time of the successes, the failure codes, and the
Python/Node ratio of the medians.

Pairs with a random NAT use a fresh server per attempt: both implementations allow one
random-NAT punch per 20 s per peer (Node's rate limit), so back-to-back attempts on one server
would measure that limit, not the punch. Random/random cannot be punched (both end with an
error, at once); its success rate is 0 by design.

Needs root and nftables (see docs/lab.md). The last line printed is JSON.

Usage: sudo .venv/bin/python bench/nat_connect.py [--attempts 50]
       [--pairs consistent/consistent,consistent/random,random/consistent,random/random]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tools"))

import lab as netlab  # noqa: E402

PEERS = {"node": ["node", "tests/interop2/node/nat_peer.mjs"],
         "python": [sys.executable, "tests/lab/hp_peer.py"]}
TIMEOUT = 45.0


def start_server(lab: netlab.Lab, host: netlab.Host, impl: str, bootstrap: str) -> tuple[
        subprocess.Popen[str], str]:
    proc = lab.run(host, [*PEERS[impl], "server", "--bootstrap", bootstrap],
                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return proc, str(netlab.read_json_line(proc, timeout=60)["publicKey"])


def clients(host: netlab.Host, impl: str, bootstrap: str, key: str,
            count: int) -> list[dict[str, Any]]:
    run = subprocess.run(
        host.argv([*PEERS[impl], "client", "--bootstrap", bootstrap, "--key", key,
                   "--count", str(count), "--timeout", str(TIMEOUT)]),
        capture_output=True, text=True, timeout=count * (TIMEOUT + 30), check=False,
        cwd=netlab.ROOT, env={**os.environ, "PYTHONPATH": str(netlab.ROOT)})
    out = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    return out or [{"event": "error", "code": f"exit {run.returncode}",
                    "message": run.stderr[-300:]}]


def measure_pair(server_nat: str, client_nat: str, impl: str, attempts: int) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    fresh = "random" in (server_nat, client_nat)
    with netlab.Lab() as lab:
        dht = lab.add_host("dht")
        testnet = lab.python(dht, ["-m", "p2p_transport", "testnet", "--host", dht.address,
                                   "--port", "49737", "--nodes", "6"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        bootstrap = str(netlab.read_json_line(testnet, timeout=60)["bootstrap"][0])
        server = lab.add_host("server", behind=lab.add_nat("server-nat", server_nat))
        client = lab.add_host("client", behind=lab.add_nat("client-nat", client_nat))
        if fresh:
            for _ in range(attempts):
                proc, key = start_server(lab, server, impl, bootstrap)
                results += clients(client, impl, bootstrap, key, 1)
                proc.terminate()
                proc.wait(timeout=15)
        else:
            _proc, key = start_server(lab, server, impl, bootstrap)
            results = clients(client, impl, bootstrap, key, attempts)
    ok = sorted(float(r["ms"]) for r in results if r.get("event") == "open" and r.get("echo"))
    codes = Counter(str(r.get("code")) for r in results if r.get("event") != "open")
    return {
        "attempts": len(results),
        "success_rate": round(len(ok) / len(results), 3) if results else 0.0,
        "median_ms": round(statistics.median(ok), 1) if ok else None,
        "p90_ms": round(ok[int(0.9 * (len(ok) - 1))], 1) if ok else None,
        "failures": dict(codes),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--attempts", type=int, default=50, help="connects per pair and side")
    p.add_argument("--pairs", default="consistent/consistent,consistent/random,"
                                      "random/consistent,random/random")
    args = p.parse_args()
    why = netlab.unavailable()
    if why is not None:
        print(f"cannot make a lab here: {why}", file=sys.stderr)
        return 2
    load = os.getloadavg()[0]
    started = time.time()
    pairs: dict[str, Any] = {}
    for pair in args.pairs.split(","):
        server_nat, client_nat = pair.split("/")
        row: dict[str, Any] = {impl: measure_pair(server_nat, client_nat, impl, args.attempts)
                               for impl in ("python", "node")}
        py, node = row["python"]["median_ms"], row["node"]["median_ms"]
        row["median_ratio_python_over_node"] = round(py / node, 2) if py and node else None
        pairs[pair] = row
        print(f"{pair}: python {row['python']} | node {row['node']} | "
              f"ratio {row['median_ratio_python_over_node']}", flush=True)
    print(json.dumps({"bench": "nat_connect", "attempts": args.attempts, "pairs": pairs,
                      "load_avg_1m": round(load, 2),
                      "seconds": round(time.time() - started, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
