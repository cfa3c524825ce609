"""Noise handshakes over Ed25519 with ChaChaPoly and BLAKE2b, as noise-handshake does them.

Owns the Noise symmetric state (MixHash, MixKey, HKDF over HMAC-BLAKE2b-512), the IK and XX
patterns, and the values hyperdht derives from a finished handshake (``NoiseWrap.final()``):
handshake hash, split keys, holepunch secret and the secret-stream ids.

It is a sans-IO state machine: ``send(payload) -> message`` and ``recv(message) -> payload``.
It does not own the hyperdht payload struct (``noisePayload``) that rides inside the messages.

Protocol name ``Noise_<pattern>_Ed25519_ChaChaPoly_BLAKE2b``. "DH" is noise-curve-ed's
Ed25519 scalar multiplication (:func:`p2p_transport.crypto.ed25519_dh`).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from dataclasses import dataclass
from enum import Enum

import nacl.bindings as sodium
import nacl.exceptions

from .cenc import RemoteProtocolError
from .crypto import (
    NS_PEER_HANDSHAKE,
    NS_PEER_HOLEPUNCH,
    NS_SS_INITIATOR,
    NS_SS_RESPONDER,
    CryptoError,
    KeyPair,
    ed25519_dh,
    key_pair,
    keyed_hash,
)

__all__ = [
    "HandshakeError",
    "HandshakeResult",
    "NoiseHandshake",
    "Pattern",
    "dht_handshake",
    "holepunch_secret",
    "stream_id",
]

HASHLEN = 64
DHLEN = 32
MACLEN = 16
#: noise-handshake refuses ciphertexts longer than this (the Noise message limit).
MAX_MESSAGE_LEN = 65535


class HandshakeError(RemoteProtocolError):
    """The peer's handshake message is malformed, fails authentication, or carries a bad key."""


class Pattern(Enum):
    IK = "IK"
    XX = "XX"


# Token lists per message, for the initiator's point of view; "es"/"se" name (initiator key,
# responder key) as in the Noise spec.
_PATTERNS: dict[Pattern, list[list[str]]] = {
    Pattern.IK: [["e", "es", "s", "ss"], ["e", "ee", "se"]],
    Pattern.XX: [["e"], ["e", "ee", "s", "es"], ["s", "se"]],
}


_BLAKE2B_512 = functools.partial(hashlib.blake2b, digest_size=HASHLEN)


def _hmac(key: bytes, *parts: bytes) -> bytes:
    mac = hmac.new(key, digestmod=_BLAKE2B_512)
    for p in parts:
        mac.update(p)
    return mac.digest()


