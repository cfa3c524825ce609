"""Hashes, namespaces and Ed25519 keys against vectors produced by hypercore-crypto."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from p2p_transport import crypto

VECTORS = json.loads((Path(__file__).parent / "fixtures" / "cenc_vectors.json").read_text())[
    "crypto"
]


def test_namespaces_match_node() -> None:
    for name, spec in VECTORS["namespaces"].items():
        assert [v.hex() for v in crypto.namespace(name, spec["ids"])] == spec["values"]


def test_namespace_constants_match_the_wire_map() -> None:
    assert crypto.NS_ANNOUNCE.hex().startswith("36386add")
    assert crypto.NS_PEER_HANDSHAKE.hex().startswith("14d6d4b4")
    assert crypto.NS_SS_INITIATOR.hex().startswith("a931a015")
    assert crypto.NS_SS_RESPONDER.hex().startswith("742c9d83")
    assert crypto.NS_CAPABILITY.hex().startswith("6a16819d")
    # Node id of 127.0.0.1:49737 (Appendix B example)
    assert crypto.hash(bytes.fromhex("7f00000149c2")).hex().startswith("d1dcf835")


def test_key_pairs_and_signatures_match_node() -> None:
    for v in VECTORS["keyPairs"]:
        kp = crypto.key_pair(bytes.fromhex(v["seed"]))
        assert kp.public_key.hex() == v["publicKey"]
        assert kp.secret_key.hex() == v["secretKey"]
        msg = bytes.fromhex(v["message"])
        assert crypto.sign(msg, kp.secret_key).hex() == v["signature"]
        assert crypto.verify(msg, bytes.fromhex(v["signature"]), kp.public_key)
        assert not crypto.verify(msg + b"x", bytes.fromhex(v["signature"]), kp.public_key)
        assert not crypto.verify(msg, b"short", kp.public_key)


def test_hashes_match_node() -> None:
    for v in VECTORS["hashes"]:
        data = bytes.fromhex(v["data"])
        assert crypto.hash(data).hex() == v["hash"]
        assert crypto.hash(data, size=64).hex() == v["hash64"]
        assert crypto.keyed_hash(data, bytes.fromhex(v["key"])).hex() == v["keyed"]
        assert crypto.hash_batch([data[:1], data[1:]]) == crypto.hash(data)
    dk = VECTORS["discoveryKey"]
    assert crypto.discovery_key(bytes.fromhex(dk["key"])).hex() == dk["value"]


def test_dh_is_symmetric_and_rejects_bad_points() -> None:
    a, b = crypto.key_pair(), crypto.key_pair()
    assert crypto.ed25519_dh(a.secret_key, b.public_key) == crypto.ed25519_dh(
        b.secret_key, a.public_key
    )
    with pytest.raises(crypto.CryptoError):
        crypto.ed25519_dh(a.secret_key, bytes(32))
    with pytest.raises(crypto.CryptoError):
        crypto.ed25519_dh(a.secret_key[:32], b.public_key)


def test_key_pair_repr_hides_the_secret() -> None:
    kp = crypto.key_pair(bytes(32))
    assert kp.secret_key[:32].hex() not in repr(kp)
