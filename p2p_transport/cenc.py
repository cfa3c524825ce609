"""compact-encoding: the wire primitives of the Hyperswarm stack.

This module owns the byte-level codecs shared by every layer (UDX payload framing aside):
variable-length ``uint``, fixed little-endian integers, length-prefixed buffers and strings,
arrays, IPv4/IPv6 addresses, booleans and small bitfields. It mirrors the npm packages
``compact-encoding``, ``compact-encoding-net`` and ``compact-encoding-bitfield`` byte for byte.

It does not know any message struct: those live with the layer that owns them and are written as
plain functions over :class:`Reader` and :class:`Writer`.

Errors: :class:`DecodeError` (a :class:`RemoteProtocolError`) is the only exception a
:class:`Reader` raises on malformed input; :class:`EncodeError` (a :class:`LocalProtocolError`)
means the caller tried to write a value the format cannot hold.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from .errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "MAX_ARRAY_LENGTH",
    "MAX_SAFE_INTEGER",
    "DecodeError",
    "EncodeError",
    "LocalProtocolError",
    "Reader",
    "RemoteProtocolError",
    "SocketAddress",
    "Writer",
    "decode",
    "encode",
]

T = TypeVar("T")

#: Largest integer compact-encoding accepts (JavaScript's ``Number.MAX_SAFE_INTEGER``).
MAX_SAFE_INTEGER = 2**53 - 1
#: ``array(T)`` decoders refuse element counts above this (compact-encoding's bound).
MAX_ARRAY_LENGTH = 0x100000

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class DecodeError(RemoteProtocolError):
    """Malformed compact-encoding input (truncated, out of range, too long)."""


class EncodeError(LocalProtocolError, ValueError):
    """A value cannot be represented in the requested encoding."""


@dataclass(frozen=True, slots=True)
class SocketAddress:
    """A host and port as carried by ``ipv4Address`` / ``ipv6Address``."""

    host: str
    port: int

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 0xFFFF:
            raise EncodeError(f"port {self.port} out of range 0..65535")


def _check_uint(n: int, limit: int = MAX_SAFE_INTEGER) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or n < 0 or n > limit:
        raise EncodeError(f"{n!r} is not an unsigned integer <= {limit}")
    return n


class Writer:
    """Appends encoded values to a growing buffer. Every method returns ``self``."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def getvalue(self) -> bytes:
        return bytes(self._buf)

    def __len__(self) -> int:
        return len(self._buf)

    def uint(self, n: int) -> Writer:
        _check_uint(n)
        if n <= 0xFC:
            self._buf.append(n)
        elif n <= 0xFFFF:
            self._buf.append(0xFD)
            self._buf += _U16.pack(n)
        elif n <= 0xFFFFFFFF:
            self._buf.append(0xFE)
            self._buf += _U32.pack(n)
        else:
            self._buf.append(0xFF)
            self._buf += _U64.pack(n)
        return self

    def uint8(self, n: int) -> Writer:
        self._buf.append(_check_uint(n, 0xFF))
        return self

    def uint16(self, n: int) -> Writer:
        self._buf += _U16.pack(_check_uint(n, 0xFFFF))
        return self

    def uint24(self, n: int) -> Writer:
        self._buf += _check_uint(n, 0xFFFFFF).to_bytes(3, "little")
        return self

    def uint32(self, n: int) -> Writer:
        self._buf += _U32.pack(_check_uint(n, 0xFFFFFFFF))
        return self

    def uint64(self, n: int) -> Writer:
        self._buf += _U64.pack(_check_uint(n))
        return self

    def bool(self, b: bool) -> Writer:
        self._buf.append(1 if b else 0)
        return self

    def raw(self, b: bytes) -> Writer:
        self._buf += b
        return self

    def fixed(self, b: bytes, n: int) -> Writer:
        if len(b) != n:
            raise EncodeError(f"expected {n} bytes, got {len(b)}")
        self._buf += b
        return self

    def fixed32(self, b: bytes) -> Writer:
        return self.fixed(b, 32)

    def fixed64(self, b: bytes) -> Writer:
        return self.fixed(b, 64)

    def buffer(self, b: bytes | None) -> Writer:
        """``buffer``: uint length + bytes; ``None`` is written as length 0 (as JS ``null``)."""
        if b is None:
            self._buf.append(0)
            return self
        self.uint(len(b))
        self._buf += b
        return self

    def optional_buffer(self, b: bytes | None) -> Writer:
        """``optionalBuffer``: identical bytes to :meth:`buffer`; empty reads back as ``None``."""
        return self.buffer(b)

    def string(self, s: str) -> Writer:
        return self.buffer(s.encode("utf-8"))

    utf8 = string

    def array(self, items: list[T], encode_item: Callable[[Writer, T], object]) -> Writer:
        self.uint(len(items))
        for item in items:
            encode_item(self, item)
        return self

    def ipv4(self, host: str) -> Writer:
        parts = host.split(".")
        try:
            octets = bytes(int(p) for p in parts)
        except ValueError as exc:
            raise EncodeError(f"not an IPv4 address: {host!r}") from exc
        if len(octets) != 4:
            raise EncodeError(f"not an IPv4 address: {host!r}")
        self._buf += octets
        return self

    def ipv4_address(self, addr: SocketAddress | tuple[str, int]) -> Writer:
        host, port = (addr.host, addr.port) if isinstance(addr, SocketAddress) else addr
        return self.ipv4(host).uint16(port)

    def ipv6(self, host: str) -> Writer:
        try:
            packed = ipaddress.IPv6Address(host).packed
        except ValueError as exc:
            raise EncodeError(f"not an IPv6 address: {host!r}") from exc
        self._buf += packed
        return self

    def ipv6_address(self, addr: SocketAddress | tuple[str, int]) -> Writer:
        host, port = (addr.host, addr.port) if isinstance(addr, SocketAddress) else addr
        return self.ipv6(host).uint16(port)

    def bitfield(self, flags: int, width: int = 7) -> Writer:
        """compact-encoding-bitfield; widths < 8 are one byte, wider ones get a prefix byte."""
        if width < 8:
            return self.uint8(_check_uint(flags, 0xFF))
        if width <= 16:
            self._buf.append(0xFD)
            return self.uint16(flags)
        if width <= 32:
            self._buf.append(0xFE)
            return self.uint32(flags)
        if width <= 64:
            self._buf.append(0xFF)
            self._buf += _U64.pack(_check_uint(flags, 2**64 - 1))
            return self
        raise EncodeError("bitfield cannot be larger than 64 bits")


