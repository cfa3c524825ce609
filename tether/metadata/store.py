"""MetadataStore: Tether's SQL metadata, on SQLite (WAL, the default) or PostgreSQL (by URL).

It owns the connection, the schema migrations (Alembic, run with :meth:`MetadataStore.migrate`)
and the few operations whose atomicity matters: idempotent reservations, quota consumption,
hashed tenant tokens. It does not decide model resolution or policy; the registry's catalog
does, on top of :meth:`put_model_version` and :meth:`model_versions`.

Every method is synchronous (SQLAlchemy is); trio callers run them in
``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import bindparam, case, event, func, update
from sqlalchemy import insert as sa_insert
from sqlalchemy import select as sa_select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session, col, create_engine, select

from tether.errors import (
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from tether.metadata import tables as t
from tether.v1 import infer_pb2, jobs_pb2, registry_pb2, status_pb2

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: States in which an orchestrator is still running a job (so it has a live owner or is
#: taken over by another orchestrator).
ACTIVE_JOB_STATES = (jobs_pb2.JOB_STATE_RESERVED, jobs_pb2.JOB_STATE_DISPATCHED,
                     jobs_pb2.JOB_STATE_STREAMING)
TOKEN_PREFIX = "tt_"
TOKEN_BYTES = 32


def now_unix_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class UsageLine:
    """Usage of one model version by one tenant over a period."""

    tenant_id: str
    model_id: str
    version: str
    requests: int
    input_tokens: int
    output_tokens: int
    compute_ms: int


def hash_token(token: str) -> str:
    """SHA-256 of the token text. Tokens are 256 random bits, so a fast hash is enough."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class ReservationResult:
    correlation_id: str
    retry_token: str
    tenant_id: str
    worker_id: str
    expires_unix_ms: int
    created: bool  # False when this (correlation_id, retry_token) was already reserved


@dataclass(frozen=True)
class StoredVersion:
    major: int
    minor: int
    record: registry_pb2.ModelRecord


def sqlite_url(path: str | os.PathLike[str]) -> str:
    return f"sqlite:///{Path(path).resolve()}"


_MIGRATION_LOCK = threading.Lock()


class _HotStatements:
    """The statements of every request's writes, built once: building a statement costs
    more CPU than running it (SQLAlchemy's construction and cache keys), and these run
    with bound parameters on the connection, past the ORM."""

    def __init__(self, insert: Callable[[type[Any]], Any]) -> None:
        R, J, Q = t.Reservation, t.Job, t.Quota
        self.reserve = insert(R).on_conflict_do_nothing(
            index_elements=["correlation_id", "retry_token"]).returning(col(R.id))
        self.reservation = sa_select(
            col(R.tenant_id), col(R.worker_id), col(R.expires_unix_ms)
        ).where(col(R.correlation_id) == bindparam("b_cid"),
                col(R.retry_token) == bindparam("b_retry"))
        job = insert(J)
        again = ("state", "model_id", "version", "worker_id", "error_code", "error_message",
                 "updated_unix_ms", "owner", "request", "quota_tokens")
        # A job started over under a new retry token keeps its creation time and counts
        # one attempt more; a job belongs to one tenant (another's: nothing returned).
        self.job = job.on_conflict_do_update(
            index_elements=["correlation_id"],
            set_={**{c: job.excluded[c] for c in again}, "attempts": col(J.attempts) + 1},
            where=col(J.tenant_id) == job.excluded.tenant_id,
        ).returning(col(J.correlation_id))
        self.succeed = (update(J).where(col(J.correlation_id) == bindparam("b_cid"),
                                        col(J.owner) == bindparam("b_owner"),
                                        col(J.state).in_(ACTIVE_JOB_STATES))
                        .values(state=jobs_pb2.JOB_STATE_SUCCEEDED,
                                updated_unix_ms=bindparam("b_now")))
        self.usage = sa_insert(t.Usage)
        self.has_quota = sa_select(col(Q.tenant_id)).where(
            col(Q.tenant_id) == bindparam("b_tenant"))