def _hkdf2(chaining_key: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    prk = _hmac(chaining_key, ikm)
    t1 = _hmac(prk, b"\x01")
    t2 = _hmac(prk, t1, b"\x02")
    return t1, t2


def _nonce(n: int) -> bytes:
    return b"\x00\x00\x00\x00" + n.to_bytes(8, "little")


@dataclass(frozen=True, slots=True)
class HandshakeResult:
    """What a finished handshake yields (hyperdht ``NoiseWrap.final()``)."""

    is_initiator: bool
    public_key: bytes
    remote_public_key: bytes
    hash: bytes
    tx: bytes
    rx: bytes

    @property
    def holepunch_secret(self) -> bytes:
        return holepunch_secret(self.hash)

    @property
    def stream_id(self) -> bytes:
        """The id this side announces in its secret-stream header."""
        return stream_id(self.hash, self.is_initiator)

    @property
    def remote_stream_id(self) -> bytes:
        """The id the remote must announce (``NoiseWrap.final().remoteId``)."""
        return stream_id(self.hash, not self.is_initiator)

    def __repr__(self) -> str:
        return (
            f"HandshakeResult(is_initiator={self.is_initiator}, "
            f"remote_public_key={self.remote_public_key.hex()})"
        )


def holepunch_secret(handshake_hash: bytes) -> bytes:
    return keyed_hash(NS_PEER_HOLEPUNCH, handshake_hash)


def stream_id(handshake_hash: bytes, is_initiator: bool) -> bytes:
    """@hyperswarm/secret-stream ``streamId``: keyed hash of the role's namespace."""
    return keyed_hash(NS_SS_INITIATOR if is_initiator else NS_SS_RESPONDER, handshake_hash)


class NoiseHandshake:
    """One side of a Noise handshake (IK or XX), fed whole messages.

    ``ephemeral`` may be given for reproducible tests; otherwise a fresh key pair is drawn.
    Raises :class:`HandshakeError` on bad input from the peer and ``RuntimeError`` when the
    API is misused (sending out of turn).
    """

    def __init__(
        self,
        pattern: Pattern,
        is_initiator: bool,
        static: KeyPair,
        *,
        prologue: bytes = b"",
        remote_static: bytes | None = None,
        ephemeral: KeyPair | None = None,
    ) -> None:
        self.pattern = pattern
        self.is_initiator = is_initiator
        self.static = static
        self.remote_static = remote_static
        self._ephemeral = ephemeral
        self._e: KeyPair | None = None
        self._re: bytes | None = None
        self._messages = [list(m) for m in _PATTERNS[pattern]]
        self._turn = 0  # index of the next message
        self._key: bytes | None = None
        self._n = 0
        self.result: HandshakeResult | None = None

        name = f"Noise_{pattern.value}_Ed25519_ChaChaPoly_BLAKE2b".encode()
        self._h = name.ljust(HASHLEN, b"\x00") if len(name) <= HASHLEN else self._blake(name)
        self._ck = self._h
        self._mix_hash(prologue)
        if pattern is Pattern.IK:
            # pre-message "<- s": both sides hash the responder's static key
            if is_initiator:
                if remote_static is None or len(remote_static) != 32:
                    raise ValueError("IK initiator needs the responder's 32-byte public key")
                self._mix_hash(remote_static)
            else:
                self._mix_hash(static.public_key)

    @property
    def complete(self) -> bool:
        return self.result is not None

    # symmetric state -------------------------------------------------------------------------

    @staticmethod
    def _blake(data: bytes) -> bytes:
        return hashlib.blake2b(data, digest_size=HASHLEN).digest()

    def _mix_hash(self, data: bytes) -> None:
        self._h = self._blake(self._h + data)

    def _mix_key(self, dh: bytes) -> None:
        self._ck, temp = _hkdf2(self._ck, dh)
        self._key = temp[:32]
        self._n = 0

    def _encrypt_and_hash(self, plaintext: bytes) -> bytes:
        if self._key is None:
            ct = plaintext
        else:
            ct = sodium.crypto_aead_chacha20poly1305_ietf_encrypt(
                plaintext, self._h, _nonce(self._n), self._key
            )
            if len(ct) > MAX_MESSAGE_LEN:
                raise ValueError("Noise payload too large")
            self._n += 1
        self._mix_hash(ct)
        return ct

    def _decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        if self._key is None:
            pt = ciphertext
        else:
            if len(ciphertext) > MAX_MESSAGE_LEN:
                raise HandshakeError("Noise message too large")
            try:
                pt = sodium.crypto_aead_chacha20poly1305_ietf_decrypt(
                    ciphertext, self._h, _nonce(self._n), self._key
                )
            except nacl.exceptions.CryptoError as exc:
                raise HandshakeError("handshake message failed authentication") from exc
            self._n += 1
        self._mix_hash(ciphertext)
        return bytes(pt)

    def _dh_token(self, token: str) -> None:
        # token letters are (initiator key, responder key); pick ours and theirs
        mine, theirs = (token[0], token[1]) if self.is_initiator else (token[1], token[0])
        local = self.static if mine == "s" else self._e
        remote = self.remote_static if theirs == "s" else self._re
        assert local is not None and remote is not None
        try:
            self._mix_key(ed25519_dh(local.secret_key, remote))
        except CryptoError as exc:
            raise HandshakeError(f"bad key in handshake ({token})") from exc

    def _my_turn(self) -> bool:
        return (self._turn % 2 == 0) == self.is_initiator

    # public API --------------------------------------------------------------------------------

    def send(self, payload: bytes = b"") -> bytes:
        """Produce the next handshake message carrying ``payload``."""
        if self.complete or not self._my_turn():
            raise RuntimeError("not this side's turn to send a handshake message")
        out = bytearray()
        for token in self._messages[self._turn]:
            if token == "e":
                self._e = self._ephemeral or key_pair()
                self._mix_hash(self._e.public_key)
                out += self._e.public_key
            elif token == "s":
                out += self._encrypt_and_hash(self.static.public_key)
            else:
                self._dh_token(token)
        out += self._encrypt_and_hash(payload)
        self._advance()
        return bytes(out)

    def recv(self, message: bytes) -> bytes:
        """Consume the peer's next handshake message and return its payload."""
        if self.complete or self._my_turn():
            raise RuntimeError("not this side's turn to receive a handshake message")
        pos = 0

        def take(n: int) -> bytes:
            nonlocal pos
            if len(message) - pos < n:
                raise HandshakeError("handshake message truncated")
            pos += n
            return message[pos - n:pos]

        for token in self._messages[self._turn]:
            if token == "e":
                self._re = take(DHLEN)
                self._mix_hash(self._re)
            elif token == "s":
                klen = DHLEN + MACLEN if self._key is not None else DHLEN
                self.remote_static = self._decrypt_and_hash(take(klen))
            else:
                self._dh_token(token)
        if self._key is not None and len(message) - pos < MACLEN:
            raise HandshakeError("handshake message truncated")
        payload = self._decrypt_and_hash(message[pos:])
        self._advance()
        return payload

    def _advance(self) -> None:
        self._turn += 1
        if self._turn < len(self._messages):
            return
        t1, t2 = _hkdf2(self._ck, b"")
        k1, k2 = t1[:32], t2[:32]
        assert self.remote_static is not None
        self.result = HandshakeResult(
            is_initiator=self.is_initiator,
            public_key=self.static.public_key,
            remote_public_key=self.remote_static,
            hash=self._h,
            tx=k1 if self.is_initiator else k2,
            rx=k2 if self.is_initiator else k1,
        )
        self._e = None
        self._re = None
        self._key = None


def dht_handshake(
    key_pair: KeyPair, remote_public_key: bytes | None = None, *, ephemeral: KeyPair | None = None
) -> NoiseHandshake:
    """The IK handshake hyperdht runs for a connection (``NoiseWrap``).

    The initiator passes the server's public key; the responder passes ``None``.
    """
    return NoiseHandshake(
        Pattern.IK,
        remote_public_key is not None,
        key_pair,
        prologue=NS_PEER_HANDSHAKE,
        remote_static=remote_public_key,
        ephemeral=ephemeral,
    )
