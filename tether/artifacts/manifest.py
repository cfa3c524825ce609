"""Signed artifact manifests.

An artifact is any byte string a model needs (an ONNX graph, a tokenizer, a LoRA adapter),
named by the SHA-256 of its bytes. Its publisher signs a ``tether.v1.ArtifactManifest``
(digest, size, format, model, version, creation time, publisher key) inside a
``tether.v1.SignedEnvelope``: Ed25519 over the deterministic serialization of the envelope with
``signature`` empty, the same rule as signed presence.

Reading is defensive: :func:`open_manifest` accepts any bytes and either returns a verified
manifest or raises a :class:`tether.errors.TetherError` (``PermissionDenied`` for a missing,
bad or untrusted signature, ``DataLoss`` for bytes that are not a manifest or do not match the
artifact). :func:`check_artifact` compares bytes with their manifest.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Collection

from google.protobuf.message import DecodeError

from tether import keys
from tether.errors import DataLoss, PermissionDenied
from tether.keys import KeyPair
from tether.v1 import presence_pb2, registry_pb2

MANIFEST_TYPE = "tether.v1.ArtifactManifest"
FORMATS = frozenset({"onnx", "tokenizer", "lora", "json"})
DIGEST_HEX_LEN = 64


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_digest(text: str) -> bool:
    return len(text) == DIGEST_HEX_LEN and all(c in "0123456789abcdef" for c in text)


def make_manifest(data: bytes, *, fmt: str, model_id: str, version: str, publisher: KeyPair,
                  created_unix_ms: int) -> registry_pb2.ArtifactManifest:
    return registry_pb2.ArtifactManifest(
        digest=sha256_hex(data), size_bytes=len(data), format=fmt, model_id=model_id,
        version=version, created_unix_ms=created_unix_ms, publisher_key=publisher.public_key)


def sign_manifest(manifest: registry_pb2.ArtifactManifest, publisher: KeyPair, *,
                  issued_at_unix_ms: int, nonce: bytes | None = None) -> bytes:
    """Return the serialized, signed envelope for ``manifest``."""
    if manifest.publisher_key != publisher.public_key:
        raise PermissionDenied("manifest names another publisher key than the signing key")
    env = presence_pb2.SignedEnvelope(
        payload_type=MANIFEST_TYPE, payload=manifest.SerializeToString(deterministic=True),
        signer_key=publisher.public_key, nonce=nonce or secrets.token_bytes(16),
        issued_at_unix_ms=issued_at_unix_ms)
    env.signature = publisher.sign(env.SerializeToString(deterministic=True))
    return env.SerializeToString(deterministic=True)


def open_manifest(blob: bytes, *, digest: str,
                  trusted_keys: Collection[bytes] | None = None) -> registry_pb2.ArtifactManifest:
    """Parse and verify a signed manifest for the artifact ``digest``.

    ``trusted_keys`` None accepts any correctly signed manifest (development); otherwise the
    signer must be one of them.
    """
    env = presence_pb2.SignedEnvelope()
    try:
        env.ParseFromString(blob)
    except DecodeError as exc:
        raise DataLoss(f"manifest of {digest} is not a signed envelope",
                       details={"digest": digest}) from exc
    if env.payload_type != MANIFEST_TYPE:
        raise DataLoss(f"manifest of {digest} carries {env.payload_type!r}, not a manifest",
                       details={"digest": digest})
    if not env.signature:
        raise PermissionDenied(f"artifact {digest} is unsigned; refusing it",
                               details={"digest": digest})
    signature = env.signature
    env.signature = b""
    keys.verify(env.signer_key, env.SerializeToString(deterministic=True), signature)
    if trusted_keys is not None and env.signer_key not in trusted_keys:
        raise PermissionDenied(
            f"artifact {digest} is signed by {env.signer_key.hex()}, which is not a trusted "
            "publisher key", details={"digest": digest, "signer": env.signer_key.hex()})
    manifest = registry_pb2.ArtifactManifest()
    try:
        manifest.ParseFromString(env.payload)
    except DecodeError as exc:
        raise DataLoss(f"signed manifest of {digest} does not parse",
                       details={"digest": digest}) from exc
    if manifest.publisher_key != env.signer_key:
        raise PermissionDenied(f"manifest of {digest} names a publisher other than its signer",
                               details={"digest": digest})
    if manifest.digest != digest:
        raise DataLoss(f"manifest found under {digest} describes {manifest.digest!r}",
                       details={"digest": digest})
    return manifest


def check_artifact(data: bytes, manifest: registry_pb2.ArtifactManifest) -> None:
    """Raise DataLoss unless ``data`` has exactly the manifest's size and digest."""
    if len(data) != manifest.size_bytes:
        what = "truncated" if len(data) < manifest.size_bytes else "longer than signed"
        raise DataLoss(
            f"artifact {manifest.digest} is {what}: {len(data)} bytes, manifest says "
            f"{manifest.size_bytes}", details={"digest": manifest.digest})
    actual = sha256_hex(data)
    if actual != manifest.digest:
        raise DataLoss(f"artifact {manifest.digest} was tampered with: its bytes hash to {actual}",
                       details={"digest": manifest.digest, "actual": actual})
