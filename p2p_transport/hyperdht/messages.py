"""hyperdht payload structs (``hyperdht/lib/messages.js``) and constants.

Each struct is a frozen dataclass with ``encode_*``/``decode_*`` functions over compact-encoding.
Decoders raise :class:`HyperDhtProtocolError` for malformed bytes and ignore trailing bytes, as
the JS decoders do. Addresses are IPv4 :class:`~p2p_transport.cenc.SocketAddress` values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from p2p_transport.cenc import DecodeError, Reader, RemoteProtocolError, SocketAddress, Writer

__all__ = [
    "ANNOUNCE",
    "FIND_PEER",
    "IMMUTABLE_GET",
    "IMMUTABLE_PUT",
    "LOOKUP",
    "MUTABLE_GET",
    "MUTABLE_PUT",
    "PEER_HANDSHAKE",
    "PEER_HOLEPUNCH",
    "PLUGIN",
    "UNANNOUNCE",
    "Announce",
    "Error",
    "Firewall",
    "Handshake",
    "HolepunchInfo",
    "HolepunchMessage",
    "HolepunchPayload",
    "HyperDhtProtocolError",
    "LookupReply",
    "Mode",
    "NoisePayload",
    "PeerRecord",
    "RelayInfo",
    "RelayThrough",
    "UdxInfo",
    "decode_announce",
    "decode_handshake",
    "decode_holepunch",
    "decode_holepunch_payload",
    "decode_lookup_reply",
    "decode_noise_payload",
    "decode_peer",
    "encode_announce",
    "encode_handshake",
    "encode_holepunch",
    "encode_holepunch_payload",
    "encode_lookup_reply",
    "encode_noise_payload",
    "encode_peer",
]

# User (non-internal) dht-rpc commands.
PEER_HANDSHAKE = 0
PEER_HOLEPUNCH = 1
FIND_PEER = 2
LOOKUP = 3
ANNOUNCE = 4
UNANNOUNCE = 5
MUTABLE_PUT = 6
MUTABLE_GET = 7
IMMUTABLE_PUT = 8
IMMUTABLE_GET = 9
PLUGIN = 10


class Mode:
    """Relay modes of PEER_HANDSHAKE / PEER_HOLEPUNCH."""

    FROM_CLIENT = 0
    FROM_SERVER = 1
    FROM_RELAY = 2
    FROM_SECOND_RELAY = 3
    REPLY = 4


class Firewall:
    UNKNOWN = 0
    OPEN = 1
    CONSISTENT = 2
    RANDOM = 3


class Error:
    """Noise-payload error codes and the mutable-put dht-rpc errors."""

    NONE = 0
    ABORTED = 1
    VERSION_MISMATCH = 2
    TRY_LATER = 3
    SEQ_REUSED = 16
    SEQ_TOO_LOW = 17


class HyperDhtProtocolError(RemoteProtocolError):
    """A hyperdht payload that cannot be decoded."""


T = TypeVar("T")


def _decode(fn: Callable[[Reader], T], data: bytes, what: str) -> T:
    try:
        return fn(Reader(data))
    except DecodeError as exc:
        raise HyperDhtProtocolError(f"malformed {what}: {exc}") from exc


def _addrs(r: Reader) -> tuple[SocketAddress, ...]:
    return tuple(r.array(Reader.ipv4_address))


def _w_addrs(w: Writer, addrs: tuple[SocketAddress, ...]) -> None:
    w.array(list(addrs), Writer.ipv4_address)


# -- handshake / holepunch envelopes ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Handshake:
    mode: int
    noise: bytes
    peer_address: SocketAddress | None = None
    relay_address: SocketAddress | None = None


def encode_handshake(m: Handshake) -> bytes:
    flags = (1 if m.peer_address else 0) | (2 if m.relay_address else 0)
    w = Writer().uint(flags).uint(m.mode).buffer(m.noise)
    if m.peer_address:
        w.ipv4_address(m.peer_address)
    if m.relay_address:
        w.ipv4_address(m.relay_address)
    return w.getvalue()


def decode_handshake(data: bytes) -> Handshake:
    def dec(r: Reader) -> Handshake:
        flags = r.uint()
        mode = r.uint()
        noise = r.buffer()
        peer = r.ipv4_address() if flags & 1 else None
        relay = r.ipv4_address() if flags & 2 else None
        return Handshake(mode, noise, peer, relay)

    return _decode(dec, data, "handshake")


@dataclass(frozen=True, slots=True)
class HolepunchMessage:
    mode: int
    id: int
    payload: bytes
    peer_address: SocketAddress | None = None


def encode_holepunch(m: HolepunchMessage) -> bytes:
    w = Writer().uint(1 if m.peer_address else 0).uint(m.mode).uint(m.id).buffer(m.payload)
    if m.peer_address:
        w.ipv4_address(m.peer_address)
    return w.getvalue()


def decode_holepunch(data: bytes) -> HolepunchMessage:
    def dec(r: Reader) -> HolepunchMessage:
        flags = r.uint()
        mode, id_, payload = r.uint(), r.uint(), r.buffer()
        return HolepunchMessage(mode, id_, payload, r.ipv4_address() if flags & 1 else None)

    return _decode(dec, data, "holepunch")


# -- the Noise payload ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RelayInfo:
    relay_address: SocketAddress
    peer_address: SocketAddress


@dataclass(frozen=True, slots=True)
class HolepunchInfo:
    id: int
    relays: tuple[RelayInfo, ...] = ()


@dataclass(frozen=True, slots=True)
class UdxInfo:
    id: int
    seq: int = 0
    reusable_socket: bool = False
    version: int = 1


@dataclass(frozen=True, slots=True)
class RelayThrough:
    public_key: bytes
    token: bytes
    version: int = 1


@dataclass(frozen=True, slots=True)
class NoisePayload:
    """The plaintext inside the Noise handshake messages."""

    version: int = 1
    error: int = Error.NONE
    firewall: int = Firewall.UNKNOWN
    holepunch: HolepunchInfo | None = None
    addresses4: tuple[SocketAddress, ...] = ()
    addresses6: tuple[SocketAddress, ...] = ()
    udx: UdxInfo | None = None
    secret_stream: bool = False
    relay_through: RelayThrough | None = None
    relay_addresses: tuple[SocketAddress, ...] | None = None


def encode_noise_payload(m: NoisePayload) -> bytes:
    flags = ((1 if m.holepunch else 0) | (2 if m.addresses4 else 0) | (4 if m.addresses6 else 0)
             | (8 if m.udx else 0) | (16 if m.secret_stream else 0)
             | (32 if m.relay_through else 0) | (64 if m.relay_addresses is not None else 0))
    w = Writer().uint(1).uint(flags).uint(m.error).uint(m.firewall)
    if m.holepunch:
        w.uint(m.holepunch.id)
        w.uint(len(m.holepunch.relays))
        for ri in m.holepunch.relays:
            w.ipv4_address(ri.relay_address).ipv4_address(ri.peer_address)
    if m.addresses4:
        _w_addrs(w, m.addresses4)
    if m.addresses6:
        w.array(list(m.addresses6), Writer.ipv6_address)
    if m.udx:
        w.uint(1).uint(1 if m.udx.reusable_socket else 0).uint(m.udx.id).uint(m.udx.seq)
    if m.secret_stream:
        w.uint(1)
    if m.relay_through:
        w.uint(1).uint(0).fixed32(m.relay_through.public_key).fixed32(m.relay_through.token)
    if m.relay_addresses is not None:
        _w_addrs(w, m.relay_addresses)
    return w.getvalue()


def decode_noise_payload(data: bytes) -> NoisePayload:
    def dec(r: Reader) -> NoisePayload:
        version = r.uint()
        if version != 1:
            return NoisePayload(version=version)
        flags = r.uint()
        error, firewall = r.uint(), r.uint()
        holepunch = None
        if flags & 1:
            hid = r.uint()
            relays = tuple(r.array(lambda rr: RelayInfo(rr.ipv4_address(), rr.ipv4_address())))
            holepunch = HolepunchInfo(hid, relays)
        addresses4 = _addrs(r) if flags & 2 else ()
        addresses6 = tuple(r.array(Reader.ipv6_address)) if flags & 4 else ()
        udx = None
        if flags & 8:
            uver, features = r.uint(), r.uint()
            udx = UdxInfo(r.uint(), r.uint(), bool(features & 1), uver)
        secret_stream = False
        if flags & 16:
            r.uint()
            secret_stream = True
        relay_through = None
        if flags & 32:
            rver = r.uint()
            r.uint()
            relay_through = RelayThrough(r.fixed32(), r.fixed32(), rver)
        relay_addresses = _addrs(r) if flags & 64 else None
        return NoisePayload(version, error, firewall, holepunch, addresses4, addresses6, udx,
                            secret_stream, relay_through, relay_addresses)

    return _decode(dec, data, "noise payload")


@dataclass(frozen=True, slots=True)
class HolepunchPayload:
    error: int = 0
    firewall: int = 0
    round: int = 0
    connected: bool = False
    punching: bool = False
    addresses: tuple[SocketAddress, ...] | None = None
    remote_address: SocketAddress | None = None
    token: bytes | None = None
    remote_token: bytes | None = None


def encode_holepunch_payload(m: HolepunchPayload) -> bytes:
    flags = ((1 if m.connected else 0) | (2 if m.punching else 0)
             | (4 if m.addresses is not None else 0) | (8 if m.remote_address else 0)
             | (16 if m.token else 0) | (32 if m.remote_token else 0))
    w = Writer().uint(flags).uint(m.error).uint(m.firewall).uint(m.round)
    if m.addresses is not None:
        _w_addrs(w, m.addresses)
    if m.remote_address:
        w.ipv4_address(m.remote_address)
    if m.token:
        w.fixed32(m.token)
    if m.remote_token:
        w.fixed32(m.remote_token)
    return w.getvalue()


def decode_holepunch_payload(data: bytes) -> HolepunchPayload:
    def dec(r: Reader) -> HolepunchPayload:
        flags = r.uint()
        error, firewall, round_ = r.uint(), r.uint(), r.uint()
        return HolepunchPayload(
            error, firewall, round_, bool(flags & 1), bool(flags & 2),
            _addrs(r) if flags & 4 else None,
            r.ipv4_address() if flags & 8 else None,
            r.fixed32() if flags & 16 else None,
            r.fixed32() if flags & 32 else None)

    return _decode(dec, data, "holepunch payload")


# -- records and announcements -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """An announced peer: its public key and up to 3 relay addresses (DHT nodes)."""

    public_key: bytes
    relay_addresses: tuple[SocketAddress, ...] = ()


def _w_peer(w: Writer, p: PeerRecord) -> None:
    w.fixed32(p.public_key)
    _w_addrs(w, p.relay_addresses)


def _r_peer(r: Reader) -> PeerRecord:
    return PeerRecord(r.fixed32(), _addrs(r))


def encode_peer(p: PeerRecord) -> bytes:
    w = Writer()
    _w_peer(w, p)
    return w.getvalue()


def decode_peer(data: bytes) -> PeerRecord:
    return _decode(_r_peer, data, "peer record")


@dataclass(frozen=True, slots=True)
class LookupReply:
    peers: tuple[PeerRecord, ...]
    bump: int = 0


def encode_lookup_reply(m: LookupReply) -> bytes:
    w = Writer().array(list(m.peers), _w_peer)
    return w.uint(m.bump).getvalue()


def decode_lookup_reply(data: bytes) -> LookupReply:
    def dec(r: Reader) -> LookupReply:
        peers = tuple(r.array(_r_peer))
        return LookupReply(peers, r.uint() if r.remaining > 0 else 0)

    return _decode(dec, data, "lookup reply")


@dataclass(frozen=True, slots=True)
class Announce:
    peer: PeerRecord | None = None
    refresh: bytes | None = None
    signature: bytes | None = None
    bump: int = 0


def encode_announce(m: Announce) -> bytes:
    flags = ((1 if m.peer else 0) | (2 if m.refresh else 0) | (4 if m.signature else 0)
             | (8 if m.bump else 0))
    w = Writer().uint(flags)
    if m.peer:
        _w_peer(w, m.peer)
    if m.refresh:
        w.fixed32(m.refresh)
    if m.signature:
        w.fixed64(m.signature)
    if m.bump:
        w.uint(m.bump)
    return w.getvalue()


def decode_announce(data: bytes) -> Announce:
    def dec(r: Reader) -> Announce:
        flags = r.uint()
        return Announce(
            _r_peer(r) if flags & 1 else None,
            r.fixed32() if flags & 2 else None,
            r.fixed64() if flags & 4 else None,
            r.uint() if flags & 8 else 0)

    return _decode(dec, data, "announce")
