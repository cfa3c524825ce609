"""hyperdht payload structs against bytes produced by the Node package, plus fuzzing."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2p_transport.cenc import SocketAddress
from p2p_transport.hyperdht import messages as m

VECTORS = Path(__file__).parent / "vectors" / "hyperdht.jsonl"


def _a(d: dict | None) -> SocketAddress | None:
    return None if d is None else SocketAddress(d["host"], d["port"])


def _aa(lst: list | None) -> tuple[SocketAddress, ...]:
    return tuple(SocketAddress(d["host"], d["port"]) for d in (lst or []))


def _h(x: str | None) -> bytes | None:
    return None if x is None else bytes.fromhex(x)


def _peer(v: dict) -> m.PeerRecord:
    return m.PeerRecord(bytes.fromhex(v["publicKey"]), _aa(v["relayAddresses"]))


def _noise(v: dict) -> m.NoisePayload:
    hp = v["holepunch"]
    udx = v["udx"]
    rt = v["relayThrough"]
    return m.NoisePayload(
        v["version"], v["error"], v["firewall"],
        None if hp is None else m.HolepunchInfo(hp["id"], tuple(
            m.RelayInfo(_a(r["relayAddress"]), _a(r["peerAddress"]))  # type: ignore[arg-type]
            for r in hp["relays"])),
        _aa(v["addresses4"]), _aa(v["addresses6"]),
        None if udx is None else m.UdxInfo(udx["id"], udx["seq"], udx["reusableSocket"]),
        v["secretStream"] is not None,
        None if rt is None else m.RelayThrough(bytes.fromhex(rt["publicKey"]),
                                               bytes.fromhex(rt["token"])),
        None if v["relayAddresses"] is None else _aa(v["relayAddresses"]))


CONVERT: dict[str, tuple[Callable[[dict], Any], Callable[[Any], bytes], Callable[[bytes], Any]]] = {
    "handshake": (lambda v: m.Handshake(v["mode"], bytes.fromhex(v["noise"]),
                                        _a(v["peerAddress"]), _a(v["relayAddress"])),
                  m.encode_handshake, m.decode_handshake),
    "holepunch": (lambda v: m.HolepunchMessage(v["mode"], v["id"], bytes.fromhex(v["payload"]),
                                               _a(v["peerAddress"])),
                  m.encode_holepunch, m.decode_holepunch),
    "noisePayload": (_noise, m.encode_noise_payload, m.decode_noise_payload),
    "holepunchPayload": (lambda v: m.HolepunchPayload(
        v["error"], v["firewall"], v["round"], v["connected"], v["punching"],
        None if v["addresses"] is None else _aa(v["addresses"]), _a(v["remoteAddress"]),
        _h(v["token"]), _h(v["remoteToken"])),
        m.encode_holepunch_payload, m.decode_holepunch_payload),
    "peer": (_peer, m.encode_peer, m.decode_peer),
    "announce": (lambda v: m.Announce(None if v["peer"] is None else _peer(v["peer"]),
                                      _h(v["refresh"]), _h(v["signature"]), v["bump"]),
                 m.encode_announce, m.decode_announce),
    "lookupRawReply": (lambda v: m.LookupReply(tuple(_peer(p) for p in v["peers"]), v["bump"]),
                       m.encode_lookup_reply, m.decode_lookup_reply),
}

VECS = [json.loads(line) for line in VECTORS.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("vec", VECS, ids=lambda v: v["type"])
def test_struct_matches_node(vec: dict) -> None:
    build, enc, dec = CONVERT[vec["type"]]
    value = build(vec["value"])
    assert enc(value).hex() == vec["hex"]
    assert dec(bytes.fromhex(vec["hex"])) == value


def test_noise_payload_other_version_returns_defaults() -> None:
    assert m.decode_noise_payload(b"\x02\xff\xff") == m.NoisePayload(version=2)


def test_lookup_reply_without_bump() -> None:
    assert m.decode_lookup_reply(b"\x00") == m.LookupReply((), 0)


DECODERS = [m.decode_handshake, m.decode_holepunch, m.decode_noise_payload,
            m.decode_holepunch_payload, m.decode_peer, m.decode_announce, m.decode_lookup_reply]


@settings(max_examples=300)
@given(st.binary(max_size=80))
def test_decoders_fuzz(data: bytes) -> None:
    for dec in DECODERS:
        for end in range(len(data) + 1):
            with contextlib.suppress(m.HyperDhtProtocolError):
                dec(data[:end])
