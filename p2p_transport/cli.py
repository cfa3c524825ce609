"""The ``python -m p2p_transport`` command line: operator and test entry points.

Every subcommand logs to stderr, prints its machine-readable lines to stdout (flushed at once)
and exits cleanly on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence

import trio

from p2p_transport.cenc import SocketAddress
from p2p_transport.crypto import hash as blake2b
from p2p_transport.crypto import key_pair
from p2p_transport.dht_rpc import DhtError, DhtNode, UdpSocket
from p2p_transport.hyperdht import HyperDht
from p2p_transport.hyperdht.storage import WILDCARD_HOST, StorageNode
from p2p_transport.hyperswarm import Hyperswarm, SwarmConnection
from p2p_transport.rpc import HyperswarmRpc, RpcError
from p2p_transport.testnet import DEFAULT_SIZE, MAX_SIZE, open_testnet

__all__ = ["main", "parse_address", "topic_from_text"]

log = logging.getLogger("p2p_transport")


def parse_address(text: str) -> SocketAddress:
    """``HOST:PORT`` -> :class:`SocketAddress` (argparse type)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return SocketAddress(host, int(port))


def topic_from_text(text: str) -> bytes:
    """64 hex characters are a raw topic; anything else is a name, hashed with BLAKE2b-256 of
    its UTF-8 bytes (the documented Tether topic key, and hypercore-crypto's ``hash``)."""
    if len(text) == 64:
        try:
            return bytes.fromhex(text)
        except ValueError:
            pass
    return blake2b(text.encode())


def _hex_arg(n: int | None = None) -> Callable[[str], bytes]:
    def parse(text: str) -> bytes:
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not hex: {text!r}") from None
        if n is not None and len(raw) != n:
            raise argparse.ArgumentTypeError(f"expected {n} bytes ({2 * n} hex characters)")
        return raw

    return parse


def _concrete_host(text: str) -> str:
    if text == WILDCARD_HOST:
        raise argparse.ArgumentTypeError("storage nodes derive their ids from their address: "
                                         "give the address others reach, not 0.0.0.0")
    return text


def _testnet_size(text: str) -> int:
    if not text.isdigit() or not 2 <= int(text) <= MAX_SIZE:
        raise argparse.ArgumentTypeError(f"expected 2..{MAX_SIZE} nodes, got {text!r}")
    return int(text)


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _until_signal(body: Callable[[trio.Event], Awaitable[None]]) -> None:
    """Run ``body(stop)`` until it returns; SIGINT/SIGTERM set ``stop`` so that the body can
    leave its contexts normally (unannounce, close connections) with the network still up.
    A second signal, or 10 s without a clean exit, cancels everything."""
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

            async def watch() -> None:
                async for signum in signals:
                    log.info("signal %s: shutting down", signal.Signals(signum).name)
                    if stop.is_set():
                        break
                    stop.set()
                    nursery.start_soon(deadline)
                nursery.cancel_scope.cancel()

            async def deadline() -> None:
                await trio.sleep(10)
                log.warning("clean shutdown took too long; cancelling")
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            await body(stop)
            nursery.cancel_scope.cancel()


async def _bootstrap(args: argparse.Namespace) -> None:
    if args.persistent and args.host == WILDCARD_HOST:
        log.error("a storage node derives its id from its address: give --host the address "
                  "others reach, not 0.0.0.0")
        raise SystemExit(2)
    sock = await UdpSocket.bind(args.host, args.port)
    storage = StorageNode(sock, bootstrap=args.bootstrap) if args.persistent else None
    node = storage.node if storage is not None else DhtNode(sock, bootstrap=args.bootstrap)

    async def body(stop: trio.Event) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            await nursery.start(sock.serve, node.datagram_received)
            if storage is not None and args.bootstrap:
                await storage.bootstrap()
            addr = sock.local_address
            _say(f"listening {addr.host}:{addr.port}")
            await stop.wait()
            nursery.cancel_scope.cancel()

    try:
        await _until_signal(body)
    finally:
        sock.close()


async def _testnet(args: argparse.Namespace) -> None:
    async def body(stop: trio.Event) -> None:
        async with open_testnet(args.nodes, host=args.host, port=args.port) as testnet:
            _say(json.dumps({"bootstrap": [f"{a.host}:{a.port}" for a in testnet.bootstrap]}))
            await stop.wait()

    await _until_signal(body)


def _echo(value: bytes | None) -> bytes | None:
    return value


async def _rpc_serve(args: argparse.Namespace) -> None:
    kp = key_pair(args.seed) if args.seed else key_pair()

    async def body(stop: trio.Event) -> None:
        async with HyperDht.open(args.host, args.port, bootstrap=args.bootstrap,
                                 key_pair_=kp) as dht:
            rpc = HyperswarmRpc(dht, capability_key=args.capability)
            await rpc.serve({"echo": _echo}, announce=bool(args.bootstrap))
            _say(kp.public_key.hex())
            addr = dht.local_address
            log.info("serving @hyperswarm/rpc on %s:%d", addr.host, addr.port)
            await stop.wait()

    await _until_signal(body)


