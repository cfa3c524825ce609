"""Signed, content-addressed artifacts on local directory replicas: publish to N replicas,
fail over on fetch, refuse tampered, truncated, unsigned and untrusted artifacts, and never
crash on garbage manifests (fuzzed)."""

from __future__ import annotations

import contextlib
import logging
import os
import stat

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether import process
from tether.artifacts import ArtifactStore, LocalDirectoryStore, open_manifest, sha256_hex
from tether.artifacts.manifest import make_manifest, sign_manifest
from tether.artifacts.replicated import MANIFEST_SUFFIX
from tether.errors import (
    DataLoss,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    TetherError,
    Unavailable,
)
from tether.keys import KeyPair, is_valid, verify
from tether.v1 import presence_pb2

DATA = b"onnx bytes " * 1000


def publish(store: ArtifactStore, publisher: KeyPair, data: bytes = DATA) -> str:
    return store.publish(data, fmt="onnx", model_id="m", version="1.0", role="model",
                         publisher=publisher).digest


def test_keypair_file_is_private_and_round_trips(tmp_path) -> None:
    kp = KeyPair.generate()
    path = tmp_path / "keys" / "publisher.key"
    kp.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = KeyPair.load(path)
    assert again.public_key == kp.public_key
    sig = kp.sign(b"hello")
    verify(kp.public_key, b"hello", sig)
    assert not is_valid(kp.public_key, b"hellO", sig)
    with pytest.raises(PermissionDenied):
        verify(kp.public_key, b"hello", sig[:-1])
    os.chmod(path, 0o644)
    with pytest.raises(PermissionDenied, match="chmod 600"):
        KeyPair.load(path)


def test_publish_writes_every_replica_and_fetch_verifies(local_artifacts, publisher) -> None:
    digest = publish(local_artifacts, publisher)
    assert digest == sha256_hex(DATA)
    assert local_artifacts.replicas_holding(digest) == ["r0", "r1", "r2"]
    got = local_artifacts.fetch(digest)
    assert got.data == DATA and got.replica == "r0"
    assert got.manifest.model_id == "m" and got.manifest.publisher_key == publisher.public_key


def test_fewer_than_three_replicas_is_refused(tmp_path) -> None:
    with pytest.raises(InvalidArgument, match="at least 3 replicas"):
        ArtifactStore([LocalDirectoryStore(tmp_path / "a"), LocalDirectoryStore(tmp_path / "b")])
    five = ArtifactStore([LocalDirectoryStore(tmp_path / str(i)) for i in range(5)])
    assert five.write_quorum == 5


def test_fetch_fails_over_past_missing_and_tampered_replicas(local_artifacts, publisher) -> None:
    digest = publish(local_artifacts, publisher)
    r0, r1, _ = local_artifacts.replicas
    r0._path(digest).unlink()  # missing on r0
    r1.put(digest, DATA[:-1] + b"X")  # tampered on r1
    got = local_artifacts.fetch(digest)
    assert got.replica == "r2" and got.data == DATA


@pytest.mark.parametrize(
    ("damage", "error", "words"),
    [
        (lambda d: d[:-10], DataLoss, "truncated"),
        (lambda d: d[:-1] + bytes([d[-1] ^ 1]), DataLoss, "tampered"),
        (lambda d: d + b"!", DataLoss, "longer than signed"),
    ],
)
def test_damaged_everywhere_is_refused(local_artifacts, publisher, damage, error, words) -> None:
    digest = publish(local_artifacts, publisher)
    for r in local_artifacts.replicas:
        r.put(digest, damage(DATA))
    with pytest.raises(error, match=words) as err:
        local_artifacts.fetch(digest)
    assert set(err.value.details) == {"digest", "r0", "r1", "r2"}


def test_unsigned_and_untrusted_artifacts_are_refused(local_artifacts, publisher) -> None:
    digest = publish(local_artifacts, publisher)
    env = presence_pb2.SignedEnvelope()
    env.ParseFromString(local_artifacts.replicas[0].get(digest + MANIFEST_SUFFIX))
    env.signature = b""
    for r in local_artifacts.replicas:
        r.put(digest + MANIFEST_SUFFIX, env.SerializeToString())
    with pytest.raises(PermissionDenied, match="unsigned"):
        local_artifacts.fetch(digest)

    stranger = KeyPair.generate()
    digest2 = publish(local_artifacts, stranger, b"other bytes")
    with pytest.raises(PermissionDenied, match="not a trusted publisher"):
        local_artifacts.fetch(digest2)


