"""A bound UDP socket for trio with a synchronous, never-blocking send, for a node that carries
dht-rpc only (a bootstrap or storage node). Peers that also carry UDX streams use
:class:`p2p_transport.udx.UdxSocket`, which hands non-UDX datagrams (``0x03``/``0x13``: dht-rpc,
see :func:`~p2p_transport.dht_rpc.is_dht_rpc`) to the DHT. Sends are fire-and-forget, as UDP
is: a full kernel buffer drops the datagram.
"""

from __future__ import annotations

import errno
import socket as _stdsocket
from collections.abc import Callable
from typing import Protocol

import trio

from p2p_transport.cenc import SocketAddress

__all__ = ["DatagramHandler", "DatagramTransport", "UdpSocket"]

#: Node receives datagrams into 2048-byte buffers; larger ones arrive truncated there.
MAX_DATAGRAM = 2048
_RECV_SIZE = 65536

DatagramHandler = Callable[[bytes, SocketAddress], None]


class DatagramTransport(Protocol):
    """Where a protocol core's datagrams go. ``send_datagram`` must not block."""

    @property
    def local_address(self) -> SocketAddress: ...

    def send_datagram(self, data: bytes, addr: SocketAddress) -> None: ...


class UdpSocket:
    """An IPv4 UDP socket. Create with :meth:`bind`; run :meth:`serve` in a nursery."""

    def __init__(self, sock: _stdsocket.socket) -> None:
        self._std = sock
        self._trio = trio.socket.from_stdlib_socket(sock)
        host, port = sock.getsockname()
        self._local = SocketAddress(host, port)
        self.sent = 0
        self.dropped = 0

    @classmethod
    async def bind(cls, host: str = "127.0.0.1", port: int = 0) -> UdpSocket:
        sock = _stdsocket.socket(_stdsocket.AF_INET, _stdsocket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        await trio.lowlevel.checkpoint()
        return cls(sock)

    @property
    def local_address(self) -> SocketAddress:
        return self._local

    def send_datagram(self, data: bytes, addr: SocketAddress) -> None:
        try:
            self._std.sendto(data, (addr.host, addr.port))
            self.sent += 1
        except OSError as exc:
            # UDP is lossy by contract: a full buffer or an unreachable host loses the datagram.
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ECONNREFUSED,
                                 errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EINVAL,
                                 errno.EPERM, errno.EMSGSIZE):
                raise
            self.dropped += 1

    async def serve(self, handler: DatagramHandler, *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Receive forever, calling ``handler(data, addr)`` for each datagram."""
        task_status.started()
        while True:
            try:
                data, (host, port) = await self._trio.recvfrom(_RECV_SIZE)
            except ConnectionRefusedError:
                continue  # ICMP port unreachable from an earlier send; not our business
            handler(data, SocketAddress(host, port))

    def close(self) -> None:
        self._trio.close()