class MetadataStore:
    """One SQL database holding models, jobs, reservations, quotas, tokens and usage."""

    def __init__(self, url: str, *, clock: Callable[[], int] = now_unix_ms) -> None:
        self.url = url
        self._clock = clock
        self.dialect = url.split(":", 1)[0].split("+", 1)[0]
        kwargs: dict[str, Any] = {}
        if self.dialect == "sqlite":
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
            path = url.removeprefix("sqlite:///")
            if path and path != url and not path.startswith(":memory:"):
                Path(path).parent.mkdir(parents=True, exist_ok=True)
        else:
            kwargs["pool_pre_ping"] = True
        self.engine: Engine = create_engine(url, **kwargs)
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)

    @classmethod
    def sqlite(cls, path: str | os.PathLike[str], **kw: Any) -> MetadataStore:
        return cls(sqlite_url(path), **kw)

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------ schema

    def _alembic_config(self) -> Config:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        return cfg

    def migrate(self, revision: str = "head") -> None:
        """Bring the schema to ``revision`` (default: the newest)."""
        cfg = self._alembic_config()
        try:
            # Alembic keeps its running context in module globals: one migration at a time
            # per process, even when several stores start together in threads.
            with _MIGRATION_LOCK, self.engine.begin() as conn:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
        except OperationalError as exc:
            raise Unavailable(
                f"metadata store at {self._safe_url()} is unreachable: {exc.orig}"
            ) from exc

    def downgrade(self, revision: str) -> None:
        cfg = self._alembic_config()
        with _MIGRATION_LOCK, self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, revision)

    def current_revision(self) -> str | None:
        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def head_revision(self) -> str | None:
        return ScriptDirectory.from_config(self._alembic_config()).get_current_head()

    def check_schema(self) -> None:
        current, head = self.current_revision(), self.head_revision()
        if current != head:
            raise FailedPrecondition(
                f"metadata schema is at {current}, code expects {head}: run store.migrate()"
            )

    def _safe_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as s:
            yield s

    @contextmanager
    def write_session(self) -> Iterator[Session]:
        """A session whose transaction is open from the start, for writes with savepoints.

        On SQLite it takes the write lock at once (BEGIN IMMEDIATE: a read upgraded to a
        write later may find the lock taken) and opens the transaction that savepoints
        nest in; pysqlite would open one only before its first write, and a savepoint
        opened outside a transaction commits when it is released."""
        with self.session() as s:
            if self.dialect == "sqlite":
                s.connection().exec_driver_sql("BEGIN IMMEDIATE")
            yield s

    # ------------------------------------------------------------------ models

    def put_model_version(self, record: registry_pb2.ModelRecord, major: int, minor: int) -> bool:
        """Store one version; True if new, False if the identical record was already there.

        A different record under an existing MAJOR.MINOR raises AlreadyExists: versions are
        immutable once published.
        """
        blob = record.SerializeToString(deterministic=True)
        mid = record.model.model_id
        with self.session() as s:
            existing = s.exec(
                select(t.ModelVersion).where(
                    t.ModelVersion.model_id == mid,
                    t.ModelVersion.major == major,
                    t.ModelVersion.minor == minor,
                )
            ).first()
            if existing is not None:
                if existing.record == blob:
                    return False
                raise AlreadyExists(
                    f"{mid} {major}.{minor} is already published with other contents; "
                    "publish a new version instead",
                    details={"model_id": mid, "version": f"{major}.{minor}"},
                )
            if s.get(t.Model, mid) is None:
                s.add(t.Model(model_id=mid, description=record.description,
                              created_unix_ms=record.created_unix_ms or self._clock()))
                s.flush()
            mv = t.ModelVersion(model_id=mid, major=major, minor=minor, record=blob,
                                publisher_key=record.publisher_key,
                                created_unix_ms=record.created_unix_ms or self._clock())
            s.add(mv)
            s.flush()
            assert mv.id is not None
            caps = record.capabilities
            s.add(t.Capability(
                version_id=mv.id, task=caps.task, gpu_classes=",".join(caps.gpu_classes),
                min_vram_gb=caps.min_vram_gb, max_input_length=caps.max_input_length,
                degrade_to_model=caps.degrade_to.model_id,
                degrade_to_version=caps.degrade_to.version))
            pol = record.policy
            s.add(t.Policy(version_id=mv.id, allowed_tenants=",".join(pol.allowed_tenants),
                           rate_limit_rps=pol.rate_limit_rps, allow_degrade=pol.allow_degrade))
            for a in record.artifacts:
                s.add(t.Artifact(version_id=mv.id, role=a.role, digest=a.digest,
                                 size_bytes=a.size_bytes, format=a.format))
            try:
                s.commit()
            except IntegrityError as exc:
                raise AlreadyExists(f"{mid} {major}.{minor} was published concurrently") from exc
        return True

    def model_versions(self, model_id: str) -> list[StoredVersion]:
        """All versions of a model, oldest first."""
        with self.session() as s:
            rows = s.exec(
                select(t.ModelVersion)
                .where(t.ModelVersion.model_id == model_id)
                .order_by(col(t.ModelVersion.major), col(t.ModelVersion.minor))
            ).all()
        out = []
        for row in rows:
            rec = registry_pb2.ModelRecord()
            rec.ParseFromString(row.record)
            out.append(StoredVersion(row.major, row.minor, rec))
        return out

    def model_ids(self) -> list[str]:
        with self.session() as s:
            return list(s.exec(select(t.Model.model_id).order_by(col(t.Model.model_id))).all())

    def versions_using_artifact(self, digest: str) -> list[tuple[str, int, int]]:
        with self.session() as s:
            rows = s.exec(
                select(t.ModelVersion.model_id, t.ModelVersion.major, t.ModelVersion.minor)
                .join(t.Artifact, col(t.Artifact.version_id) == col(t.ModelVersion.id))
                .where(t.Artifact.digest == digest)
            ).all()
        return [(m, a, b) for m, a, b in rows]

    # -------------------------------------------------------------------- jobs

    def create_job(self, correlation_id: str, tenant_id: str, model_id: str,
                   version: str) -> jobs_pb2.JobStatus:
        """Record a job as RESERVED; for an existing job (a retry under a new retry token)
        start it over as RESERVED, keeping its creation time and attempt count.

        A job belongs to one tenant: another tenant's correlation id raises AlreadyExists.
        """
        now = self._clock()
        with self.session() as s:
            job = s.get(t.Job, correlation_id)
            if job is None:
                s.add(t.Job(correlation_id=correlation_id, tenant_id=tenant_id,
                            model_id=model_id, version=version,
                            state=jobs_pb2.JOB_STATE_RESERVED, created_unix_ms=now,
                            updated_unix_ms=now))
            elif job.tenant_id != tenant_id:
                raise AlreadyExists(f"job {correlation_id} belongs to another tenant")
            else:
                job.state = jobs_pb2.JOB_STATE_RESERVED
                job.model_id, job.version = model_id, version
                job.error_code, job.error_message = 0, ""
                job.updated_unix_ms = now
                s.add(job)
            try:
                s.commit()
            except IntegrityError as exc:
                raise AlreadyExists(f"job {correlation_id} was created concurrently") from exc
        return self.get_job(correlation_id)

    def update_job(self, correlation_id: str, state: int, *, worker_id: str | None = None,
                   error: status_pb2.Error | None = None, attempt: bool = False,
                   owner: str | None = None) -> bool:
        """Move a job to ``state``. With ``owner``, only while that orchestrator still owns
        it: False (nothing written) when another took it over."""
        with self.session() as s:
            job = s.get(t.Job, correlation_id)
            if job is None:
                raise NotFound(f"no job {correlation_id}")
            if owner is not None and job.owner != owner:
                return False
            job.state = state
            job.updated_unix_ms = self._clock()
            if worker_id is not None:
                job.worker_id = worker_id
            if attempt:
                job.attempts += 1
            if error is not None:
                job.error_code, job.error_message = error.code, error.message
            s.add(job)
            s.commit()
        return True

    def job_record(self, correlation_id: str) -> t.Job:
        """The job's row (owner, dispatched request and charged quota included)."""
        with self.session() as s:
            job = s.get(t.Job, correlation_id)
        if job is None:
            raise NotFound(f"no job {correlation_id}")
        return job

    # ---------------------------------------------------- orchestrator ownership

    def renew_lease(self, owner: str, ttl_ms: int) -> None:
        """Say that orchestrator ``owner`` is alive for ``ttl_ms`` more milliseconds."""
        expires = self._clock() + ttl_ms
        with self.session() as s:
            lease = s.get(t.OrchestratorLease, owner)
            if lease is None:
                lease = t.OrchestratorLease(owner=owner, expires_unix_ms=expires)
            lease.expires_unix_ms = expires
            s.add(lease)
            try:
                s.commit()
            except IntegrityError:  # two renewals of a new lease at once: either is right
                s.rollback()

    def end_lease(self, owner: str) -> None:
        """``owner`` is stopping: anything it still owns may be taken over at once."""
        with self.session() as s:
            s.exec(update(t.OrchestratorLease).where(col(t.OrchestratorLease.owner) == owner)
                   .values(expires_unix_ms=0))
            s.commit()

    def owner_alive(self, owner: str) -> bool:
        with self.session() as s:
            lease = s.get(t.OrchestratorLease, owner)
        return lease is not None and lease.expires_unix_ms > self._clock()

    def owned_jobs(self, owner: str) -> list[str]:
        """Correlation ids of the jobs ``owner`` is still running."""
        with self.session() as s:
            return list(s.exec(select(t.Job.correlation_id).where(
                t.Job.owner == owner, col(t.Job.state).in_(ACTIVE_JOB_STATES))).all())

    def orphaned_jobs(self, me: str, *, limit: int = 256) -> list[tuple[str, str]]:
        """``(correlation id, owner)`` of running jobs whose owner is not ``me`` and has no
        live lease: their orchestrator died, and ``me`` may take them over."""
        J, L = t.Job, t.OrchestratorLease
        live = sa_select(col(L.owner)).where(col(L.expires_unix_ms) > self._clock())
        query = (sa_select(col(J.correlation_id), col(J.owner))
                 .where(col(J.state).in_(ACTIVE_JOB_STATES), col(J.owner) != "",
                        col(J.owner) != me, col(J.owner).not_in(live))
                 .limit(limit))
        with self.session() as s:
            return [(str(cid), str(owner)) for cid, owner in s.execute(query).all()]

    def claim_job(self, correlation_id: str, owner: str, *, from_owner: str,
                  cancelled_too: bool = False) -> bool:
        """Take a running job over from ``from_owner`` (one conditional UPDATE, so two
        orchestrators cannot both take it): it is DISPATCHED again, one attempt more.
        ``cancelled_too``: also one ``from_owner`` marked CANCELLED (it saw its caller's
        connection drop, which the caller did to leave it, not to cancel)."""
        J = t.Job
        states = (*ACTIVE_JOB_STATES, *([jobs_pb2.JOB_STATE_CANCELLED] if cancelled_too else []))
        stmt = (update(J).where(col(J.correlation_id) == correlation_id,
                                col(J.owner) == from_owner,
                                col(J.state).in_(states))
                .values(owner=owner, state=jobs_pb2.JOB_STATE_DISPATCHED,
                        attempts=col(J.attempts) + 1, updated_unix_ms=self._clock(),
                        error_code=0, error_message=""))
        with self.session() as s:
            claimed = s.exec(stmt).rowcount
            s.commit()
        return bool(claimed)

    def fail_job(self, correlation_id: str, error: status_pb2.Error, *, owner: str,
                 request: infer_pb2.Infer.Request | None = None, worker_id: str = "") -> bool:
        """A running job of ``owner`` failed, in ONE transaction: it is marked FAILED with
        ``error``, its request (``request``, else the one stored at admission) goes to the
        dead-letter queue, the quota it charged is given back and its reservations end.
        False, with nothing written, when the job is not running under ``owner`` (another
        orchestrator took it over, or it already finished)."""
        J = t.Job
        now = self._clock()
        with self.session() as s:
            failed = s.exec(update(J).where(col(J.correlation_id) == correlation_id,
                                            col(J.owner) == owner,
                                            col(J.state).in_(ACTIVE_JOB_STATES))
                            .values(state=jobs_pb2.JOB_STATE_FAILED, error_code=int(error.code),
                                    error_message=error.message, updated_unix_ms=now)).rowcount
            if not failed:
                s.rollback()
                return False
            job = s.get(J, correlation_id)
            assert job is not None
            if request is None:
                request = infer_pb2.Infer.Request(
                    correlation_id=correlation_id, tenant_id=job.tenant_id,
                    model_id=job.model_id, version=job.version)
                if job.request:
                    request.ParseFromString(job.request)
            s.add(self._dead_letter_row(request, error, worker_id or job.worker_id,
                                        job.attempts))
            if job.quota_tokens:
                Q = t.Quota
                s.exec(update(Q).where(col(Q.tenant_id) == job.tenant_id).values(
                    used_tokens=case((col(Q.used_tokens) > job.quota_tokens,
                                      col(Q.used_tokens) - job.quota_tokens), else_=0)))
            R = t.Reservation
            s.exec(update(R).where(col(R.correlation_id) == correlation_id,
                                   col(R.expires_unix_ms) > now).values(expires_unix_ms=now))
            s.commit()
        return True

    def get_job(self, correlation_id: str) -> jobs_pb2.JobStatus:
        with self.session() as s:
            job = s.get(t.Job, correlation_id)
        if job is None:
            raise NotFound(f"no job {correlation_id}")
        st = jobs_pb2.JobStatus(
            correlation_id=job.correlation_id, state=job.state, worker_id=job.worker_id,  # type: ignore[arg-type]
            attempts=job.attempts, created_unix_ms=job.created_unix_ms,
            updated_unix_ms=job.updated_unix_ms)
        if job.error_code:
            st.error.code = job.error_code  # type: ignore[assignment]
            st.error.message = job.error_message
        return st

    # ------------------------------------------------------------ reservations

    def reserve(self, correlation_id: str, retry_token: str, tenant_id: str, *,
                worker_id: str = "", ttl_ms: int = 60_000) -> ReservationResult:
        """Reserve (correlation_id, retry_token) once; a repeat returns the first reservation."""
        now = self._clock()
        row = t.Reservation(correlation_id=correlation_id, retry_token=retry_token,
                            tenant_id=tenant_id, worker_id=worker_id, created_unix_ms=now,
                            expires_unix_ms=now + ttl_ms)
        with self.session() as s:
            s.add(row)
            try:
                s.commit()
                return ReservationResult(correlation_id, retry_token, tenant_id, worker_id,
                                         row.expires_unix_ms, True)
            except IntegrityError:
                s.rollback()
        with self.session() as s:
            old = s.exec(select(t.Reservation).where(
                t.Reservation.correlation_id == correlation_id,
                t.Reservation.retry_token == retry_token)).one()
        return ReservationResult(old.correlation_id, old.retry_token, old.tenant_id,
                                 old.worker_id, old.expires_unix_ms, False)

    # ------------------------------------------------------------------ quotas

    def set_quota(self, tenant_id: str, limit_tokens: int, period_ms: int) -> None:
        with self.session() as s:
            q = s.get(t.Quota, tenant_id)
            if q is None:
                q = t.Quota(tenant_id=tenant_id, period_start_unix_ms=self._clock(),
                            period_ms=period_ms, limit_tokens=limit_tokens, used_tokens=0)
            q.limit_tokens, q.period_ms = limit_tokens, period_ms
            s.add(q)
            s.commit()

    def consume_quota(self, tenant_id: str, tokens: int) -> int:
        """Take ``tokens`` from the tenant's quota atomically; return what is left.

        Raises ResourceExhausted (nothing taken) when the quota would be exceeded and NotFound
        when the tenant has no quota. A new period starts when the previous one is over.
        """
        with self.session() as s:
            left = self._take_quota(s, tenant_id, tokens, self._clock())
            if left is None:
                raise NotFound(f"tenant {tenant_id} has no quota")
            s.commit()
            return left

    def _take_quota(self, s: Session, tenant_id: str, tokens: int, now: int) -> int | None:
        """Inside ``s``: take ``tokens`` (ResourceExhausted when they do not fit, and then the
        caller rolls back); the tokens left, or None when the tenant has no quota. The caller
        commits."""
        Q = t.Quota
        has = s.connection().execute(self._hot.has_quota, {"b_tenant": tenant_id})
        if has.first() is None:  # most tenants have none: no write at all
            return None
        # Roll the period over first, then take with one conditional UPDATE, which is
        # atomic on SQLite and PostgreSQL alike.
        s.exec(update(Q).where(col(Q.tenant_id) == tenant_id,
                               col(Q.period_start_unix_ms) + col(Q.period_ms) <= now)
               .values(period_start_unix_ms=now, used_tokens=0))
        res = s.exec(update(Q).where(col(Q.tenant_id) == tenant_id,
                                     col(Q.used_tokens) + tokens <= col(Q.limit_tokens))
                     .values(used_tokens=col(Q.used_tokens) + tokens))
        q = s.get(Q, tenant_id)
        assert q is not None
        s.refresh(q)
        if res.rowcount == 0:  # the caller's transaction (or savepoint) is rolled back
            raise ResourceExhausted(
                f"tenant {tenant_id} quota exhausted: {q.used_tokens}/{q.limit_tokens} "
                f"tokens used this period, {tokens} more asked",
                details={"tenant_id": tenant_id, "limit": str(q.limit_tokens),
                         "used": str(q.used_tokens),
                         "resets_unix_ms": str(q.period_start_unix_ms + q.period_ms)})
        return q.limit_tokens - q.used_tokens

    def admit_job(self, correlation_id: str, retry_token: str, tenant_id: str, *,
                  model_id: str, version: str, worker_id: str, quota_tokens: int,
                  ttl_ms: int = 60_000, owner: str = "",
                  request: infer_pb2.Infer.Request | None = None) -> ReservationResult:
        """The orchestrator's strong decisions before dispatch, in ONE transaction: see
        :meth:`admit_in`."""
        with self.write_session() as s:
            result = self.admit_in(
                s, correlation_id, retry_token, tenant_id, model_id=model_id, version=version,
                worker_id=worker_id, quota_tokens=quota_tokens, ttl_ms=ttl_ms, owner=owner,
                request=request)
            s.commit()
        return result

    def admit_in(self, s: Session, correlation_id: str, retry_token: str, tenant_id: str, *,
                 model_id: str, version: str, worker_id: str, quota_tokens: int,
                 ttl_ms: int = 60_000, owner: str = "",
                 request: infer_pb2.Infer.Request | None = None) -> ReservationResult:
        """Inside ``s`` (the caller commits; on an exception it rolls back): charge the
        tenant's quota (if it has one), reserve ``(correlation_id, retry_token)``, and
        record the job as DISPATCHED to ``worker_id``, owned by orchestrator ``owner``
        with the ``request`` as dispatched. A repeated reservation changes nothing and
        returns the first one (``created=False``); a quota that does not fit raises
        ResourceExhausted."""
        now = self._clock()
        st = self._hot
        conn = s.connection()
        if conn.execute(st.reserve, {
            "correlation_id": correlation_id, "retry_token": retry_token,
            "tenant_id": tenant_id, "worker_id": worker_id, "created_unix_ms": now,
            "expires_unix_ms": now + ttl_ms,
        }).first() is None:
            old = conn.execute(st.reservation, {"b_cid": correlation_id,
                                                "b_retry": retry_token}).one()
            return ReservationResult(correlation_id, retry_token, str(old[0]), str(old[1]),
                                     int(old[2]), False)
        charged = self._take_quota(s, tenant_id, quota_tokens, now) is not None
        if conn.execute(st.job, {
            "correlation_id": correlation_id, "tenant_id": tenant_id, "model_id": model_id,
            "version": version, "state": jobs_pb2.JOB_STATE_DISPATCHED,
            "worker_id": worker_id, "attempts": 1, "error_code": 0, "error_message": "",
            "created_unix_ms": now, "updated_unix_ms": now, "owner": owner,
            "request": None if request is None else request.SerializeToString(
                deterministic=True),
            "quota_tokens": quota_tokens if charged else 0,
        }).first() is None:
            raise AlreadyExists(f"job {correlation_id} belongs to another tenant")
        return ReservationResult(correlation_id, retry_token, tenant_id, worker_id,
                                 now + ttl_ms, True)

    @functools.cached_property
    def _hot(self) -> _HotStatements:
        return _HotStatements(self._insert)

    def _insert(self, table: type[Any]) -> Any:
        """INSERT for this database's dialect (for ON CONFLICT)."""
        return (pg_insert if self.dialect == "postgresql" else sqlite_insert)(table)

    def finish_in(self, s: Session, correlation_id: str, *, owner: str,
                  usage: infer_pb2.Usage | None = None) -> bool:
        """Inside ``s``: a running job of ``owner`` SUCCEEDED (one conditional UPDATE: False,
        the job left as it is, when another orchestrator took it over or a peer failed it
        after this one's lease ran out), and its ``usage`` is recorded (the work was done
        and delivered)."""
        now = self._clock()
        st = self._hot
        conn = s.connection()
        done = conn.execute(st.succeed, {"b_cid": correlation_id, "b_owner": owner,
                                         "b_now": now}).rowcount
        if usage is not None:
            conn.execute(st.usage, {
                "tenant_id": usage.tenant_id, "correlation_id": correlation_id,
                "model_id": usage.model_id, "version": usage.version,
                "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
                "compute_ms": usage.compute_ms, "queue_ms": usage.queue_ms,
                "recorded_unix_ms": now})
        return bool(done)

    def write_batch(self, ops: list[Callable[[Session], Any]]) -> list[Any]:
        """Run ``ops`` in ONE transaction (one commit: group commit); the result of each,
        or the exception it raised. An op that raises is undone alone: the transaction is
        rolled back and the others run again without it (failures are rare: a quota that
        does not fit, another tenant's ids; savepoints would cost every batch round trips).
        When the commit itself fails, every op's result is that exception."""
        results: dict[int, Any] = {}
        todo = list(range(len(ops)))
        while todo:
            failed = None
            try:
                with self.write_session() as s:
                    done = {}
                    for i in todo:
                        try:
                            done[i] = ops[i](s)
                        except Exception as exc:  # handed to the op's caller
                            failed = (i, exc)
                            break
                    if failed is None:
                        s.commit()
                        results.update(done)
                        todo = []
            except (OperationalError, IntegrityError) as exc:
                return [exc] * len(ops)
            if failed is not None:
                results[failed[0]] = failed[1]
                todo.remove(failed[0])
        return [results[i] for i in range(len(ops))]

    def unadmit_job(self, correlation_id: str, retry_token: str, tenant_id: str, *,
                    quota_tokens: int, error: status_pb2.Error) -> None:
        """Undo :meth:`admit_job` for a request refused before it produced anything (a
        client error, or every worker shedding it), in one transaction: the quota it was
        charged is given back (if its period has not rolled over since), the reservation
        is freed so the client may retry under the same ids, and the job is FAILED with
        ``error``. Such a request is no dead letter."""
        R, Q = t.Reservation, t.Quota
        with self.session() as s:
            reservation = s.exec(select(R).where(
                R.correlation_id == correlation_id, R.retry_token == retry_token,
                R.tenant_id == tenant_id)).first()
            if reservation is not None:
                s.exec(update(Q).where(
                    col(Q.tenant_id) == tenant_id,
                    col(Q.period_start_unix_ms) <= reservation.created_unix_ms,
                ).values(used_tokens=case(
                    (col(Q.used_tokens) > quota_tokens, col(Q.used_tokens) - quota_tokens),
                    else_=0)))
                s.delete(reservation)
            job = s.get(t.Job, correlation_id)
            if job is not None:
                job.state = jobs_pb2.JOB_STATE_FAILED
                job.error_code, job.error_message = error.code, error.message
                job.updated_unix_ms = self._clock()
                s.add(job)
            s.commit()

    # ------------------------------------------------------------------ tokens

    def issue_token(self, tenant_id: str, label: str = "") -> str:
        """Create a tenant token; only its hash is stored, so this is the only copy."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
        with self.session() as s:
            s.add(t.TenantToken(token_sha256=hash_token(token), tenant_id=tenant_id,
                                label=label, created_unix_ms=self._clock()))
            s.commit()
        return token

    def verify_token(self, token: str) -> str:
        """Return the tenant a token belongs to; Unauthenticated if unknown or revoked."""
        digest = hash_token(token)
        with self.session() as s:
            row = s.get(t.TenantToken, digest)
        if row is None or row.revoked or not hmac.compare_digest(row.token_sha256, digest):
            raise Unauthenticated("unknown or revoked tenant token")
        return row.tenant_id

    def revoke_token(self, token: str) -> None:
        with self.session() as s:
            row = s.get(t.TenantToken, hash_token(token))
            if row is None:
                raise NotFound("unknown tenant token")
            row.revoked = True
            s.add(row)
            s.commit()

    # ---------------------------------------------------------- tenant policy

    def set_tenant_e2e(self, tenant_id: str, e2e: bool) -> None:
        """Seal (or stop sealing) the tenant's requests end to end from its gateway on."""
        with self.session() as s:
            row = s.get(t.TenantPolicy, tenant_id) or t.TenantPolicy(
                tenant_id=tenant_id, updated_unix_ms=0)
            row.e2e, row.updated_unix_ms = e2e, self._clock()
            s.add(row)
            s.commit()

    def tenant_e2e(self, tenant_id: str) -> bool:
        """Whether the tenant's requests are sealed end to end (False by default)."""
        with self.session() as s:
            row = s.get(t.TenantPolicy, tenant_id)
        return bool(row is not None and row.e2e)

    # ------------------------------------------------------------- dead letters

    def dead_letter(self, request: infer_pb2.Infer.Request, error: status_pb2.Error, *,
                    worker_id: str = "") -> None:
        """Keep a failed job's request and error (the DLQ)."""
        job = self.get_job(request.correlation_id)
        with self.session() as s:
            s.add(self._dead_letter_row(request, error, worker_id or job.worker_id,
                                        job.attempts))
            s.commit()

    def _dead_letter_row(self, request: infer_pb2.Infer.Request, error: status_pb2.Error,
                         worker_id: str, attempts: int) -> t.DeadLetter:
        return t.DeadLetter(
            correlation_id=request.correlation_id, retry_token=request.retry_token,
            tenant_id=request.tenant_id, model_id=request.model_id,
            version=request.version, worker_id=worker_id,
            request=request.SerializeToString(deterministic=True),
            error_code=int(error.code), error_message=error.message,
            attempts=attempts, created_unix_ms=self._clock())

    def dead_letters(self, *, limit: int = 100) -> list[t.DeadLetter]:
        """The newest dead letters first."""
        with self.session() as s:
            return list(s.exec(select(t.DeadLetter)
                               .order_by(col(t.DeadLetter.id).desc()).limit(limit)).all())

    def get_dead_letter(self, letter_id: int) -> t.DeadLetter:
        """One dead letter; NotFound if there is none."""
        with self.session() as s:
            letter = s.get(t.DeadLetter, letter_id)
        if letter is None:
            raise NotFound(f"no dead letter {letter_id}; `tether dlq` lists them")
        return letter

    def claim_dead_letter(self, letter_id: int, retry_token: str, *,
                          again: bool = False) -> t.DeadLetter:
        """Mark a dead letter as replayed under ``retry_token`` and return it. NotFound if
        there is none; FailedPrecondition if it was replayed already (unless ``again``).
        One conditional UPDATE: two operators cannot both claim the same letter."""
        stmt = (update(t.DeadLetter)
                .where(col(t.DeadLetter.id) == letter_id)
                .values(replayed_as=retry_token, replayed_unix_ms=self._clock()))
        if not again:
            stmt = stmt.where(col(t.DeadLetter.replayed_as) == "")
        with self.session() as s:
            claimed = s.exec(stmt).rowcount
            s.commit()
            letter = s.get(t.DeadLetter, letter_id)
        if letter is None:
            raise NotFound(f"no dead letter {letter_id}; `tether dlq` lists them")
        if not claimed:
            raise FailedPrecondition(
                f"dead letter {letter_id} was replayed already, as {letter.replayed_as}; "
                "pass --again to replay it once more",
                details={"replayed_as": letter.replayed_as})
        return letter

    # ------------------------------------------------------------- admissions

    def admit_worker(self, public_key: bytes, name: str = "") -> t.AdmittedWorker:
        """Admit a worker key (again, if it was revoked); a repeat only renames it."""
        return self._set_admission(public_key, name=name, revoked=False)

    def revoke_worker(self, public_key: bytes) -> t.AdmittedWorker:
        """Revoke a worker key. Known or not, the key is kept as revoked, so that it also
        overrides an admission by the data folder (``tether.admission``)."""
        return self._set_admission(public_key, name=None, revoked=True)

    def _set_admission(self, public_key: bytes, *, name: str | None,
                       revoked: bool) -> t.AdmittedWorker:
        key, now = public_key.hex(), self._clock()
        for attempt in range(2):  # two operators at once: the loser sees the row
            try:
                with self.session() as s:
                    row = s.get(t.AdmittedWorker, key)
                    if row is None:
                        row = t.AdmittedWorker(public_key=key, admitted_unix_ms=now)
                    if name is not None:
                        row.name = name or row.name
                    if revoked and not row.revoked:
                        row.revoked, row.revoked_unix_ms = True, now
                    elif not revoked and row.revoked:
                        row.revoked, row.revoked_unix_ms, row.admitted_unix_ms = False, None, now
                    s.add(row)
                    s.commit()
                    return row
            except IntegrityError:
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def worker_admissions(self) -> list[t.AdmittedWorker]:
        """Every admitted or revoked worker key, by key."""
        with self.session() as s:
            return list(s.exec(select(t.AdmittedWorker).order_by(
                col(t.AdmittedWorker.public_key))).all())

    # ------------------------------------------------------------------- usage

    def record_usage(self, correlation_id: str, usage: infer_pb2.Usage) -> None:
        with self.session() as s:
            s.add(self._usage_row(correlation_id, usage))
            s.commit()

    def _usage_row(self, correlation_id: str, usage: infer_pb2.Usage) -> t.Usage:
        return t.Usage(tenant_id=usage.tenant_id, correlation_id=correlation_id,
                       model_id=usage.model_id, version=usage.version,
                       input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                       compute_ms=usage.compute_ms, queue_ms=usage.queue_ms,
                       recorded_unix_ms=self._clock())

    def usage_report(self, *, since_ms: int = 0, until_ms: int | None = None,
                     tenant_id: str | None = None) -> list[UsageLine]:
        """Usage recorded in ``[since_ms, until_ms)`` summed per (tenant, model, version):
        the export a billing system takes (``tether usage``)."""
        u = t.Usage
        keys = (col(u.tenant_id), col(u.model_id), col(u.version))
        query = (sa_select(*keys, func.count(), func.sum(col(u.input_tokens)),
                           func.sum(col(u.output_tokens)), func.sum(col(u.compute_ms)))
                 .where(col(u.recorded_unix_ms) >= since_ms)
                 .group_by(*keys)
                 .order_by(*keys))
        if until_ms is not None:
            query = query.where(col(u.recorded_unix_ms) < until_ms)
        if tenant_id is not None:
            query = query.where(col(u.tenant_id) == tenant_id)
        with self.session() as s:
            rows = s.execute(query).all()
        return [UsageLine(str(r[0]), str(r[1]), str(r[2]), int(r[3]), int(r[4] or 0),
                          int(r[5] or 0), int(r[6] or 0)) for r in rows]

    def usage_totals(self, tenant_id: str) -> tuple[int, int]:
        """(input tokens, output tokens) recorded for a tenant."""
        with self.session() as s:
            row = s.exec(select(func.coalesce(func.sum(t.Usage.input_tokens), 0),
                                func.coalesce(func.sum(t.Usage.output_tokens), 0))
                         .where(t.Usage.tenant_id == tenant_id)).one()
        return int(row[0]), int(row[1])


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # Each commit fsyncs the WAL: durable against power loss, not only a killed process.
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()
