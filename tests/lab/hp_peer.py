"""A Python HyperDHT peer for the holepunch lab runs, the twin of
``tests/interop2/node/nat_peer.mjs`` (same arguments, same JSON lines):

    server --bootstrap H:P        first line {"event": "listening", "publicKey": HEX}; echoes
    client --bootstrap H:P --key HEX [--count N] [--timeout S] [--relay HEX]
                                  N connects, each from a fresh DHT; one line per attempt:
                                  {"event": "open", "ms": ..., "echo": true} or
                                  {"event": "error", "code": ..., "message": ...}
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import trio

from p2p_transport.cenc import SocketAddress
from p2p_transport.dht_rpc import DhtError
from p2p_transport.hyperdht import HyperDht, RawConnection, secure
from p2p_transport.hyperdht.holepunch import HolepunchFailed


def say(obj: dict[str, object]) -> None:
    print(json.dumps(obj), flush=True)


async def serve(boot: SocketAddress) -> None:
    async with HyperDht.open("0.0.0.0", bootstrap=[boot]) as dht, trio.open_nursery() as nursery:

        async def on_connection(raw: RawConnection) -> None:
            try:
                stream = await secure(raw, nursery)
                while True:
                    await stream.send_all(await stream.receive_some())
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return

        server = dht.create_server(on_connection)
        await server.listen()
        say({"event": "listening", "publicKey": server.public_key.hex()})
        await trio.sleep_forever()


async def connect_once(boot: SocketAddress, key: bytes, timeout: float,
                       relay: bytes | None = None) -> dict[str, object]:
    try:
        async with HyperDht.open("0.0.0.0", bootstrap=[boot]) as dht, \
                trio.open_nursery() as nursery:
            t0 = time.perf_counter()
            with trio.fail_after(timeout):
                raw = await dht.connect(key, relay_through=relay)
                stream = await secure(raw, nursery)
                await stream.send_all(b"hi")
                echo = await stream.receive_some()
            ms = (time.perf_counter() - t0) * 1000
            await stream.aclose()
            nursery.cancel_scope.cancel()
            return {"event": "open", "ms": ms, "echo": echo == b"hi",
                    "relayed": raw.relayed}
    except Exception as raised:  # reported as a line, as the Node peer does
        exc: BaseException = raised
        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]  # a nursery's wrapping of the one error
        if isinstance(exc, HolepunchFailed):
            return {"event": "error", "code": exc.code, "message": str(exc)}
        if isinstance(exc, trio.TooSlowError):
            return {"event": "error", "code": "TIMEOUT", "message": "no echo in time"}
        if isinstance(exc, (DhtError, trio.BrokenResourceError, trio.ClosedResourceError)):
            return {"event": "error", "code": type(exc).__name__, "message": str(exc)}
        raise
    raise AssertionError("unreachable")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["server", "client"])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--key")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--relay", help="a blind relay's key (hyperdht relayThrough)")
    args = p.parse_args()
    host, port = args.bootstrap.rsplit(":", 1)
    boot = SocketAddress(host, int(port))
    if args.mode == "server":
        trio.run(serve, boot)
        return 0
    for _ in range(args.count):
        relay = bytes.fromhex(args.relay) if args.relay else None
        say(trio.run(connect_once, boot, bytes.fromhex(args.key), args.timeout, relay))
    return 0


if __name__ == "__main__":
    sys.exit(main())
