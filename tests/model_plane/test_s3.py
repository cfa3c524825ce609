"""Artifacts on an S3-compatible server through the ``minio`` client.

The server is a real process started by the ``s3_endpoint`` fixture: moto's S3 server mode
(``python -m moto.server``). MinIO's own server binary is in no package registry these
machines reach, and moto's server speaks the same S3 HTTP API that the ``minio`` client uses
(bucket creation, put, stat, get, errors). Replicas are separate buckets; one "replica" on a
closed port stands for a server that is down.
"""

from __future__ import annotations

import pytest
from model_plane_support import free_port, s3_buckets

from tether.artifacts import ArtifactStore, S3Store, s3_client
from tether.errors import DataLoss, NotFound, Unavailable

pytestmark = pytest.mark.s3
DATA = bytes(range(256)) * 4096  # 1 MiB


def test_publish_and_fetch_across_three_buckets(s3_endpoint, publisher) -> None:
    buckets = s3_buckets(s3_endpoint)
    store = ArtifactStore(buckets, trusted_keys={publisher.public_key})
    ref = store.publish(DATA, fmt="onnx", model_id="m", version="1.0", role="model",
                        publisher=publisher)
    assert store.replicas_holding(ref.digest) == [b.name for b in buckets]
    got = store.fetch(ref.digest)
    assert got.data == DATA and got.replica == buckets[0].name
    with pytest.raises(NotFound):
        buckets[0].get("0" * 64)


def test_fetch_fails_over_to_a_good_bucket(s3_endpoint, publisher) -> None:
    buckets = s3_buckets(s3_endpoint)
    store = ArtifactStore(buckets, trusted_keys={publisher.public_key})
    digest = store.publish(DATA, fmt="onnx", model_id="m", version="1.0", role="model",
                           publisher=publisher).digest
    buckets[0].client.remove_object(bucket_name=buckets[0].bucket,
                                    object_name=buckets[0].prefix + digest)
    buckets[1].put(digest, DATA[: len(DATA) // 2])  # truncated copy
    got = store.fetch(digest)
    assert got.replica == buckets[2].name and got.data == DATA
    buckets[2].put(digest, b"x" + DATA[1:])  # tampered copy
    with pytest.raises(DataLoss) as err:
        store.fetch(digest)
    assert "truncated" in err.value.message and "tampered" in err.value.message


def test_a_server_that_is_down_is_skipped(s3_endpoint, publisher) -> None:
    dead = S3Store(s3_client(f"127.0.0.1:{free_port()}", "testing", "testing", timeout_s=2,
                             retries=0), "dead", create_bucket=False)
    buckets = s3_buckets(s3_endpoint)
    writer = ArtifactStore(buckets, trusted_keys={publisher.public_key})
    digest = writer.publish(DATA, fmt="onnx", model_id="m", version="1.0", role="model",
                            publisher=publisher).digest
    reader = ArtifactStore([dead, *buckets], trusted_keys={publisher.public_key})
    assert reader.fetch(digest).replica == buckets[0].name
    with pytest.raises(Unavailable, match="unreachable"):
        dead.get(digest)
    partial = ArtifactStore([dead, *buckets], write_quorum=4)
    with pytest.raises(Unavailable, match="reached 3 of 4"):
        partial.publish(b"new", fmt="onnx", model_id="m", version="1.0", role="model",
                        publisher=publisher)
