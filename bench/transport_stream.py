"""Encrypted stream throughput and small-message round trip: Python<->Python vs Node<->Node.

Both runs use the same shape: two UDX sockets on 127.0.0.1 in one process (so both peers share
one core), secret-stream on top with keys from a Noise IK handshake, then

* throughput: ``--megabytes`` of ``--message-bytes`` messages one way (MB/s, 10^6 bytes), and
* round trip: ``--round-trips`` sequential 21-byte messages echoed back (median, microseconds).

The Node side is ``bench/node/transport_stream.mjs`` (run from the repository root so the
pinned ``node_modules`` resolve). The last line printed is JSON with both figures and the ratios.

Usage: .venv/bin/python bench/transport_stream.py [--megabytes 64] [--message-bytes 65536]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import trio

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from p2p_transport import crypto  # noqa: E402
from p2p_transport.noise import HandshakeResult, dht_handshake  # noqa: E402
from p2p_transport.secret_stream import SecretStream  # noqa: E402
from p2p_transport.udx import UdxSocket  # noqa: E402


def handshake_pair() -> tuple[HandshakeResult, HandshakeResult]:
    server = crypto.key_pair()
    client = dht_handshake(crypto.key_pair(), server.public_key)
    responder = dht_handshake(server)
    responder.recv(client.send(b""))
    client.recv(responder.send(b""))
    assert client.result is not None and responder.result is not None
    return client.result, responder.result


async def python_bench(megabytes: int, message_bytes: int, round_trips: int) -> dict[str, float]:
    hi, hr = handshake_pair()
    async with UdxSocket.bind() as sa, UdxSocket.bind() as sb:
        ua, ub = sa.create_stream(), sb.create_stream()
        ua.connect(ub.id, sb.address)
        ub.connect(ua.id, sa.address)
        a = SecretStream(ua, True, hi, keepalive=None)
        b = SecretStream(ub, False, hr, keepalive=None)
        await a.start()
        await b.start()

        total = megabytes * 1024 * 1024
        msg = bytes(message_bytes)

        async def sender() -> None:
            sent = 0
            while sent < total:
                await a.send_message(msg)
                sent += len(msg)

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            received = 0
            while received < total:
                received += len(await b.receive_message())
        secs = time.perf_counter() - start
        throughput = total / secs / 1e6

        async def echo() -> None:
            while True:
                await b.send_message(await b.receive_message())

        ping = b"ping-0123456789abcdef"
        samples = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo)
            for _ in range(round_trips):
                t = time.perf_counter()
                await a.send_message(ping)
                await a.receive_message()
                samples.append((time.perf_counter() - t) * 1e6)
            nursery.cancel_scope.cancel()
        ua.destroy()
        ub.destroy()
    return {"throughput_MBps": throughput, "rtt_median_us": statistics.median(samples)}


def node_bench(megabytes: int, message_bytes: int, round_trips: int) -> dict[str, float]:
    out = subprocess.run(
        ["node", "bench/node/transport_stream.mjs", str(megabytes), str(message_bytes),
         str(round_trips)],
        cwd=REPO_ROOT, capture_output=True, check=True, timeout=600, text=True,
    ).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=64)
    parser.add_argument("--message-bytes", type=int, default=65536)
    parser.add_argument("--round-trips", type=int, default=2000)
    args = parser.parse_args()
    py = trio.run(python_bench, args.megabytes, args.message_bytes, args.round_trips)
    print(f"python<->python: {py['throughput_MBps']:.1f} MB/s, "
          f"round trip median {py['rtt_median_us']:.0f} us", flush=True)
    node = node_bench(args.megabytes, args.message_bytes, args.round_trips)
    print(f"node<->node:     {node['throughput_MBps']:.1f} MB/s, "
          f"round trip median {node['rtt_median_us']:.0f} us", flush=True)
    print(json.dumps({
        "bench": "transport_stream",
        "megabytes": args.megabytes,
        "message_bytes": args.message_bytes,
        "round_trips": args.round_trips,
        "python": py,
        "node": {k: node[k] for k in ("throughput_MBps", "rtt_median_us")},
        "ratios": {
            "throughput_python_over_node": py["throughput_MBps"] / node["throughput_MBps"],
            "rtt_node_over_python": node["rtt_median_us"] / py["rtt_median_us"],
        },
    }))


if __name__ == "__main__":
    main()
