"""SQLModel tables of Tether's metadata store.

The schema itself is owned by the Alembic migrations beside this file; these classes describe
the same tables for queries. A test checks that the migrated schema and these tables agree.

Models: ``models`` (one row per model id), ``model_versions`` (one per MAJOR.MINOR, with the
serialized ``tether.v1.ModelRecord``), ``capabilities`` and ``policies`` (queryable columns of
that record), ``artifacts`` (what each version is made of). Requests: ``jobs`` (each with
its owning orchestrator), ``orchestrator_leases`` (which owners are alive),
``reservations`` (unique on correlation id + retry token), ``quotas``, ``tenant_tokens``
(SHA-256 of the token, never the token), ``tenant_policies`` (per-tenant flags such as
end-to-end sealing), ``usage``, ``dead_letters`` (failed jobs). Fleet:
``admitted_workers`` (worker keys an operator admitted or revoked).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, LargeBinary, UniqueConstraint
from sqlmodel import Field, SQLModel


class Model(SQLModel, table=True):
    __tablename__ = "models"

    model_id: str = Field(primary_key=True, max_length=128)
    description: str = Field(default="")
    created_unix_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


class ModelVersion(SQLModel, table=True):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "major", "minor", name="uq_model_version"),)

    id: int | None = Field(default=None, primary_key=True)
    model_id: str = Field(foreign_key="models.model_id", index=True, max_length=128)
    major: int
    minor: int
    record: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    publisher_key: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_unix_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


class Capability(SQLModel, table=True):
    __tablename__ = "capabilities"

    version_id: int = Field(foreign_key="model_versions.id", primary_key=True)
    task: int
    gpu_classes: str = Field(default="")  # comma-separated; empty means any
    min_vram_gb: int = Field(default=0)
    max_input_length: int = Field(default=0)
    degrade_to_model: str = Field(default="")
    degrade_to_version: str = Field(default="")


class Policy(SQLModel, table=True):
    __tablename__ = "policies"

    version_id: int = Field(foreign_key="model_versions.id", primary_key=True)
    allowed_tenants: str = Field(default="")  # comma-separated; empty means every tenant
    rate_limit_rps: float = Field(default=0.0)
    allow_degrade: bool = Field(default=False)


class Artifact(SQLModel, table=True):
    __tablename__ = "artifacts"

    version_id: int = Field(foreign_key="model_versions.id", primary_key=True)
    role: str = Field(primary_key=True, max_length=128)
    digest: str = Field(index=True, max_length=64)
    size_bytes: int = Field(sa_column=Column(BigInteger, nullable=False))
    format: str = Field(max_length=32)


class Job(SQLModel, table=True):
    __tablename__ = "jobs"

    correlation_id: str = Field(primary_key=True, max_length=128)
    tenant_id: str = Field(index=True, max_length=128)
    model_id: str = Field(max_length=128)
    version: str = Field(max_length=32)
    state: int = Field(index=True)
    worker_id: str = Field(default="", max_length=128)
    attempts: int = Field(default=0)
    error_code: int = Field(default=0)
    error_message: str = Field(default="")
    created_unix_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    updated_unix_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    #: The orchestrator running it (public key, hex); another takes it over when its
    #: lease (``orchestrator_leases``) runs out.
    owner: str = Field(default="", index=True, max_length=64)
    #: The request as dispatched (seed pinned), to run it again or dead-letter it.
    request: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    #: Quota tokens charged at admission (given back if the job fails).
    quota_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))


class OrchestratorLease(SQLModel, table=True):
    """An orchestrator is alive while it renews its lease; the jobs of an owner whose
    lease ran out are taken over by another."""

    __tablename__ = "orchestrator_leases"

    owner: str = Field(primary_key=True, max_length=64)
    expires_unix_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


class Reservation(SQLModel, table=True):
    __tablename__ = "reservations"
    __table_args__ = (
        UniqueConstraint("correlation_id", "retry_token", name="uq_reservation_idempotency"),
    )

    id: int | None = Field(default=None, primary_key=True)
    correlation_id: str = Field(max_length=128)
    retry_token: str = Field(max_length=128)
    tenant_id: str = Field(max_length=128)
    worker_id: str = Field(default="", max_length=128)
    created_unix_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    expires_unix_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


class Quota(SQLModel, table=True):
    __tablename__ = "quotas"

    tenant_id: str = Field(primary_key=True, max_length=128)
    period_start_unix_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    period_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    limit_tokens: int = Field(sa_column=Column(BigInteger, nullable=False))
    used_tokens: int = Field(sa_column=Column(BigInteger, nullable=False))


class TenantToken(SQLModel, table=True):
    __tablename__ = "tenant_tokens"

    token_sha256: str = Field(primary_key=True, max_length=64)
    tenant_id: str = Field(index=True, max_length=128)
    label: str = Field(default="")
    created_unix_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    revoked: bool = Field(default=False)


class TenantPolicy(SQLModel, table=True):
    """A tenant's policy; a tenant without a row has the defaults (all off)."""

    __tablename__ = "tenant_policies"

    tenant_id: str = Field(primary_key=True, max_length=128)
    #: Seal the tenant's prompts and answers end to end (``tether.sealing``).
    e2e: bool = Field(default=False)
    updated_unix_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


class Usage(SQLModel, table=True):
    __tablename__ = "usage"

    id: int | None = Field(default=None, primary_key=True)
    tenant_id: str = Field(index=True, max_length=128)
    correlation_id: str = Field(max_length=128)
    model_id: str = Field(max_length=128)
    version: str = Field(max_length=32)
    input_tokens: int
    output_tokens: int
    compute_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    queue_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    recorded_unix_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


class DeadLetter(SQLModel, table=True):
    """A failed job kept for analysis and replay (the spec's Error Queue / DLQ): the
    request as it was dispatched, the typed error, and where it failed."""

    __tablename__ = "dead_letters"

    id: int | None = Field(default=None, primary_key=True)
    correlation_id: str = Field(index=True, max_length=128)
    retry_token: str = Field(max_length=128)
    tenant_id: str = Field(max_length=128)
    model_id: str = Field(max_length=128)
    version: str = Field(max_length=32)
    worker_id: str = Field(default="", max_length=128)
    request: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    error_code: int
    error_message: str = Field(default="")
    attempts: int = Field(default=0)
    created_unix_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    #: The retry token it was replayed under (``tether dlq replay``), and when.
    replayed_as: str = Field(default="", max_length=128)
    replayed_unix_ms: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))


class AdmittedWorker(SQLModel, table=True):
    """A worker key an operator admitted (``tether admit``) or revoked (``tether revoke``):
    orchestrators place work only on admitted keys (see ``tether.admission``)."""

    __tablename__ = "admitted_workers"

    #: The worker's Ed25519 public key, 64 hex characters.
    public_key: str = Field(primary_key=True, max_length=64)
    name: str = Field(default="", max_length=128)
    admitted_unix_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    #: A revoked key stays here so that it also overrides the data folder's worker keys.
    revoked: bool = Field(default=False)
    revoked_unix_ms: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
