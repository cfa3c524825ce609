"""compact-encoding codecs against vectors produced by the pinned npm packages, plus fuzzing."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2p_transport.cenc import (
    MAX_ARRAY_LENGTH,
    DecodeError,
    EncodeError,
    Reader,
    SocketAddress,
    Writer,
)

FIXTURES = Path(__file__).parent / "fixtures"
VECTORS = json.loads((FIXTURES / "cenc_vectors.json").read_text())["codecs"]


def _addr(v: dict[str, Any]) -> SocketAddress:
    return SocketAddress(v["host"], v["port"])


def _hex_or_none(b: bytes | None) -> str | None:
    return None if b is None else b.hex()


def _addr_dict(a: SocketAddress) -> dict[str, Any]:
    return {"host": a.host, "port": a.port}


# type -> (encode(writer, value), decode(reader) -> comparable value)
CODECS: dict[str, tuple[Any, Any]] = {
    "uint": (Writer.uint, Reader.uint),
    "uint8": (Writer.uint8, Reader.uint8),
    "uint16": (Writer.uint16, Reader.uint16),
    "uint24": (Writer.uint24, Reader.uint24),
    "uint32": (Writer.uint32, Reader.uint32),
    "uint64": (Writer.uint64, Reader.uint64),
    "bool": (Writer.bool, Reader.bool),
    "buffer": (lambda w, v: w.buffer(bytes.fromhex(v)), lambda r: r.buffer().hex()),
    "optionalBuffer": (
        lambda w, v: w.optional_buffer(None if v is None else bytes.fromhex(v)),
        lambda r: _hex_or_none(r.optional_buffer()),
    ),
    "fixed32": (lambda w, v: w.fixed32(bytes.fromhex(v)), lambda r: r.fixed32().hex()),
    "fixed64": (lambda w, v: w.fixed64(bytes.fromhex(v)), lambda r: r.fixed64().hex()),
    "string": (Writer.string, Reader.string),
    "ipv4Address": (lambda w, v: w.ipv4_address(_addr(v)), Reader.ipv4_address),
    "ipv4AddressArray": (
        lambda w, v: w.array([_addr(a) for a in v], Writer.ipv4_address),
        lambda r: r.array(Reader.ipv4_address),
    ),
    "uintArray": (lambda w, v: w.array(v, Writer.uint), lambda r: r.array(Reader.uint)),
    "ipv6Address": (
        lambda w, v: w.ipv6_address((v["input"], v["port"])),
        lambda r: _addr_dict(r.ipv6_address()),
    ),
    "bitfield7": (lambda w, v: w.bitfield(v, 7), lambda r: r.bitfield(7)),
    "bitfield16": (lambda w, v: w.bitfield(v, 16), lambda r: r.bitfield(16)),
}


def _expected(vec: dict[str, Any]) -> Any:
    t, v = vec["type"], vec["value"]
    if t == "optionalBuffer" and v == "":
        return None  # an empty optional buffer decodes as null, like JS
    if t == "ipv4Address":
        return _addr(v)
    if t == "ipv4AddressArray":
        return [_addr(a) for a in v]
    if t == "ipv6Address":
        return {"host": v["host"], "port": v["port"]}
    return v


@pytest.mark.parametrize("vec", VECTORS, ids=lambda v: f"{v['type']}-{v['hex'][:16]}")
def test_vector_roundtrip(vec: dict[str, Any]) -> None:
    enc, dec = CODECS[vec["type"]]
    w = Writer()
    value = vec["value"]
    if vec["type"] == "optionalBuffer" and value == "":
        value = None
    enc(w, value)
    assert w.getvalue().hex() == vec["hex"]
    r = Reader(bytes.fromhex(vec["hex"]))
    assert dec(r) == _expected(vec)
    assert r.remaining == 0


def test_known_bytes_from_the_wire_map() -> None:
    assert Writer().uint(253).getvalue() == bytes.fromhex("fdfd00")
    assert Writer().ipv4_address(("127.0.0.1", 49737)).getvalue() == bytes.fromhex("7f00000149c2")
    assert Writer().string("protomux-rpc").getvalue().hex() == "0c70726f746f6d75782d727063"
    assert Writer().optional_buffer(b"").getvalue() == b"\x00"


def test_non_canonical_uint_is_accepted() -> None:
    assert Reader(bytes.fromhex("fd0500")).uint() == 5


def test_uint64_outside_safe_range_is_a_decode_error() -> None:
    with pytest.raises(DecodeError):
        Reader(b"\xff" + (2**53).to_bytes(8, "little")).uint()


def test_array_bound() -> None:
    data = Writer().uint(MAX_ARRAY_LENGTH + 1).getvalue()
    with pytest.raises(DecodeError, match="exceeds"):
        Reader(data).array(Reader.uint8)


@pytest.mark.parametrize(
    "call",
    [
        lambda w: w.uint(-1),
        lambda w: w.uint(2**53),
        lambda w: w.uint8(256),
        lambda w: w.uint16(True),
        lambda w: w.fixed32(b"x" * 31),
        lambda w: w.ipv4("1.2.3"),
        lambda w: w.ipv4("1.2.3.999"),
        lambda w: w.ipv6("nope"),
    ],
)
def test_bad_values_raise_encode_error(call: Any) -> None:
    with pytest.raises(EncodeError):
        call(Writer())


def test_truncated_input_raises_decode_error() -> None:
    for data, fn in [
        (b"", Reader.uint),
        (b"\xfd\x01", Reader.uint),
        (b"\x05abc", Reader.buffer),
        (b"\x01\x02\x03", Reader.ipv4_address),
        (b"\xfe\x01", Reader.bitfield),
    ]:
        with pytest.raises(DecodeError):
            fn(Reader(data))


def _composite(r: Reader) -> object:
    """A struct touching every decoder, in the style of the DHT messages."""
    flags = r.uint()
    out: list[object] = [flags, r.uint16(), r.buffer(), r.optional_buffer(), r.string(), r.bool()]
    if flags & 1:
        out.append(r.array(Reader.ipv4_address))
    if flags & 2:
        out.append(r.ipv6_address())
    if flags & 4:
        out.append(r.fixed32())
    out.extend([r.bitfield(), r.uint24(), r.uint32(), r.uint64(), r.raw()])
    return out


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_decoders_whole_and_byte_by_byte(data: bytes) -> None:
    for end in range(len(data) + 1):
        with contextlib.suppress(DecodeError):
            _composite(Reader(data, 0, end))


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 2**53 - 1),
    st.binary(max_size=2000),
    st.text(max_size=50),
    st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 65535)),
             max_size=5),
)
def test_roundtrip_property(
    n: int, blob: bytes, text: str, addrs: list[tuple[int, int, int]]
) -> None:
    sockaddrs = [SocketAddress(f"{a}.{b}.0.1", p) for a, b, p in addrs]
    w = Writer().uint(n).buffer(blob).string(text).array(sockaddrs, Writer.ipv4_address)
    r = Reader(w.getvalue())
    assert r.uint() == n
    assert r.buffer() == blob
    assert r.string() == text
    assert r.array(Reader.ipv4_address) == sockaddrs
    r.done()
