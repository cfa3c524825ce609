"""ArtifactStore: publish to N replicas, fetch with failover, verify before anything loads.

Publishing writes the artifact and its signed manifest to every replica and succeeds when at
least ``write_quorum`` replicas (default: all of them, N >= 3) hold both. Fetching tries the
replicas in order; a replica that is unreachable, lacks the artifact, or serves bytes that fail
verification is skipped, and the next one is asked. Only bytes whose signed manifest verifies
against a trusted publisher key and whose size and SHA-256 match that manifest are returned.
Each replica that fails is logged with its name (a failed verification as a warning); when no
replica can serve a verified copy the one error says what each replica did wrong.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from tether.artifacts.manifest import (
    check_artifact,
    is_digest,
    make_manifest,
    open_manifest,
    sign_manifest,
)
from tether.artifacts.stores import BlobStore
from tether.errors import (
    DataLoss,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    TetherError,
    Unavailable,
)
from tether.keys import KeyPair
from tether.metadata.store import now_unix_ms
from tether.v1 import registry_pb2

log = logging.getLogger("tether.artifacts")

MANIFEST_SUFFIX = ".manifest"
MIN_REPLICAS = 3


@dataclass(frozen=True)
class VerifiedArtifact:
    data: bytes
    manifest: registry_pb2.ArtifactManifest
    replica: str  # name of the store that served it


class ArtifactStore:
    """A set of replica blob stores treated as one content-addressed, signed store."""

    def __init__(self, replicas: Sequence[BlobStore], *,
                 trusted_keys: Collection[bytes] | None = None,
                 write_quorum: int | None = None, min_replicas: int = MIN_REPLICAS,
                 clock: Callable[[], int] = now_unix_ms) -> None:
        if len(replicas) < min_replicas:
            raise InvalidArgument(
                f"artifacts need at least {min_replicas} replicas, {len(replicas)} given")
        self.replicas = list(replicas)
        self.trusted_keys = None if trusted_keys is None else frozenset(trusted_keys)
        self.write_quorum = len(self.replicas) if write_quorum is None else write_quorum
        if not 1 <= self.write_quorum <= len(self.replicas):
            raise InvalidArgument(f"write quorum {self.write_quorum} out of range")
        self._clock = clock

    def publish(self, data: bytes, *, fmt: str, model_id: str, version: str, role: str,
                publisher: KeyPair) -> registry_pb2.ArtifactRef:
        """Sign and replicate ``data``; return its reference for a ModelRecord."""
        now = self._clock()
        manifest = make_manifest(data, fmt=fmt, model_id=model_id, version=version,
                                 publisher=publisher, created_unix_ms=now)
        signed = sign_manifest(manifest, publisher, issued_at_unix_ms=now)
        written, failures = 0, {}
        for replica in self.replicas:
            try:
                # Bytes first, manifest last: a manifest never points at a missing blob.
                replica.put(manifest.digest, data)
                replica.put(manifest.digest + MANIFEST_SUFFIX, signed)
                written += 1
            except TetherError as exc:
                failures[replica.name] = exc.message
        if written < self.write_quorum:
            raise Unavailable(
                f"artifact {manifest.digest} reached {written} of {len(self.replicas)} replicas, "
                f"needs {self.write_quorum}", details=failures)
        return registry_pb2.ArtifactRef(digest=manifest.digest, size_bytes=len(data),
                                        format=fmt, role=role)

    def fetch(self, digest: str) -> VerifiedArtifact:
        """Return verified bytes for ``digest`` from the first replica that has a good copy."""
        if not is_digest(digest):
            raise InvalidArgument(f"{digest!r} is not a lowercase hex SHA-256 digest")
        errors: list[tuple[str, TetherError]] = []
        for replica in self.replicas:
            try:
                signed = replica.get(digest + MANIFEST_SUFFIX)
                manifest = open_manifest(signed, digest=digest, trusted_keys=self.trusted_keys)
                data = replica.get(digest)
                check_artifact(data, manifest)
            except TetherError as exc:
                errors.append((replica.name, exc))
                # A copy that fails verification is worth an operator's look; a missing
                # or unreachable one is ordinary failover.
                bad = isinstance(exc, DataLoss | PermissionDenied)
                log.log(logging.WARNING if bad else logging.INFO,
                        "artifact %s on replica %s %s: %s", digest, replica.name,
                        "failed verification" if bad else "is not available", exc.message)
                continue
            return VerifiedArtifact(data, manifest, replica.name)
        raise _combine(digest, errors)

    def replicas_holding(self, digest: str) -> list[str]:
        out = []
        for r in self.replicas:
            try:
                if r.exists(digest) and r.exists(digest + MANIFEST_SUFFIX):
                    out.append(r.name)
            except TetherError:
                continue
        return out


def _combine(digest: str, errors: list[tuple[str, TetherError]]) -> TetherError:
    """One error for a failed fetch: the most telling kind, with every replica's reason."""
    details = {"digest": digest} | {name: f"{e.code_name}: {e.message}" for name, e in errors}
    summary = "; ".join(f"{name}: {e.message}" for name, e in errors)
    for kind in (DataLoss, PermissionDenied):
        if any(isinstance(e, kind) for _, e in errors):
            return kind(f"no replica serves a verified copy of {digest} ({summary})",
                        details=details)
    if errors and all(isinstance(e, NotFound) for _, e in errors):
        return NotFound(f"artifact {digest} is on no replica", details=details)
    return Unavailable(f"artifact {digest} could not be fetched ({summary})", details=details)
