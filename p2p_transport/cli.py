"""The ``python -m p2p_transport`` command line: operator and test entry points.

Every subcommand logs to stderr, prints its machine-readable lines to stdout (flushed at once)
and exits cleanly on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence

import trio

from p2p_transport.cenc import SocketAddress
from p2p_transport.dht_rpc import DhtNode, UdpSocket

__all__ = ["main", "parse_address"]

log = logging.getLogger("p2p_transport")


def parse_address(text: str) -> SocketAddress:
    """``HOST:PORT`` -> :class:`SocketAddress` (argparse type)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return SocketAddress(host, int(port))


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _until_signal(body: Callable[[trio.Nursery], Awaitable[None]]) -> None:
    """Run ``body`` until SIGINT/SIGTERM or until it returns."""
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

            async def watch() -> None:
                async for signum in signals:
                    log.info("signal %s: shutting down", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(watch)
            await body(nursery)
            nursery.cancel_scope.cancel()


async def _bootstrap(args: argparse.Namespace) -> None:
    sock = await UdpSocket.bind(args.host, args.port)
    node = DhtNode(sock, bootstrap=args.bootstrap)

    async def body(nursery: trio.Nursery) -> None:
        await nursery.start(node.run)
        await nursery.start(sock.serve, node.datagram_received)
        addr = sock.local_address
        _say(f"listening {addr.host}:{addr.port}")
        await trio.sleep_forever()

    try:
        await _until_signal(body)
    finally:
        sock.close()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m p2p_transport",
                                description="Hyperswarm-compatible transport tools")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--bootstrap", action="append", type=parse_address, default=[],
                        metavar="H:P", help="DHT bootstrap node (repeatable)")

    b = sub.add_parser("bootstrap", help="run a DHT bootstrap node")
    b.add_argument("--host", default="127.0.0.1")
    b.add_argument("--port", type=int, default=49737)
    common(b)
    return p


_COMMANDS: dict[str, Callable[[argparse.Namespace], Awaitable[None]]] = {
    "bootstrap": _bootstrap,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        trio.run(_COMMANDS[args.command], args)
    except KeyboardInterrupt:
        return 130
    return 0
