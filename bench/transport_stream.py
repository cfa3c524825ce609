"""Encrypted stream throughput and small-message round trip: Python<->Python vs Node<->Node.

Both implementations run the same shape on 127.0.0.1: two UDX sockets, secret-stream on top with
keys from a Noise IK handshake (as hyperdht does), then

* throughput: ``--megabytes`` of ``--message-bytes`` messages one way, timed until the receiver
  confirms the last byte (MB/s, 10^6 bytes per second), and
* round trip: ``--round-trips`` sequential 21-byte messages echoed back (median, microseconds).

Two layouts are measured: both peers in one process (they share one core), and each peer in its
own process. The Node side is ``bench/node/transport_stream.mjs``, run from the repository root
so that the pinned ``node_modules`` resolve. The last line printed is JSON with every figure and
the Python/Node ratios.

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
from typing import Any

import trio

THIS_FILE = Path(__file__).resolve()
REPO_ROOT = THIS_FILE.parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from p2p_transport import crypto  # noqa: E402
from p2p_transport.noise import HandshakeResult, dht_handshake  # noqa: E402
from p2p_transport.secret_stream import SecretStream  # noqa: E402
from p2p_transport.udx import UdxSocket, UdxStream  # noqa: E402

PING = b"ping-0123456789abcdef"
DONE = b"done"


def handshake_pair() -> tuple[HandshakeResult, HandshakeResult]:
    server = crypto.key_pair()
    client = dht_handshake(crypto.key_pair(), server.public_key)
    responder = dht_handshake(server)
    responder.recv(client.send(b""))
    client.recv(responder.send(b""))
    assert client.result is not None and responder.result is not None
    return client.result, responder.result


def _hs_to_json(h: HandshakeResult) -> dict[str, Any]:
    return {"isInitiator": h.is_initiator, "publicKey": h.public_key.hex(),
            "remotePublicKey": h.remote_public_key.hex(), "hash": h.hash.hex(),
            "tx": h.tx.hex(), "rx": h.rx.hex()}


def _hs_from_json(d: dict[str, Any]) -> HandshakeResult:
    return HandshakeResult(d["isInitiator"], bytes.fromhex(d["publicKey"]),
                           bytes.fromhex(d["remotePublicKey"]), bytes.fromhex(d["hash"]),
                           bytes.fromhex(d["tx"]), bytes.fromhex(d["rx"]))


async def serve(s: SecretStream, total: int) -> None:
    """Receiver side: count ``total`` bytes, confirm with DONE, then echo until EOF."""
    received = 0
    while received < total:
        received += len(await s.receive_message())
    await s.send_message(DONE)
    while True:
        try:
            msg = await s.receive_message()
        except trio.EndOfChannel:
            return
        await s.send_message(msg)


async def drive(s: SecretStream, total: int, message_bytes: int,
                round_trips: int) -> dict[str, float]:
    """Sender side: the throughput run, then sequential round trips."""
    msg = bytes(message_bytes)
    start = time.perf_counter()
    sent = 0
    while sent < total:
        await s.send_message(msg)
        sent += len(msg)
    assert await s.receive_message() == DONE
    throughput = total / (time.perf_counter() - start) / 1e6
    samples = []
    for _ in range(round_trips):
        t = time.perf_counter()
        await s.send_message(PING)
        await s.receive_message()
        samples.append((time.perf_counter() - t) * 1e6)
    return {"throughput_MBps": throughput, "rtt_median_us": statistics.median(samples)}


async def python_same_process(megabytes: int, message_bytes: int,
                              round_trips: int) -> dict[str, float]:
    hi, hr = handshake_pair()
    total = megabytes * 1024 * 1024
    async with UdxSocket.bind() as sa, UdxSocket.bind() as sb:
        ua, ub = sa.create_stream(), sb.create_stream()
        ua.connect(ub.id, sb.address)
        ub.connect(ua.id, sa.address)
        a = SecretStream(ua, True, hi, keepalive=None)
        b = SecretStream(ub, False, hr, keepalive=None)
        await a.start()
        await b.start()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, b, total)
            result = await drive(a, total, message_bytes, round_trips)
            nursery.cancel_scope.cancel()
        result |= _loss_stats(ua)
        ua.destroy()
        ub.destroy()
    return result


def _loss_stats(sender: UdxStream) -> dict[str, float]:
    st = sender.core.stats
    return {"retransmissions": st.retransmissions, "rto_timeouts": st.rto_timeouts}


async def _read_json_line(stream: trio.abc.ReceiveStream, buf: bytearray) -> dict[str, Any]:
    while b"\n" not in buf:
        chunk = await stream.receive_some()
        if not chunk:
            raise RuntimeError("bench peer exited early")
        buf += chunk
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    result: dict[str, Any] = json.loads(line)
    return result


async def python_two_processes(megabytes: int, message_bytes: int,
                               round_trips: int) -> dict[str, float]:
    hi, hr = handshake_pair()
    total = megabytes * 1024 * 1024
    proc = await trio.lowlevel.open_process(
        [sys.executable, str(THIS_FILE), "--serve"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=str(REPO_ROOT))
    assert proc.stdin is not None and proc.stdout is not None
    buf = bytearray()
    try:
        with trio.fail_after(600):
            peer = await _read_json_line(proc.stdout, buf)
            async with UdxSocket.bind() as sock:
                raw = sock.create_stream()
                await proc.stdin.send_all(json.dumps({
                    "handshake": _hs_to_json(hr), "port": sock.address[1], "id": raw.id,
                    "total": total}).encode() + b"\n")
                raw.connect(peer["id"], ("127.0.0.1", peer["port"]))
                s = SecretStream(raw, True, hi, keepalive=None)
                await s.start()
                result = await drive(s, total, message_bytes, round_trips)
                result |= _loss_stats(raw)
                await s.send_eof()
                await _read_json_line(proc.stdout, buf)  # the peer is done
                raw.destroy()
    finally:
        await proc.stdin.aclose()
        with trio.move_on_after(5):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
    return result


async def serve_subprocess() -> None:
    """The second process of :func:`python_two_processes`; talks JSON lines on stdio."""
    stdin = trio.lowlevel.FdStream(sys.stdin.fileno())
    buf = bytearray()
    async with UdxSocket.bind() as sock:
        raw: UdxStream = sock.create_stream()
        print(json.dumps({"port": sock.address[1], "id": raw.id}), flush=True)
        cfg = await _read_json_line(stdin, buf)
        raw.connect(cfg["id"], ("127.0.0.1", cfg["port"]))
        s = SecretStream(raw, False, _hs_from_json(cfg["handshake"]), keepalive=None)
        await s.start()
        await serve(s, cfg["total"])
        await s.aclose()
        print(json.dumps({"done": True}), flush=True)


def node_bench(megabytes: int, message_bytes: int, round_trips: int,
               layout: str) -> dict[str, float]:
    out = subprocess.run(
        ["node", "bench/node/transport_stream.mjs", str(megabytes), str(message_bytes),
         str(round_trips), layout],
        cwd=REPO_ROOT, capture_output=True, check=True, timeout=600, text=True,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return {k: float(result[k]) for k in ("throughput_MBps", "rtt_median_us")}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=64)
    parser.add_argument("--message-bytes", type=int, default=65536)
    parser.add_argument("--round-trips", type=int, default=2000)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        trio.run(serve_subprocess)
        return
    shape = (args.megabytes, args.message_bytes, args.round_trips)
    figures: dict[str, dict[str, dict[str, float]]] = {}
    for layout, py_fn in (("same_process", python_same_process),
                          ("two_processes", python_two_processes)):
        py = trio.run(py_fn, *shape)
        node = node_bench(*shape, layout)
        figures[layout] = {
            "python": py,
            "node": node,
            "ratios": {
                "throughput_python_over_node": py["throughput_MBps"] / node["throughput_MBps"],
                "rtt_node_over_python": node["rtt_median_us"] / py["rtt_median_us"],
            },
        }
        for impl, f in (("python", py), ("node", node)):
            extra = (f" (sender retransmissions {f['retransmissions']:.0f}, "
                     f"RTO timeouts {f['rto_timeouts']:.0f})" if "rto_timeouts" in f else "")
            print(f"{layout:13} {impl:6}<->{impl:6}: {f['throughput_MBps']:6.1f} MB/s, "
                  f"round trip median {f['rtt_median_us']:5.0f} us{extra}", flush=True)
    print(json.dumps({"bench": "transport_stream", "megabytes": args.megabytes,
                      "message_bytes": args.message_bytes, "round_trips": args.round_trips,
                      **figures}))


if __name__ == "__main__":
    main()
