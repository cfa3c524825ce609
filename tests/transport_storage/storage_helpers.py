"""Helpers for the storage-node tests: signed announcements and a recording transport."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import trio

from p2p_transport.cenc import SocketAddress
from p2p_transport.crypto import NS_ANNOUNCE, NS_UNANNOUNCE, KeyPair, sign
from p2p_transport.crypto import hash as blake2b
from p2p_transport.dht_rpc import node_id
from p2p_transport.hyperdht.messages import Announce, PeerRecord, encode_announce
from p2p_transport.hyperdht.persistent import signable
from tests import node_env

NODE = SocketAddress("127.0.0.1", 49737)
NODE_ID = node_id(NODE)
CLIENT = SocketAddress("127.0.0.1", 40001)
SERVER = SocketAddress("127.0.0.1", 40002)
TOKEN = bytes(range(32))


def seeded_key_pair(n: int) -> KeyPair:
    from p2p_transport.crypto import key_pair

    return key_pair(hashlib.sha256(str(n).encode()).digest())


def announce_value(kp: KeyPair, target: bytes, *, token: bytes = TOKEN, nid: bytes = NODE_ID,
                   relays: tuple[SocketAddress, ...] = (), refresh: bytes | None = None,
                   bump: int = 0, unannounce: bool = False, signer: KeyPair | None = None
                   ) -> bytes:
    """An ANNOUNCE (or UNANNOUNCE) value signed as hyperdht signs it."""
    peer = PeerRecord(kp.public_key, relays)
    ns = NS_UNANNOUNCE if unannounce else NS_ANNOUNCE
    message = signable(target, token, nid, peer, refresh=refresh, namespace=ns)
    signature = sign(message, (signer or kp).secret_key)
    return encode_announce(Announce(peer, refresh, signature, bump))


def self_target(kp: KeyPair) -> bytes:
    return blake2b(kp.public_key)


class RecordingTransport:
    """A datagram transport that only records what is sent (test double for UdpSocket)."""

    def __init__(self, addr: SocketAddress = NODE) -> None:
        self._addr = addr
        self.sent: list[tuple[bytes, SocketAddress]] = []

    @property
    def local_address(self) -> SocketAddress:
        return self._addr

    def send_datagram(self, data: bytes, addr: SocketAddress) -> None:
        self.sent.append((data, addr))


# -- Node peers ---------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
SWARM_PEER = ROOT / "tests" / "interop2" / "node" / "swarm_peer.mjs"
LOOPBACK_SWARM_PEER = Path(__file__).resolve().parent / "node" / "loopback_swarm_peer.mjs"


class NodePeer:
    """A Node fixture script spoken to in JSON lines over stdin/stdout."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self._buf = b""

    async def expect_json(self, event: str) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while True:
            while b"\n" not in self._buf:
                chunk = await self.proc.stdout.receive_some(65536)
                if not chunk:
                    raise EOFError(f"node exited; partial output {self._buf!r}")
                self._buf += chunk
            line, self._buf = self._buf.split(b"\n", 1)
            msg = json.loads(line)
            if msg.get("event") == event:
                return msg

    async def send_json(self, obj: Any) -> None:
        assert self.proc.stdin is not None
        await self.proc.stdin.send_all((json.dumps(obj) + "\n").encode())

    async def close(self) -> None:
        """EOF on stdin: the script destroys its swarm and exits."""
        assert self.proc.stdin is not None
        await self.proc.stdin.aclose()
        await self.proc.wait()


def require_node() -> str:
    return node_env.require_node("hyperswarm")


async def spawn_swarm_peer(nursery: trio.Nursery, *args: str,
                           script: Path = LOOPBACK_SWARM_PEER) -> NodePeer:
    """Start a Node Hyperswarm peer (by default one whose DHT binds 127.0.0.1)."""
    node = require_node()
    proc = await nursery.start(partial(trio.run_process, [node, str(script), *args],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       cwd=str(ROOT), check=False))
    return NodePeer(proc)


# -- an in-memory datagram network ---------------------------------------------------------


class MemoryNetwork:
    """Delivers datagrams between endpoints after a fixed delay, through trio tasks so that a
    MockClock drives it (test double for UDP sockets on loopback)."""

    def __init__(self, nursery: trio.Nursery, delay: float = 0.001) -> None:
        self.nursery = nursery
        self.delay = delay
        self.handlers: dict[SocketAddress, Callable[[bytes, SocketAddress], None]] = {}

    def endpoint(self, port: int) -> MemoryEndpoint:
        return MemoryEndpoint(self, SocketAddress("127.0.0.1", port))

    def send(self, src: SocketAddress, dst: SocketAddress, data: bytes) -> None:
        self.nursery.start_soon(self._deliver, src, dst, data)

    async def _deliver(self, src: SocketAddress, dst: SocketAddress, data: bytes) -> None:
        await trio.sleep(self.delay)
        handler = self.handlers.get(dst)
        if handler is not None:
            handler(data, src)


class MemoryEndpoint:
    """One address on a :class:`MemoryNetwork` (test double for ``UdpSocket``)."""

    def __init__(self, net: MemoryNetwork, addr: SocketAddress) -> None:
        self.net = net
        self.addr = addr

    @property
    def local_address(self) -> SocketAddress:
        return self.addr

    def send_datagram(self, data: bytes, addr: SocketAddress) -> None:
        self.net.send(self.addr, addr, data)

    def serve(self, handler: Callable[[bytes, SocketAddress], None]) -> None:
        self.net.handlers[self.addr] = handler
