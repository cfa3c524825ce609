"""dht-rpc datagrams: the request and response codecs, node ids and the command numbers.

One UDP datagram is one message. Byte 0 is ``0x03`` (request) or ``0x13`` (response); any other
first byte is not dht-rpc (UDX packets start with ``0xFF``, holepunch probes are one byte) and
:func:`is_dht_rpc` says so without decoding. All integers are little-endian compact-encoding.

This module knows nothing about sockets, timers or the routing table.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from p2p_transport.cenc import Reader, RemoteProtocolError, SocketAddress, Writer

__all__ = [
    "DELAYED_PING",
    "DOWN_HINT",
    "FIND_NODE",
    "INVALID_TOKEN",
    "PING",
    "PING_NAT",
    "REQUEST_BYTE",
    "RESPONSE_BYTE",
    "UNKNOWN_COMMAND",
    "DhtRpcProtocolError",
    "Request",
    "Response",
    "decode_message",
    "encode_request",
    "encode_response",
    "is_dht_rpc",
    "node_id",
]

REQUEST_BYTE = 0x03
RESPONSE_BYTE = 0x13

# Internal commands (request flag bit 4). User commands share these numbers: only the
# ``internal`` flag tells them apart.
PING = 0
PING_NAT = 1
FIND_NODE = 2
DOWN_HINT = 3
DELAYED_PING = 4

# Response error codes.
UNKNOWN_COMMAND = 1
INVALID_TOKEN = 2

_REQ_ID, _REQ_TOKEN, _REQ_INTERNAL, _REQ_TARGET, _REQ_VALUE = 1, 2, 4, 8, 16
_RES_ID, _RES_TOKEN, _RES_CLOSER, _RES_ERROR, _RES_VALUE = 1, 2, 4, 8, 16


class DhtRpcProtocolError(RemoteProtocolError):
    """A datagram that claims to be dht-rpc but cannot be decoded."""


def node_id(addr: SocketAddress) -> bytes:
    """A node's id: BLAKE2b-256 of its 6-byte ``ipv4Address``."""
    w = Writer().ipv4_address(addr)
    return hashlib.blake2b(w.getvalue(), digest_size=32).digest()


def _check32(name: str, b: bytes | None) -> None:
    if b is not None and len(b) != 32:
        raise ValueError(f"{name} must be 32 bytes, got {len(b)}")


@dataclass(frozen=True, slots=True)
class Request:
    """A dht-rpc request. ``to`` is the destination as the sender sees it."""

    tid: int
    to: SocketAddress
    command: int
    internal: bool = False
    id: bytes | None = None
    token: bytes | None = None
    target: bytes | None = None
    value: bytes | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.tid <= 0xFFFF:
            raise ValueError(f"tid {self.tid} out of range")
        _check32("id", self.id)
        _check32("token", self.token)
        _check32("target", self.target)


@dataclass(frozen=True, slots=True)
class Response:
    """A dht-rpc response. ``to`` is the requester's address as the responder saw it."""

    tid: int
    to: SocketAddress
    id: bytes | None = None
    token: bytes | None = None
    closer_nodes: tuple[SocketAddress, ...] = ()
    error: int = 0
    value: bytes | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.tid <= 0xFFFF:
            raise ValueError(f"tid {self.tid} out of range")
        _check32("id", self.id)
        _check32("token", self.token)


def encode_request(req: Request) -> bytes:
    flags = (
        (_REQ_ID if req.id is not None else 0)
        | (_REQ_TOKEN if req.token is not None else 0)
        | (_REQ_INTERNAL if req.internal else 0)
        | (_REQ_TARGET if req.target is not None else 0)
        | (_REQ_VALUE if req.value is not None else 0)
    )
    w = Writer().uint8(REQUEST_BYTE).uint(flags).uint16(req.tid).ipv4_address(req.to)
    if req.id is not None:
        w.fixed32(req.id)
    if req.token is not None:
        w.fixed32(req.token)
    w.uint(req.command)
    if req.target is not None:
        w.fixed32(req.target)
    if req.value is not None:
        w.buffer(req.value)
    return w.getvalue()


def encode_response(res: Response) -> bytes:
    flags = (
        (_RES_ID if res.id is not None else 0)
        | (_RES_TOKEN if res.token is not None else 0)
        | (_RES_CLOSER if res.closer_nodes else 0)
        | (_RES_ERROR if res.error > 0 else 0)
        | (_RES_VALUE if res.value is not None else 0)
    )
    w = Writer().uint8(RESPONSE_BYTE).uint(flags).uint16(res.tid).ipv4_address(res.to)
    if res.id is not None:
        w.fixed32(res.id)
    if res.token is not None:
        w.fixed32(res.token)
    if res.closer_nodes:
        w.array(list(res.closer_nodes), Writer.ipv4_address)
    if res.error > 0:
        w.uint(res.error)
    if res.value is not None:
        w.buffer(res.value)
    return w.getvalue()


def is_dht_rpc(data: bytes) -> bool:
    """True when the datagram is addressed to dht-rpc (by its first byte; at least 2 bytes)."""
    return len(data) >= 2 and data[0] in (REQUEST_BYTE, RESPONSE_BYTE)


def decode_message(data: bytes) -> Request | Response:
    """Decode one datagram. Raises :class:`DhtRpcProtocolError` for anything malformed.

    Trailing bytes are ignored, as the JS decoder does.
    """
    if not is_dht_rpc(data):
        raise DhtRpcProtocolError("not a dht-rpc datagram")
    try:
        r = Reader(data, 1)
        flags = r.uint()
        tid = r.uint16()
        to = r.ipv4_address()
        if data[0] == REQUEST_BYTE:
            id_ = r.fixed32() if flags & _REQ_ID else None
            token = r.fixed32() if flags & _REQ_TOKEN else None
            command = r.uint()
            target = r.fixed32() if flags & _REQ_TARGET else None
            value = r.buffer() if flags & _REQ_VALUE else None
            return Request(tid, to, command, bool(flags & _REQ_INTERNAL), id_, token, target,
                           value)
        id_ = r.fixed32() if flags & _RES_ID else None
        token = r.fixed32() if flags & _RES_TOKEN else None
        closer = tuple(r.array(Reader.ipv4_address)) if flags & _RES_CLOSER else ()
        error = r.uint() if flags & _RES_ERROR else 0
        value = r.buffer() if flags & _RES_VALUE else None
        return Response(tid, to, id_, token, closer, error, value)
    except RemoteProtocolError as exc:
        raise DhtRpcProtocolError(f"malformed dht-rpc message: {exc}") from exc
