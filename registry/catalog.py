"""Catalog: the registry's model logic over the metadata store.

Publishing stores a ``tether.v1.ModelRecord`` (artifacts, capabilities, policy, degrade-to)
under ``model_id`` + ``MAJOR.MINOR``; versions are immutable. Resolving applies the rules of
:mod:`tether.naming` and then the model's policy for the asking tenant. Degrading follows
``capabilities.degrade_to`` when the policy allows it. The RPC service is a thin shell over this.
"""

from __future__ import annotations

from collections.abc import Callable

from tether.artifacts.manifest import is_digest
from tether.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from tether.metadata import MetadataStore
from tether.metadata.store import now_unix_ms
from tether.naming import Version, check_model_id, resolve
from tether.v1 import registry_pb2

MAX_DEGRADE_HOPS = 4


class Catalog:
    def __init__(self, store: MetadataStore, *, clock: Callable[[], int] = now_unix_ms) -> None:
        self.store = store
        self._clock = clock

    def publish(self, record: registry_pb2.ModelRecord) -> registry_pb2.ModelRecord:
        """Validate and store a version; returns the stored record (with creation time set).

        Publishing the identical record again is a no-op; a different record under the same
        version raises AlreadyExists.
        """
        check_model_id(record.model.model_id)
        version = Version.parse(record.model.version)
        validate_record(record)
        rec = registry_pb2.ModelRecord()
        rec.CopyFrom(record)
        existing = self._find(rec.model.model_id, version)
        if existing is not None:
            if _same_contents(existing, rec):
                return existing
            raise AlreadyExists(
                f"{rec.model.model_id} {version} is already published with other contents; "
                "publish a new version instead",
                details={"model_id": rec.model.model_id, "version": str(version)})
        if not rec.created_unix_ms:
            rec.created_unix_ms = self._clock()
        degrade = rec.capabilities.degrade_to
        if degrade.model_id:
            self.resolve(degrade.model_id, degrade.version)  # must exist when published
        if not self.store.put_model_version(rec, version.major, version.minor):
            # The same version already exists; return the stored copy (its timestamp wins).
            return self.get(rec.model.model_id, str(version))
        return rec

    def get(self, model_id: str, version: str) -> registry_pb2.ModelRecord:
        v = Version.parse(version)
        found = self._find(model_id, v)
        if found is None:
            raise NotFound(f"{model_id} {v} is not published", details={"model_id": model_id})
        return found

    def _find(self, model_id: str, v: Version) -> registry_pb2.ModelRecord | None:
        for sv in self.store.model_versions(model_id):
            if Version(sv.major, sv.minor) == v:
                return sv.record
        return None

    def versions(self, model_id: str) -> list[str]:
        return [f"{sv.major}.{sv.minor}" for sv in self.store.model_versions(model_id)]

    def resolve(self, model_id: str, version: str = "",
                tenant_id: str | None = None) -> registry_pb2.ModelRecord:
        """The record a request for ``model_id`` at ``version`` gets, checked against policy.

        ``tenant_id`` None skips the policy check (internal callers).
        """
        check_model_id(model_id)
        stored = self.store.model_versions(model_id)
        if not stored:
            raise NotFound(f"unknown model {model_id}", details={"model_id": model_id})
        chosen = resolve(version, [Version(s.major, s.minor) for s in stored], model_id=model_id)
        record = next(s.record for s in stored if Version(s.major, s.minor) == chosen)
        if tenant_id is not None:
            check_policy(record, tenant_id)
        return record

    def degrade(self, record: registry_pb2.ModelRecord,
                tenant_id: str | None = None) -> registry_pb2.ModelRecord:
        """The model to run instead of ``record`` when capacity is short.

        FailedPrecondition when the record declares no degrade target or its policy forbids it.
        """
        if not record.policy.allow_degrade:
            raise FailedPrecondition(f"{record.model.model_id} does not allow degrading")
        target = record.capabilities.degrade_to
        if not target.model_id:
            raise FailedPrecondition(f"{record.model.model_id} declares no degrade-to model")
        return self.resolve(target.model_id, target.version, tenant_id)

    def degrade_chain(self, record: registry_pb2.ModelRecord,
                      tenant_id: str | None = None) -> list[registry_pb2.ModelRecord]:
        """Successive degrade targets, stopping at a model with none (or a cycle)."""
        chain: list[registry_pb2.ModelRecord] = []
        seen = {(record.model.model_id, record.model.version)}
        cur = record
        for _ in range(MAX_DEGRADE_HOPS):
            try:
                cur = self.degrade(cur, tenant_id)
            except FailedPrecondition:
                break
            key = (cur.model.model_id, cur.model.version)
            if key in seen:
                break
            seen.add(key)
            chain.append(cur)
        return chain


def _same_contents(a: registry_pb2.ModelRecord, b: registry_pb2.ModelRecord) -> bool:
    """Equal apart from the creation time, which a republish may leave unset."""
    x, y = registry_pb2.ModelRecord(), registry_pb2.ModelRecord()
    x.CopyFrom(a)
    y.CopyFrom(b)
    x.created_unix_ms = y.created_unix_ms = 0
    return x.SerializeToString(deterministic=True) == y.SerializeToString(deterministic=True)


def check_policy(record: registry_pb2.ModelRecord, tenant_id: str) -> None:
    allowed = record.policy.allowed_tenants
    if allowed and tenant_id not in allowed:
        raise PermissionDenied(
            f"tenant {tenant_id!r} may not use {record.model.model_id} {record.model.version}",
            details={"tenant_id": tenant_id, "model_id": record.model.model_id})


def validate_record(record: registry_pb2.ModelRecord) -> None:
    caps = record.capabilities
    if caps.task == registry_pb2.TASK_UNSPECIFIED:
        raise InvalidArgument("capabilities.task is required")
    roles = [a.role for a in record.artifacts]
    if "model" not in roles:
        raise InvalidArgument("a model version needs an artifact with role 'model'")
    if len(set(roles)) != len(roles):
        raise InvalidArgument("artifact roles must be unique within a version")
    for a in record.artifacts:
        if not is_digest(a.digest):
            raise InvalidArgument(f"artifact {a.role!r} has a bad digest {a.digest!r}")
        if a.role.startswith("adapter:") and a.format != "lora":
            raise InvalidArgument(f"adapter {a.role!r} must have format 'lora'")
    if len(record.publisher_key) != 32:
        raise InvalidArgument("publisher_key must be a 32-byte Ed25519 public key")
    for spec in [*caps.inputs, *caps.outputs]:
        if not spec.name:
            raise InvalidArgument("every input/output TensorSpec needs a name")
