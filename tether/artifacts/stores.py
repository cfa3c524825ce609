"""Blob stores that hold artifact replicas: a local directory and S3-compatible buckets.

A blob store is dumb on purpose: it keeps bytes under keys (``<digest>`` for the artifact,
``<digest>.manifest`` for its signed manifest) and maps its own failures to Tether errors
(``NotFound`` when a key is absent, ``Unavailable`` when the store cannot be reached).
Integrity is checked above it, by :mod:`tether.artifacts.replicated`.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

import urllib3
from minio import Minio
from minio.error import S3Error

from tether.errors import InvalidArgument, NotFound, Unavailable

_S3_MISSING = frozenset({"NoSuchKey", "NoSuchBucket", "NoSuchObject"})


class BlobStore(Protocol):
    """Where one replica of each artifact lives."""

    name: str

    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...


def _check_key(key: str) -> str:
    if not key or "/" in key or "\\" in key or key.startswith(".") or len(key) > 200:
        raise InvalidArgument(f"bad artifact key {key!r}")
    return key


class LocalDirectoryStore:
    """Blobs as files under ``root/<first two hex digits>/<key>``, written atomically."""

    def __init__(self, root: str | os.PathLike[str], name: str | None = None) -> None:
        self.root = Path(root)
        self.name = name or f"dir:{self.root.name}"

    def _path(self, key: str) -> Path:
        _check_key(key)
        return self.root / key[:2] / key

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise NotFound(f"{key} is not in {self.name}", details={"store": self.name}) from exc
        except OSError as exc:
            raise Unavailable(f"{self.name} cannot read {key}: {exc}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()


class S3Store:
    """Blobs as objects in one bucket of an S3-compatible server, through the ``minio`` client."""

    def __init__(self, client: Minio, bucket: str, *, create_bucket: bool = True,
                 prefix: str = "artifacts/") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.name = f"s3:{bucket}"
        if create_bucket:
            self._call(lambda: None if client.bucket_exists(bucket_name=bucket)
                       else client.make_bucket(bucket_name=bucket))

    def _call(self, fn):  # type: ignore[no-untyped-def]
        try:
            return fn()
        except S3Error as exc:
            if exc.code in _S3_MISSING:
                raise NotFound(f"{exc.code} in {self.name}", details={"store": self.name}) from exc
            raise Unavailable(f"{self.name} answered {exc.code}: {exc.message}",
                              details={"store": self.name}) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise Unavailable(f"{self.name} is unreachable: {exc}",
                              details={"store": self.name}) from exc

    def put(self, key: str, data: bytes) -> None:
        name = self.prefix + _check_key(key)
        self._call(lambda: self.client.put_object(
            bucket_name=self.bucket, object_name=name, data=io.BytesIO(data), length=len(data)))

    def get(self, key: str) -> bytes:
        name = self.prefix + _check_key(key)

        def read() -> bytes:
            resp = self.client.get_object(bucket_name=self.bucket, object_name=name)
            try:
                return bytes(resp.read())
            finally:
                resp.close()
                resp.release_conn()

        return bytes(self._call(read))

    def exists(self, key: str) -> bool:
        name = self.prefix + _check_key(key)
        try:
            self._call(lambda: self.client.stat_object(bucket_name=self.bucket, object_name=name))
        except NotFound:
            return False
        return True


def s3_client(endpoint: str, access_key: str, secret_key: str, *, secure: bool = False,
              timeout_s: float = 10.0, retries: int = 1) -> Minio:
    """A ``minio`` client with bounded timeouts and retries, so failover is prompt."""
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s),
        retries=urllib3.Retry(total=retries, backoff_factor=0.05,
                              status_forcelist=[500, 502, 503, 504]),
        maxsize=8)
    return Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure,
                 http_client=http)


def blob_store_from_spec(spec: str, *, create_bucket: bool = True) -> BlobStore:
    """A replica named on a command line: a directory, or an S3 bucket as
    ``s3://ACCESS:SECRET@HOST:PORT/BUCKET`` (``s3s://`` for HTTPS)."""
    if spec.startswith(("s3://", "s3s://")):
        u = urlsplit(spec)
        bucket = u.path.strip("/")
        if not (u.hostname and u.port and bucket and u.username and u.password):
            raise InvalidArgument(
                f"bad S3 replica {spec!r}: want s3://ACCESS:SECRET@HOST:PORT/BUCKET"
            )
        client = s3_client(
            f"{u.hostname}:{u.port}",
            unquote(u.username),
            unquote(u.password),
            secure=u.scheme == "s3s",
        )
        return S3Store(client, bucket, create_bucket=create_bucket)
    return LocalDirectoryStore(Path(spec), name=f"dir:{spec}")