def test_manifest_signed_for_other_bytes_is_refused(local_artifacts, publisher) -> None:
    digest = publish(local_artifacts, publisher)
    other = make_manifest(b"evil", fmt="onnx", model_id="m", version="1.0", publisher=publisher,
                          created_unix_ms=1)
    forged = sign_manifest(other, publisher, issued_at_unix_ms=1)
    for r in local_artifacts.replicas:
        r.put(digest + MANIFEST_SUFFIX, forged)
    with pytest.raises(DataLoss, match="describes"):
        local_artifacts.fetch(digest)


def test_missing_everywhere_and_bad_digest(local_artifacts) -> None:
    with pytest.raises(NotFound, match="on no replica"):
        local_artifacts.fetch("0" * 64)
    with pytest.raises(InvalidArgument):
        local_artifacts.fetch("../etc/passwd")


def test_publish_needs_its_write_quorum(tmp_path, publisher) -> None:
    class Broken(LocalDirectoryStore):
        def put(self, key: str, data: bytes) -> None:
            raise Unavailable("disk on fire")

    reps = [LocalDirectoryStore(tmp_path / "a", "a"), Broken(tmp_path / "b", "b"),
            LocalDirectoryStore(tmp_path / "c", "c")]
    with pytest.raises(Unavailable, match="reached 2 of 3"):
        publish(ArtifactStore(reps), publisher)
    ok = ArtifactStore(reps, write_quorum=2)
    assert ok.fetch(publish(ok, publisher)).data == DATA


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_fuzz_open_manifest_whole_and_byte_by_byte(blob: bytes) -> None:
    """Any bytes are a verified manifest or a TetherError, fed whole and as every prefix."""
    for n in range(len(blob) + 1):
        with contextlib.suppress(TetherError):
            open_manifest(blob[:n], digest="a" * 64)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10_000), st.binary(min_size=1, max_size=4))
def test_fuzz_mutated_real_manifest(pos: int, noise: bytes) -> None:
    kp = KeyPair.from_seed(b"\x01" * 32)
    m = make_manifest(DATA, fmt="onnx", model_id="m", version="1.0", publisher=kp,
                      created_unix_ms=5)
    blob = bytearray(sign_manifest(m, kp, issued_at_unix_ms=5, nonce=b"\x00" * 16))
    i = pos % len(blob)
    blob[i : i + len(noise)] = noise
    try:
        got = open_manifest(bytes(blob), digest=m.digest)
    except TetherError:
        return
    assert got.digest == m.digest and got.size_bytes == len(DATA)


def test_each_failing_replica_is_logged_by_name(local_artifacts, publisher, caplog) -> None:
    digest = publish(local_artifacts, publisher)
    r0, r1, _ = local_artifacts.replicas
    r0._path(digest).unlink()
    r1.put(digest, DATA[:-1] + b"X")
    with caplog.at_level(logging.INFO, logger="tether.artifacts"):
        assert local_artifacts.fetch(digest).replica == "r2"
    by_level = {(r.levelname, r.getMessage().split(":")[0]) for r in caplog.records}
    assert by_level == {
        ("INFO", f"artifact {digest} on replica r0 is not available"),
        ("WARNING", f"artifact {digest} on replica r1 failed verification"),
    }


def test_a_service_stopped_by_bad_replicas_says_so_in_one_line(
    local_artifacts, publisher, capsys, monkeypatch
) -> None:
    """No replica holds a good copy: the worker stops with one line naming each replica's
    fault and status 1, not a traceback through its task groups."""
    # A handler an earlier test's setup_logging left writes to a stream gone since.
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    digest = publish(local_artifacts, publisher)
    for r in local_artifacts.replicas:
        r.put(digest, DATA[:-1] + b"X")

    async def worker() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            local_artifacts.fetch(digest)

    assert process.run_service("worker", worker) == 1
    err = capsys.readouterr().err  # may also hold the per-replica log lines
    [line] = [x for x in err.splitlines() if x.startswith("tether worker:")]
    assert "Traceback" not in err
    assert line.startswith(f"tether worker: no replica serves a verified copy of {digest} (r0: ")
    assert "r1: " in line and "r2: " in line

    async def bug() -> None:
        raise Internal("a bug keeps its traceback")

    with pytest.raises(BaseExceptionGroup):
        process.run_service("worker", bug)
