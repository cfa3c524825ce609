"""Signed, nonce-protected announcements (``tether.v1.SignedEnvelope``).

A signer wraps a message with its type name, its public key, 16 random bytes
of nonce and the time, and signs the deterministic serialization of the
envelope with the signature field empty. A verifier checks, in order: the
payload type, the signer (when the caller knows who must have signed, e.g.
the Noise-authenticated key of the connection), the signature, the timestamp
window (not older than ``max_age``, not further ahead than ``max_skew``) and
that the (signer, nonce) pair was never accepted before. Each check has its
own typed error; nothing unverified is parsed.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from tether import keys
from tether.errors import InvalidArgument, PermissionDenied
from tether.v1 import presence_pb2

M = TypeVar("M", bound=Message)

NONCE_SIZE = 16
#: Heartbeats older than this are stale (three heartbeat periods).
DEFAULT_MAX_AGE_MS = 15_000
#: Clock skew tolerated for timestamps in the future.
DEFAULT_MAX_SKEW_MS = 5_000
#: Nonces remembered for replay detection; older ones are also stale by age.
DEFAULT_NONCE_CACHE = 65_536


class EnvelopeError(PermissionDenied):
    """An envelope was refused."""


class BadSignature(EnvelopeError):
    """The signature does not verify, or the signer is not the one expected."""


class StaleEnvelope(EnvelopeError):
    """The envelope is too old or dated in the future."""


class ReplayedEnvelope(EnvelopeError):
    """The (signer, nonce) pair was already accepted."""


def _signing_bytes(env: presence_pb2.SignedEnvelope) -> bytes:
    unsigned = presence_pb2.SignedEnvelope()
    unsigned.CopyFrom(env)
    unsigned.ClearField("signature")
    return unsigned.SerializeToString(deterministic=True)


def sign(
    message: Message, keypair: keys.KeyPair, *, now_ms: int, nonce: bytes | None = None
) -> presence_pb2.SignedEnvelope:
    env = presence_pb2.SignedEnvelope(
        payload_type=message.DESCRIPTOR.full_name,
        payload=message.SerializeToString(deterministic=True),
        signer_key=keypair.public_key,
        nonce=nonce if nonce is not None else os.urandom(NONCE_SIZE),
        issued_at_unix_ms=now_ms,
    )
    env.signature = keypair.sign(_signing_bytes(env))
    return env


class EnvelopeVerifier:
    """Verifies envelopes and remembers accepted nonces (bounded)."""

    def __init__(
        self,
        *,
        max_age_ms: int = DEFAULT_MAX_AGE_MS,
        max_skew_ms: int = DEFAULT_MAX_SKEW_MS,
        nonce_cache: int = DEFAULT_NONCE_CACHE,
    ) -> None:
        self.max_age_ms = max_age_ms
        self.max_skew_ms = max_skew_ms
        self._nonce_cache = nonce_cache
        self._seen: OrderedDict[tuple[bytes, bytes], int] = OrderedDict()

    def verify(
        self,
        env: presence_pb2.SignedEnvelope,
        message_type: type[M],
        *,
        now_ms: int,
        expected_signer: bytes | None = None,
    ) -> M:
        name = message_type.DESCRIPTOR.full_name
        if env.payload_type != name:
            raise InvalidArgument(f"expected a {name} envelope, got {env.payload_type!r}")
        if expected_signer is not None and env.signer_key != expected_signer:
            raise BadSignature(
                "envelope signed by a different key than the peer's",
                details={"signer": env.signer_key.hex(), "peer": expected_signer.hex()},
            )
        if len(env.nonce) != NONCE_SIZE:
            raise InvalidArgument(f"nonce must be {NONCE_SIZE} bytes, got {len(env.nonce)}")
        try:
            keys.verify(env.signer_key, _signing_bytes(env), env.signature)
        except PermissionDenied as exc:
            raise BadSignature(f"bad envelope signature: {exc.message}") from None
        age = now_ms - env.issued_at_unix_ms
        if age > self.max_age_ms:
            raise StaleEnvelope(f"envelope is {age} ms old (limit {self.max_age_ms} ms)")
        if -age > self.max_skew_ms:
            raise StaleEnvelope(f"envelope is dated {-age} ms in the future")
        key = (bytes(env.signer_key), bytes(env.nonce))
        if key in self._seen:
            raise ReplayedEnvelope(
                "envelope nonce already used", details={"nonce": env.nonce.hex()}
            )
        try:
            message = message_type.FromString(env.payload)
        except DecodeError as exc:
            raise InvalidArgument(f"cannot decode {name} payload: {exc}") from None
        self._remember(key, now_ms)
        return message

    def _remember(self, key: tuple[bytes, bytes], now_ms: int) -> None:
        self._seen[key] = now_ms
        horizon = now_ms - self.max_age_ms - self.max_skew_ms
        while self._seen:
            oldest_key, seen_at = next(iter(self._seen.items()))
            if seen_at >= horizon and len(self._seen) <= self._nonce_cache:
                break
            del self._seen[oldest_key]
