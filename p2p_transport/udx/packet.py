"""The UDX packet: a 20-byte little-endian header, optional SACK blocks, then the payload.

Layout (libudx ``udx_write_header``): magic 0xFF, version 1, type flags, data_offset, the
receiver's stream id, the sender's receive window in bytes, seq, cumulative ack.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..cenc import RemoteProtocolError

__all__ = [
    "HEADER_SIZE",
    "MAX_PAYLOAD",
    "Packet",
    "PacketError",
    "is_udx",
    "seq_diff",
]

MAGIC = 0xFF
VERSION = 1
HEADER_SIZE = 20
#: Payload bytes per packet at libudx's base MTU over IPv4 (1200 - 48).
MAX_PAYLOAD = 1152
#: libudx reads every datagram into a 2048-byte buffer; never send more.
MAX_DATAGRAM = 2048
MAX_SACKS = 50

DATA = 0x01
END = 0x02
SACK = 0x04
MESSAGE = 0x08
DESTROY = 0x10
HEARTBEAT = 0x20

_HEADER = struct.Struct("<BBBBIIII")


class PacketError(RemoteProtocolError):
    """A datagram that claims to be UDX but is malformed."""


def seq_diff(a: int, b: int) -> int:
    """Signed 32-bit serial-number difference ``a - b``."""
    return ((a - b + 0x80000000) & 0xFFFFFFFF) - 0x80000000


def is_udx(data: bytes) -> bool:
    """Cheap check used for demultiplexing; the stream id must still match a live stream."""
    return len(data) >= HEADER_SIZE and data[0] == MAGIC and data[1] == VERSION


@dataclass(slots=True)
class Packet:
    type: int
    stream_id: int
    rwnd: int
    seq: int
    ack: int
    payload: bytes = b""
    sacks: tuple[tuple[int, int], ...] = ()
    data_offset: int = 0

    def encode(self) -> bytes:
        kind = self.type | (SACK if self.sacks else 0)
        head = _HEADER.pack(MAGIC, VERSION, kind, self.data_offset, self.stream_id,
                            self.rwnd, self.seq, self.ack)
        if self.sacks:
            blocks = b"".join(struct.pack("<II", s, e) for s, e in self.sacks[:MAX_SACKS])
            if self.payload:
                # data_offset delimits the SACK area when a payload follows it
                head = head[:3] + bytes([len(blocks)]) + head[4:]
            return head + blocks + self.payload
        if self.data_offset:
            return head + bytes(self.data_offset) + self.payload
        return head + self.payload

    @classmethod
    def decode(cls, data: bytes) -> Packet:
        if not is_udx(data):
            raise PacketError("not a UDX packet (bad length, magic or version)")
        _, _, kind, data_offset, stream_id, rwnd, seq, ack = _HEADER.unpack_from(data)
        sacks: tuple[tuple[int, int], ...] = ()
        body = memoryview(data)[HEADER_SIZE:]
        if kind & SACK:
            # data_offset, when set and inside the packet, delimits the SACK area
            area = data_offset if 0 < data_offset <= len(body) else len(body)
            n = min(area // 8, MAX_SACKS)
            sacks = tuple(struct.unpack_from("<II", body, 8 * i) for i in range(n))
            payload = bytes(body[area:]) if kind & (DATA | MESSAGE) else b""
        else:
            if data_offset > len(body):
                raise PacketError("data_offset beyond the end of the packet")
            payload = bytes(body[data_offset:])
        return cls(kind, stream_id, rwnd, seq, ack, payload, sacks, data_offset)