async def _rpc_call(args: argparse.Namespace) -> None:
    failed: list[str] = []

    async def body(stop: trio.Event) -> None:
        async with HyperDht.open(args.host, bootstrap=args.bootstrap) as dht:
            rpc = HyperswarmRpc(dht, capability_key=args.capability)
            try:
                with trio.fail_after(args.timeout):
                    rpc_channel = await rpc.connect(args.key, relay_addresses=args.address)
                    value = await rpc_channel.request(args.method, args.data)
            except RpcError as exc:
                cause = ""
                if exc.cause_message is not None:
                    code = f" [{exc.cause_code}]" if exc.cause_code else ""
                    cause = f" (cause: {exc.cause_message}{code})"
                failed.append(f"error {exc}{cause}")
            except (DhtError, trio.TooSlowError, trio.BrokenResourceError) as exc:
                failed.append(f"error {type(exc).__name__}: {exc}")
            else:
                _say((value or b"").hex())
            finally:
                await rpc.aclose()

    await _until_signal(body)
    if failed:
        _say(failed[0])
        raise SystemExit(1)


async def _swarm(args: argparse.Namespace) -> None:
    topic = topic_from_text(args.topic)
    server, client = args.server, args.client
    if not server and not client:
        server = client = True

    async def on_connection(conn: SwarmConnection) -> None:
        remote = conn.remote_public_key.hex()
        _say(f"connected {remote}")
        if args.send is not None:
            await conn.send_message(args.send.encode())
        while True:
            try:
                msg = await conn.receive_message()
            except trio.EndOfChannel:
                log.info("connection to %s closed", remote)
                return
            _say(f"data {remote} {msg.decode(errors='replace')}")

    async def body(stop: trio.Event) -> None:
        async with Hyperswarm.open(on_connection, bootstrap=args.bootstrap, host=args.host,
                                   port=args.port) as swarm:
            log.info("joining %s as %s", topic.hex(),
                     "+".join(m for m, on in (("server", server), ("client", client)) if on))
            swarm.join(topic, server=server, client=client)
            await swarm.flush()
            log.info("flushed; public key %s", swarm.key_pair.public_key.hex())
            await stop.wait()

    await _until_signal(body)


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
    b.add_argument("--persistent", action="store_true",
                   help="store announcements and relay handshakes (a storage node)")
    common(b)

    t = sub.add_parser("testnet", help="run a bootstrap node and storage nodes on one host")
    t.add_argument("--host", type=_concrete_host, default="127.0.0.1")
    t.add_argument("--port", type=int, default=0, help="bootstrap node port (0: any free port)")
    t.add_argument("--nodes", type=_testnet_size, default=DEFAULT_SIZE,
                   help="nodes in all, the bootstrap node included (at least 2)")

    s = sub.add_parser("rpc-serve", help="serve 'echo' with @hyperswarm/rpc semantics")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--seed", type=_hex_arg(32), help="32-byte key-pair seed (hex)")
    s.add_argument("--capability", type=_hex_arg(32), help="32-byte capability key (hex)")
    common(s)

    c = sub.add_parser("rpc-call", help="call a method on an @hyperswarm/rpc server")
    c.add_argument("--key", type=_hex_arg(32), required=True, help="server public key (hex)")
    c.add_argument("--method", required=True)
    c.add_argument("--data", type=_hex_arg(), default=b"", help="request value (hex)")
    c.add_argument("--capability", type=_hex_arg(32), help="32-byte capability key (hex)")
    c.add_argument("--address", action="append", type=parse_address, default=[],
                   metavar="H:P", help="try this node (or the server itself) first")
    c.add_argument("--timeout", type=float, default=30.0)
    c.add_argument("--host", default="127.0.0.1", help="local address to bind")
    common(c)

    w = sub.add_parser("swarm", help="join a topic and print connections and messages")
    w.add_argument("--topic", required=True,
                   help="topic name (hashed with BLAKE2b-256) or 64 hex characters")
    w.add_argument("--server", action="store_true", help="announce the topic")
    w.add_argument("--client", action="store_true", help="look the topic up and connect")
    w.add_argument("--send", help="text to send on each new connection")
    w.add_argument("--host", default="127.0.0.1")
    w.add_argument("--port", type=int, default=0)
    common(w)
    return p


_COMMANDS: dict[str, Callable[[argparse.Namespace], Awaitable[None]]] = {
    "bootstrap": _bootstrap,
    "rpc-serve": _rpc_serve,
    "rpc-call": _rpc_call,
    "swarm": _swarm,
    "testnet": _testnet,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        trio.run(_COMMANDS[args.command], args)
    except KeyboardInterrupt:
        return 130
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0
