"""@hyperswarm/rpc over HyperDHT: connect time and echo round trip, Python<->Python vs
Node<->Node, side by side in one run on 127.0.0.1.

Both pairs use the same 3-node Node testnet for discovery (``bench/node/rpc_testnet.mjs``):

* Node<->Node: ``bench/node/rpc_server.mjs`` served, ``bench/node/rpc_client.mjs`` measuring;
* Python<->Python: ``python -m p2p_transport rpc-serve`` served (its own process), this process
  measuring with :class:`p2p_transport.rpc.HyperswarmRpc`.

Mixed pairs (Python client -> Node server, Node client -> Python server) are measured too, to
show which side the time goes to. Connect time is lookup (FIND_PEER walk) + relayed Noise
handshake + secret-stream header exchange + protomux-rpc channel open, for a fresh client.
Round trips are ``--requests`` sequential ``echo`` calls of ``--size`` bytes (the first
``--warmup`` are discarded). The last
line printed is JSON with every figure and the Python/Node ratios.

Usage: .venv/bin/python bench/transport_rpc.py [--requests 2000] [--size 32]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import trio

THIS_FILE = Path(__file__).resolve()
REPO_ROOT = THIS_FILE.parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from p2p_transport.cenc import SocketAddress  # noqa: E402
from p2p_transport.hyperdht import HyperDht  # noqa: E402
from p2p_transport.rpc import HyperswarmRpc  # noqa: E402

NODE_DIR = THIS_FILE.parent / "node"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _summary(connect_ms: float, rtt_ms: list[float]) -> dict[str, float]:
    return {"connect_ms": round(connect_ms, 3),
            "rtt_p50_ms": round(statistics.median(rtt_ms), 4),
            "rtt_p99_ms": round(_pct(rtt_ms, 0.99), 4),
            "rtt_mean_ms": round(statistics.fmean(rtt_ms), 4)}


async def _readline(proc: trio.Process) -> str:
    assert proc.stdout is not None
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = await proc.stdout.receive_some(1)
        if not chunk:
            raise RuntimeError("child exited early")
        buf += chunk
    return buf.decode().strip()


async def _python_client(boot: list[SocketAddress], key: bytes, n: int, size: int,
                         warmup: int) -> dict[str, float]:
    async with HyperDht.open(bootstrap=boot) as dht:
        rpc = HyperswarmRpc(dht)
        t0 = time.perf_counter()
        client = await rpc.connect(key)
        connect_ms = (time.perf_counter() - t0) * 1000
        payload = bytes([7]) * size
        rtt: list[float] = []
        for _ in range(n):
            s = time.perf_counter()
            await client.request("echo", payload)
            rtt.append((time.perf_counter() - s) * 1000)
        await rpc.aclose()
    return _summary(connect_ms, rtt[warmup:])


async def run(n: int, size: int, warmup: int) -> dict[str, Any]:
    node = "node"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    popen = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "cwd": str(REPO_ROOT),
             "env": env}
    async with trio.open_nursery() as nursery:
        testnet = await nursery.start(partial(trio.run_process,
                                              [node, str(NODE_DIR / "rpc_testnet.mjs")],
                                              **popen, check=False))
        boot = json.loads(await _readline(testnet))["bootstrap"]
        boot_text = f"{boot[0]['host']}:{boot[0]['port']}"
        boot_addrs = [SocketAddress(b["host"], b["port"]) for b in boot]

        node_server = await nursery.start(partial(
            trio.run_process, [node, str(NODE_DIR / "rpc_server.mjs"), boot_text], **popen,
            check=False))
        node_key = json.loads(await _readline(node_server))["publicKey"]
        client = await trio.run_process(
            [node, str(NODE_DIR / "rpc_client.mjs"), boot_text, node_key, str(n), str(size)],
            capture_stdout=True, cwd=str(REPO_ROOT), check=True)
        raw = json.loads(client.stdout.decode().strip().splitlines()[-1])
        node_node = _summary(raw["connect_ms"], raw["rtt_ms"][warmup:])

        py_server = await nursery.start(partial(
            trio.run_process, [sys.executable, "-m", "p2p_transport", "rpc-serve",
                               "--bootstrap", boot_text], **popen, check=False))
        py_key = bytes.fromhex(await _readline(py_server))
        py_py = await _python_client(boot_addrs, py_key, n, size, warmup)
        # mixed pairs show which side the time is spent on
        py_node = await _python_client(boot_addrs, bytes.fromhex(node_key), n, size, warmup)
        client = await trio.run_process(
            [node, str(NODE_DIR / "rpc_client.mjs"), boot_text, py_key.hex(), str(n),
             str(size)], capture_stdout=True, cwd=str(REPO_ROOT), check=True)
        raw = json.loads(client.stdout.decode().strip().splitlines()[-1])
        node_py = _summary(raw["connect_ms"], raw["rtt_ms"][warmup:])

        for proc in (py_server, node_server, testnet):
            assert proc.stdin is not None
            await proc.stdin.aclose()
        py_server.terminate()
        nursery.cancel_scope.deadline = trio.current_time() + 10

    ratios = {k: round(py_py[k] / node_node[k], 2) for k in node_node if node_node[k]}
    return {"benchmark": "transport_rpc", "requests": n, "size": size,
            "python_python": py_py, "node_node": node_node,
            "python_client_node_server": py_node, "node_client_python_server": node_py,
            "ratio_python_over_node": ratios}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--warmup", type=int, default=100)
    args = p.parse_args()
    result = trio.run(run, args.requests, args.size, args.warmup)
    print(f"Node<->Node     {result['node_node']}")
    print(f"Python<->Python {result['python_python']}")
    print(f"Python->Node    {result['python_client_node_server']}")
    print(f"Node->Python    {result['node_client_python_server']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
