"""Content-addressed, signed artifacts: manifests, blob stores and the replicated store."""

from tether.artifacts.manifest import (
    check_artifact,
    make_manifest,
    open_manifest,
    sha256_hex,
    sign_manifest,
)
from tether.artifacts.replicated import ArtifactStore, VerifiedArtifact
from tether.artifacts.stores import (
    BlobStore,
    LocalDirectoryStore,
    S3Store,
    blob_store_from_spec,
    s3_client,
)

__all__ = [
    "ArtifactStore",
    "BlobStore",
    "LocalDirectoryStore",
    "S3Store",
    "VerifiedArtifact",
    "blob_store_from_spec",
    "check_artifact",
    "make_manifest",
    "open_manifest",
    "s3_client",
    "sha256_hex",
    "sign_manifest",
]
