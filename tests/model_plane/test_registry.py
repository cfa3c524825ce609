"""Registry logic: version rules, publish/resolve on both databases, policies, degrade-to."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry.catalog import Catalog
from tether.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    TetherError,
)
from tether.keys import KeyPair
from tether.naming import Version, resolve
from tether.v1 import presence_pb2, registry_pb2

KP = KeyPair.from_seed(b"\x03" * 32)


def record(model_id: str, version: str, *, tenants=(), degrade=None, allow_degrade=False,
           digest: str = "ab" * 32) -> registry_pb2.ModelRecord:
    caps = registry_pb2.Capabilities(task=registry_pb2.TASK_EMBEDDING, max_input_length=256,
                                     gpu_classes=["h100"], min_vram_gb=4)
    if degrade:
        caps.degrade_to.CopyFrom(presence_pb2.ModelKey(model_id=degrade[0], version=degrade[1]))
    return registry_pb2.ModelRecord(
        model=presence_pb2.ModelKey(model_id=model_id, version=version), capabilities=caps,
        policy=registry_pb2.Policy(allowed_tenants=list(tenants), allow_degrade=allow_degrade),
        artifacts=[registry_pb2.ArtifactRef(digest=digest, size_bytes=10, format="onnx",
                                            role="model")],
        publisher_key=KP.public_key)


PUBLISHED = [Version(1, 0), Version(1, 2), Version(1, 10), Version(2, 0), Version(2, 1)]


@pytest.mark.parametrize(
    ("asked", "expected"),
    [("", "2.1"), ("1", "1.10"), ("2", "2.1"), ("1.2", "1.2"), ("1.0", "1.0"), ("2.0", "2.0")],
)
def test_version_rules(asked: str, expected: str) -> None:
    assert str(resolve(asked, PUBLISHED)) == expected


@pytest.mark.parametrize("asked", ["3", "1.1", "0.9"])
def test_unpublished_versions_are_not_found(asked: str) -> None:
    with pytest.raises(NotFound, match=r"published: 1\.0, 1\.2, 1\.10, 2\.0, 2\.1"):
        resolve(asked, PUBLISHED, model_id="m")


@pytest.mark.parametrize("asked", ["v1", "1.2.3", "01.2", "1.", ".1", "latest", " 1.0"])
def test_malformed_versions_are_invalid(asked: str) -> None:
    with pytest.raises(InvalidArgument):
        resolve(asked, PUBLISHED)


@given(st.text(max_size=12))
def test_fuzz_resolve_never_crashes(asked: str) -> None:
    try:
        got = resolve(asked, PUBLISHED)
    except TetherError:
        return
    assert got in PUBLISHED


def test_publish_resolve_policy_and_degrade(store) -> None:
    cat = Catalog(store, clock=lambda: 42)
    cat.publish(record("small-model", "1.0"))
    cat.publish(record("big-model", "1.0", tenants=["acme"]))
    cat.publish(record("big-model", "1.3", tenants=["acme"], degrade=("small-model", "1"),
                       allow_degrade=True))
    cat.publish(record("big-model", "2.0", tenants=["acme"]))

    assert cat.versions("big-model") == ["1.0", "1.3", "2.0"]
    assert cat.resolve("big-model", "", "acme").model.version == "2.0"
    got = cat.resolve("big-model", "1", "acme")
    assert got.model.version == "1.3" and got.created_unix_ms == 42
    assert got.capabilities.gpu_classes == ["h100"]
    with pytest.raises(PermissionDenied, match="'globex' may not use big-model"):
        cat.resolve("big-model", "1.3", "globex")
    assert cat.resolve("small-model", "", "globex").model.model_id == "small-model"
    assert cat.degrade(got, "acme").model.model_id == "small-model"
    assert [r.model.model_id for r in cat.degrade_chain(got)] == ["small-model"]
    with pytest.raises(FailedPrecondition):
        cat.degrade(cat.resolve("big-model", "2.0"))
    with pytest.raises(NotFound, match="unknown model"):
        cat.resolve("no-such-model")


def test_versions_are_immutable(store) -> None:
    cat = Catalog(store)
    first = cat.publish(record("m", "1.0"))
    assert cat.publish(record("m", "1.0")).created_unix_ms == first.created_unix_ms
    with pytest.raises(AlreadyExists, match="publish a new version"):
        cat.publish(record("m", "1.0", digest="cd" * 32))


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (lambda r: r.model.__setattr__("model_id", "Bad_Name"), "joined by '-' or '.'"),
        (lambda r: r.model.__setattr__("version", "1"), "MAJOR.MINOR"),
        (lambda r: r.capabilities.__setattr__("task", 0), "task is required"),
        (lambda r: r.artifacts[0].__setattr__("role", "weights"), "role 'model'"),
        (lambda r: r.artifacts[0].__setattr__("digest", "xyz"), "bad digest"),
        (lambda r: r.__setattr__("publisher_key", b"short"), "publisher_key"),
    ],
)
def test_bad_records_are_refused(store, mutate, words) -> None:
    r = record("m", "1.0")
    mutate(r)
    with pytest.raises(InvalidArgument, match=words):
        Catalog(store).publish(r)


def test_degrade_target_must_exist(store) -> None:
    with pytest.raises(NotFound):
        Catalog(store).publish(record("m", "1.0", degrade=("ghost", "")))
