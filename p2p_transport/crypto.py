"""Hashes, namespaces and Ed25519 keys as the Hyperswarm stack uses them.

Owns: BLAKE2b (``crypto_generichash``) plain and keyed, ``namespace(name, ids)`` as in
hypercore-crypto, Ed25519 key pairs from seeds, detached sign/verify, the Ed25519 "DH" used by
noise-curve-ed, and the namespace constants of hyperdht, secret-stream and hyperswarm-capability.

Does not own: the Noise state machine (:mod:`p2p_transport.noise`) or any wire struct.

Backed by PyNaCl (libsodium) and the standard library's ``hashlib.blake2b``, which produces the
same bytes as libsodium's ``crypto_generichash``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass

import nacl.bindings as sodium
import nacl.exceptions

from .errors import TransportError

__all__ = [
    "NS_ANNOUNCE",
    "NS_CAPABILITY",
    "NS_MUTABLE_PUT",
    "NS_PEER_HANDSHAKE",
    "NS_PEER_HOLEPUNCH",
    "NS_PLUGIN",
    "NS_SS_INITIATOR",
    "NS_SS_RESPONDER",
    "NS_SS_SEND",
    "NS_UNANNOUNCE",
    "CryptoError",
    "KeyPair",
    "discovery_key",
    "ed25519_dh",
    "hash",
    "hash_batch",
    "key_pair",
    "keyed_hash",
    "namespace",
    "random_bytes",
    "sign",
    "verify",
]

if not sodium.has_crypto_scalarmult_ed25519:  # pragma: no cover - depends on the libsodium build
    raise ImportError(
        "p2p_transport needs a libsodium with crypto_scalarmult_ed25519 (PyNaCl's wheels have it)"
    )

PUBLIC_KEY_BYTES = 32
SECRET_KEY_BYTES = 64
SEED_BYTES = 32
SIGNATURE_BYTES = 64


class CryptoError(TransportError):
    """A cryptographic operation failed on the given input (bad point, bad key size)."""


def hash(data: bytes, *, size: int = 32) -> bytes:
    """BLAKE2b with a ``size``-byte digest (libsodium ``crypto_generichash``)."""
    return hashlib.blake2b(data, digest_size=size).digest()


def keyed_hash(data: bytes, key: bytes, *, size: int = 32) -> bytes:
    """Keyed BLAKE2b (``crypto_generichash(out, data, key)``); key is 16..64 bytes."""
    return hashlib.blake2b(data, digest_size=size, key=key).digest()


def hash_batch(parts: Iterable[bytes], key: bytes | None = None, *, size: int = 32) -> bytes:
    """``crypto_generichash_batch``: the hash of the concatenation of ``parts``."""
    h = hashlib.blake2b(digest_size=size, key=key or b"")
    for p in parts:
        h.update(p)
    return h.digest()


def namespace(name: str | bytes, ids: int | Iterable[int]) -> list[bytes]:
    """hypercore-crypto ``namespace``: ``H(H(name) || id_byte)`` for each id."""
    id_list = list(range(ids)) if isinstance(ids, int) else list(ids)
    base = hash(name.encode() if isinstance(name, str) else name)
    out = []
    for i in id_list:
        if not 0 <= i <= 0xFF:
            raise ValueError(f"namespace id {i} does not fit one byte")
        out.append(hash(base + bytes([i])))
    return out


def discovery_key(key: bytes) -> bytes:
    """hypercore-crypto ``discoveryKey``: keyed hash of ``b"hypercore"`` under ``key``."""
    if len(key) != 32:
        raise ValueError("discovery_key needs a 32-byte key")
    return keyed_hash(b"hypercore", key)


def random_bytes(n: int) -> bytes:
    return os.urandom(n)


@dataclass(frozen=True, slots=True)
class KeyPair:
    """An Ed25519 signing key pair in libsodium layout (``secret_key`` = seed || public key)."""

    public_key: bytes
    secret_key: bytes

    def __post_init__(self) -> None:
        if len(self.public_key) != PUBLIC_KEY_BYTES or len(self.secret_key) != SECRET_KEY_BYTES:
            raise ValueError("an Ed25519 key pair is a 32-byte public and a 64-byte secret key")

    def __repr__(self) -> str:  # never print secrets
        return f"KeyPair(public_key={self.public_key.hex()})"


def key_pair(seed: bytes | None = None) -> KeyPair:
    """A fresh Ed25519 key pair, or the deterministic one for a 32-byte ``seed``."""
    if seed is None:
        pk, sk = sodium.crypto_sign_keypair()
    else:
        if len(seed) != SEED_BYTES:
            raise ValueError("an Ed25519 seed is 32 bytes")
        pk, sk = sodium.crypto_sign_seed_keypair(seed)
    return KeyPair(pk, sk)


def sign(message: bytes, secret_key: bytes) -> bytes:
    """Detached Ed25519 signature (64 bytes)."""
    if len(secret_key) != SECRET_KEY_BYTES:
        raise ValueError("secret key must be 64 bytes")
    return bytes(sodium.crypto_sign(message, secret_key)[:SIGNATURE_BYTES])


def verify(message: bytes, signature: bytes, public_key: bytes) -> bool:
    """True when ``signature`` is a valid detached signature of ``message`` by ``public_key``."""
    if len(signature) != SIGNATURE_BYTES or len(public_key) != PUBLIC_KEY_BYTES:
        return False
    try:
        sodium.crypto_sign_open(signature + message, public_key)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError,
            nacl.exceptions.TypeError):
        return False
    return True


def ed25519_dh(secret_key: bytes, public_key: bytes) -> bytes:
    """noise-curve-ed ``dh``: clamped SHA-512(seed) scalar times the peer's Edwards point.

    Raises :class:`CryptoError` for small-order, non-canonical points and identity results,
    which libsodium rejects.
    """
    if len(secret_key) != SECRET_KEY_BYTES or len(public_key) != PUBLIC_KEY_BYTES:
        raise CryptoError("DH needs a 64-byte secret key and a 32-byte public key")
    scalar = bytearray(hashlib.sha512(secret_key[:32]).digest()[:32])
    scalar[0] &= 248
    scalar[31] &= 127
    scalar[31] |= 64
    try:
        return bytes(sodium.crypto_scalarmult_ed25519_noclamp(bytes(scalar), public_key))
    except nacl.exceptions.RuntimeError as exc:
        raise CryptoError("invalid Ed25519 point in DH") from exc


(
    NS_ANNOUNCE,
    NS_UNANNOUNCE,
    NS_MUTABLE_PUT,
    NS_PEER_HANDSHAKE,
    NS_PEER_HOLEPUNCH,
    NS_PLUGIN,
) = namespace("hyperswarm/dht", [4, 5, 6, 0, 1, 10])
NS_SS_INITIATOR, NS_SS_RESPONDER, NS_SS_SEND = namespace("hyperswarm/secret-stream", 3)
(NS_CAPABILITY,) = namespace("hyperswarm-capability", 1)
