"""Ed25519 key pairs for Tether: publishers sign artifact manifests, workers sign presence.

Keys are PyNaCl signing keys. On disk a key pair is its 32-byte seed, hex-encoded on one line,
in a file only its owner can read (mode 0600); :func:`KeyPair.load` refuses a file that others
can read. Verification raises :class:`tether.errors.PermissionDenied`, never a PyNaCl error.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import nacl.exceptions
import nacl.signing

from tether.errors import InvalidArgument, PermissionDenied

PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64


@dataclass(frozen=True)
class KeyPair:
    """An Ed25519 signing key and its public key."""

    signing_key: nacl.signing.SigningKey

    @classmethod
    def generate(cls) -> KeyPair:
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> KeyPair:
        if len(seed) != 32:
            raise InvalidArgument(f"an Ed25519 seed is 32 bytes, got {len(seed)}")
        return cls(nacl.signing.SigningKey(seed))

    @property
    def public_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    def sign(self, data: bytes) -> bytes:
        """Return the 64-byte detached signature of ``data``."""
        return bytes(self.signing_key.sign(data).signature)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the seed to ``path`` with mode 0600 (created so, never widened)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, bytes(self.signing_key).hex().encode() + b"\n")
        finally:
            os.close(fd)

    def save_public(self, path: str | os.PathLike[str]) -> None:
        """Write the public key (hex, one line) to ``path``, e.g. ``<name>.pub``; it is
        not secret: it is how other services on this machine know this one."""
        p = Path(path)
        text = self.public_key.hex() + "\n"
        if not p.exists() or p.read_text() != text:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KeyPair:
        p = Path(path)
        mode = stat.S_IMODE(p.stat().st_mode)
        if mode & 0o077:
            raise PermissionDenied(
                f"key file {p} is readable by others (mode {mode:o}); run chmod 600 on it",
                details={"path": str(p)},
            )
        try:
            seed = bytes.fromhex(p.read_text().strip())
        except ValueError as exc:
            raise InvalidArgument(f"key file {p} is not a hex Ed25519 seed") from exc
        return cls.from_seed(seed)

    @classmethod
    def load_or_generate(cls, path: str | os.PathLike[str]) -> KeyPair:
        if Path(path).exists():
            return cls.load(path)
        kp = cls.generate()
        kp.save(path)
        return kp


def verify(public_key: bytes, data: bytes, signature: bytes) -> None:
    """Check an Ed25519 signature; raise PermissionDenied when it does not hold."""
    if len(public_key) != PUBLIC_KEY_SIZE:
        raise PermissionDenied(f"public key must be {PUBLIC_KEY_SIZE} bytes, got {len(public_key)}")
    if len(signature) != SIGNATURE_SIZE:
        raise PermissionDenied(f"signature must be {SIGNATURE_SIZE} bytes, got {len(signature)}")
    try:
        nacl.signing.VerifyKey(public_key).verify(data, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError) as exc:
        raise PermissionDenied("bad signature", details={"key": public_key.hex()}) from exc


def is_valid(public_key: bytes, data: bytes, signature: bytes) -> bool:
    try:
        verify(public_key, data, signature)
    except PermissionDenied:
        return False
    return True