class Reader:
    """Reads encoded values from ``data[start:end]``; raises :class:`DecodeError` on bad input."""

    __slots__ = ("_buf", "end", "pos")

    def __init__(self, data: bytes | bytearray | memoryview, start: int = 0,
                 end: int | None = None) -> None:
        self._buf = bytes(data)
        self.pos = start
        self.end = len(self._buf) if end is None else end
        if not 0 <= self.pos <= self.end <= len(self._buf):
            raise LocalProtocolError("reader bounds outside the buffer")

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def _take(self, n: int) -> bytes:
        if self.end - self.pos < n:
            raise DecodeError(f"out of bounds: need {n} bytes, {self.end - self.pos} left")
        start = self.pos
        self.pos += n
        return self._buf[start:self.pos]

    def uint8(self) -> int:
        if self.pos >= self.end:
            raise DecodeError("out of bounds: need 1 byte, 0 left")
        b = self._buf[self.pos]
        self.pos += 1
        return b

    def uint16(self) -> int:
        return int(_U16.unpack(self._take(2))[0])

    def uint24(self) -> int:
        return int.from_bytes(self._take(3), "little")

    def uint32(self) -> int:
        return int(_U32.unpack(self._take(4))[0])

    def uint64(self) -> int:
        n = int(_U64.unpack(self._take(8))[0])
        if n > MAX_SAFE_INTEGER:
            raise DecodeError(f"integer {n} outside the safe range")
        return n

    def uint(self) -> int:
        a = self.uint8()
        if a <= 0xFC:
            return a
        if a == 0xFD:
            return self.uint16()
        if a == 0xFE:
            return self.uint32()
        return self.uint64()

    def bool(self) -> bool:
        return self.uint8() == 1

    def raw(self) -> bytes:
        """Everything up to the end of the frame."""
        return self._take(self.end - self.pos)

    def fixed(self, n: int) -> bytes:
        return self._take(n)

    def fixed32(self) -> bytes:
        return self._take(32)

    def fixed64(self) -> bytes:
        return self._take(64)

    def buffer(self) -> bytes:
        return self._take(self.uint())

    def optional_buffer(self) -> bytes | None:
        n = self.uint()
        return None if n == 0 else self._take(n)

    def string(self) -> str:
        # Node decodes invalid UTF-8 with U+FFFD replacements; do the same.
        return self.buffer().decode("utf-8", errors="replace")

    utf8 = string

    def array(self, decode_item: Callable[[Reader], T]) -> list[T]:
        n = self.uint()
        if n > MAX_ARRAY_LENGTH:
            raise DecodeError(f"array of {n} elements exceeds {MAX_ARRAY_LENGTH}")
        return [decode_item(self) for _ in range(n)]

    def ipv4(self) -> str:
        return ".".join(str(b) for b in self._take(4))

    def ipv4_address(self) -> SocketAddress:
        host = self.ipv4()
        return SocketAddress(host, self.uint16())

    def ipv6(self) -> str:
        b = self._take(16)
        # Same text as compact-encoding-net: eight lowercase hex groups, no compression.
        return ":".join(format(int.from_bytes(b[i:i + 2], "big"), "x") for i in range(0, 16, 2))

    def ipv6_address(self) -> SocketAddress:
        host = self.ipv6()
        return SocketAddress(host, self.uint16())

    def bitfield(self, width: int = 7) -> int:
        """compact-encoding-bitfield; returns the flags as an int.

        Like the JS decoder, a prefixed (wide) encoding is accepted for any width; for widths
        of 8 or fewer only the first flag byte is kept.
        """
        first = self.uint8()
        if first <= 0xFC:
            return first
        nbytes = {0xFD: 2, 0xFE: 4, 0xFF: 8}[first]
        b = self._take(nbytes)
        return b[0] if width <= 8 else int.from_bytes(b, "little")

    def done(self) -> None:
        """Raise :class:`DecodeError` unless the whole frame was consumed."""
        if self.pos != self.end:
            raise DecodeError(f"{self.end - self.pos} trailing bytes")


def encode(fn: Callable[[Writer, T], object], value: T) -> bytes:
    """Encode ``value`` with ``fn(writer, value)`` and return the bytes."""
    w = Writer()
    fn(w, value)
    return w.getvalue()


def decode(fn: Callable[[Reader], T], data: bytes) -> T:
    """Decode one value with ``fn(reader)``; extra trailing bytes are ignored, as in JS."""
    return fn(Reader(data))
