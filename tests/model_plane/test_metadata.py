"""Metadata store on SQLite (WAL) and PostgreSQL: migrations, reservations, quotas, tokens,
jobs and usage. Every test runs on both databases (see conftest for PostgreSQL)."""

from __future__ import annotations

import threading

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlmodel import SQLModel

from tether.errors import (
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from tether.metadata import MetadataStore, hash_token
from tether.v1 import infer_pb2, jobs_pb2, status_pb2

TABLES = {"models", "model_versions", "capabilities", "policies", "artifacts", "jobs",
          "dead_letters", "orchestrator_leases",
          "reservations", "quotas", "tenant_tokens", "tenant_policies", "usage",
          "admitted_workers"}


def test_migrated_schema_matches_the_tables(store: MetadataStore) -> None:
    assert store.current_revision() == store.head_revision()
    store.check_schema()
    assert set(inspect(store.engine).get_table_names()) >= TABLES
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert diff == []


def test_downgrade_and_upgrade_again(store: MetadataStore) -> None:
    store.downgrade("base")
    assert store.current_revision() is None
    with pytest.raises(FailedPrecondition, match=r"store\.migrate\(\)"):
        store.check_schema()
    assert not TABLES & set(inspect(store.engine).get_table_names())
    store.migrate()
    store.migrate()  # idempotent
    assert store.current_revision() == store.head_revision()


def test_sqlite_uses_wal(tmp_path) -> None:
    s = MetadataStore.sqlite(tmp_path / "wal.db")
    s.migrate()
    with s.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    s.close()


def test_reservation_is_idempotent_on_correlation_and_retry_token(store: MetadataStore) -> None:
    first = store.reserve("cid-1", "try-1", "acme", worker_id="w1", ttl_ms=5000)
    again = store.reserve("cid-1", "try-1", "other", worker_id="w2")
    assert first.created and not again.created
    assert (again.tenant_id, again.worker_id) == ("acme", "w1")
    assert again.expires_unix_ms == first.expires_unix_ms
    retry = store.reserve("cid-1", "try-2", "acme")
    assert retry.created
    with store.engine.connect() as conn:
        n = conn.execute(text("SELECT count(*) FROM reservations")).scalar()
    assert n == 2


def test_quota_is_consumed_atomically_and_resets_each_period(store: MetadataStore) -> None:
    clock = store.test_clock  # type: ignore[attr-defined]
    store.set_quota("acme", limit_tokens=100, period_ms=60_000)
    assert store.consume_quota("acme", 60) == 40
    with pytest.raises(ResourceExhausted) as err:
        store.consume_quota("acme", 41)
    assert err.value.details["used"] == "60"
    assert store.consume_quota("acme", 40) == 0
    clock.advance(60_000)
    assert store.consume_quota("acme", 10) == 90
    with pytest.raises(NotFound):
        store.consume_quota("nobody", 1)


def test_tokens_are_stored_hashed_and_verified(store: MetadataStore) -> None:
    token = store.issue_token("acme", label="ci")
    assert store.verify_token(token) == "acme"
    with store.engine.connect() as conn:
        rows = conn.execute(text("SELECT token_sha256, tenant_id FROM tenant_tokens")).all()
    assert rows == [(hash_token(token), "acme")]
    assert all(token not in str(r) for r in rows)
    with pytest.raises(Unauthenticated):
        store.verify_token(token + "x")
    store.revoke_token(token)
    with pytest.raises(Unauthenticated):
        store.verify_token(token)


def test_tenant_e2e_policy_defaults_off_and_can_be_set(store: MetadataStore) -> None:
    assert store.tenant_e2e("acme") is False
    store.set_tenant_e2e("acme", True)
    assert store.tenant_e2e("acme") is True
    assert store.tenant_e2e("other") is False
    store.set_tenant_e2e("acme", False)
    assert store.tenant_e2e("acme") is False


def test_job_lifecycle_and_usage(store: MetadataStore) -> None:
    clock = store.test_clock  # type: ignore[attr-defined]
    job = store.create_job("cid-9", "acme", "kjv-textgen", "1.0")
    assert job.state == jobs_pb2.JOB_STATE_RESERVED
    with pytest.raises(AlreadyExists, match="another tenant"):
        store.create_job("cid-9", "globex", "kjv-textgen", "1.0")
    clock.advance(5)
    store.update_job("cid-9", jobs_pb2.JOB_STATE_DISPATCHED, worker_id="w1", attempt=True)
    store.update_job("cid-9", jobs_pb2.JOB_STATE_FAILED,
                     error=status_pb2.Error(code=status_pb2.STATUS_CODE_UNAVAILABLE,
                                            message="worker left"))
    got = store.get_job("cid-9")
    assert (got.state, got.worker_id, got.attempts) == (jobs_pb2.JOB_STATE_FAILED, "w1", 1)
    assert got.error.message == "worker left"
    assert got.updated_unix_ms == got.created_unix_ms + 5
    with pytest.raises(NotFound):
        store.get_job("missing")
    clock.advance(5)
    retried = store.create_job("cid-9", "acme", "kjv-textgen", "1.0")  # a new retry token
    assert (retried.state, retried.attempts) == (jobs_pb2.JOB_STATE_RESERVED, 1)
    assert retried.created_unix_ms == got.created_unix_ms and not retried.error.message
    store.record_usage("cid-9", infer_pb2.Usage(tenant_id="acme", model_id="kjv-textgen",
                                                version="1.0", input_tokens=3,
                                                output_tokens=7, compute_ms=12))
    store.record_usage("cid-10", infer_pb2.Usage(tenant_id="acme", input_tokens=1,
                                                 output_tokens=1))
    assert store.usage_totals("acme") == (4, 8)
    assert store.usage_totals("nobody") == (0, 0)


def test_concurrent_reservations_and_quota_are_atomic(store: MetadataStore) -> None:
    """Many threads race for one reservation and for one quota: exactly the allowed number
    win, on SQLite (WAL, busy timeout) and PostgreSQL alike."""
    store.set_quota("acme", limit_tokens=100, period_ms=60_000)
    created: list[bool] = []
    taken: list[int] = []

    def reserve() -> None:
        created.append(store.reserve("race", "t1", "acme").created)

    def consume() -> None:
        try:
            store.consume_quota("acme", 10)
            taken.append(10)
        except ResourceExhausted:
            pass

    threads = [threading.Thread(target=f) for f in [reserve] * 8 + [consume] * 16]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(created) == [False] * 7 + [True]
    assert sum(taken) == 100


def test_a_dead_orchestrators_jobs_are_taken_over_once_and_failed_with_their_quota_back(
    store: MetadataStore,
) -> None:
    """Jobs record their orchestrator; when its lease runs out another finds them, exactly
    one claim wins, and failing one dead-letters its stored request, gives back the quota
    it charged and ends its reservation, in one transaction."""
    clock = store.test_clock  # type: ignore[attr-defined]
    store.set_quota("acme", limit_tokens=100, period_ms=3_600_000)
    for cid in ("j1", "j2"):
        req = infer_pb2.Infer.Request(correlation_id=cid, tenant_id="acme", model_id="m",
                                      version="1.0", retry_token="t")
        req.params.seed = 7
        store.admit_job(cid, "t", "acme", model_id="m", version="1.0", worker_id="w1",
                        quota_tokens=30, owner="dead", request=req)
    assert store.consume_quota("acme", 0) == 40
    store.renew_lease("dead", ttl_ms=1000)
    store.renew_lease("live", ttl_ms=10_000)
    assert sorted(store.owned_jobs("dead")) == ["j1", "j2"]
    assert store.orphaned_jobs("live") == []  # its owner's lease still runs
    clock.advance(1000)
    assert not store.owner_alive("dead") and store.owner_alive("live")
    assert sorted(store.orphaned_jobs("live")) == [("j1", "dead"), ("j2", "dead")]
    assert store.orphaned_jobs("dead") == []  # an owner's own jobs are never orphans to it
    # Two orchestrators race for j1: one wins; the loser's conditional write is refused.
    assert store.claim_job("j1", "live", from_owner="dead")
    assert not store.claim_job("j1", "other", from_owner="dead")
    assert store.job_record("j1").owner == "live"
    assert store.job_record("j1").attempts == 2
    assert not store.update_job("j1", jobs_pb2.JOB_STATE_CANCELLED, owner="dead")
    assert store.update_job("j1", jobs_pb2.JOB_STATE_SUCCEEDED, owner="live")
    cause = status_pb2.Error(code=status_pb2.STATUS_CODE_UNAVAILABLE,
                             message="orchestrator dead stopped before the job finished")
    assert store.fail_job("j2", cause, owner="dead")
    assert not store.fail_job("j2", cause, owner="dead")  # once
    assert not store.fail_job("j1", cause, owner="live")  # it finished
    job = store.get_job("j2")
    assert job.state == jobs_pb2.JOB_STATE_FAILED and "stopped before" in job.error.message
    [letter] = store.dead_letters()
    assert letter.correlation_id == "j2" and letter.worker_id == "w1"
    assert infer_pb2.Infer.Request.FromString(letter.request).params.seed == 7
    assert store.consume_quota("acme", 0) == 70  # j2's 30 tokens are back
    assert store.reserve("j2", "t", "acme").expires_unix_ms == clock()
    assert store.orphaned_jobs("live") == [] and store.owned_jobs("dead") == []
    store.end_lease("live")
    assert not store.owner_alive("live")


def test_unreachable_database_is_unavailable_with_the_url_but_no_password() -> None:
    from model_plane_support import free_port

    url = f"postgresql+psycopg://tether:s3cret@127.0.0.1:{free_port()}/tether"
    s = MetadataStore(url)
    with pytest.raises(Unavailable, match="unreachable") as err:
        s.migrate()
    assert "127.0.0.1" in err.value.message and "s3cret" not in err.value.message
    s.close()


def test_usage_report_sums_per_tenant_and_model_version_over_a_period(
    store: MetadataStore,
) -> None:
    clock = store.test_clock  # type: ignore[attr-defined]
    start = clock()

    def use(cid: str, tenant: str, version: str, tokens: tuple[int, int]) -> None:
        store.record_usage(cid, infer_pb2.Usage(
            tenant_id=tenant, model_id="kjv-textgen", version=version, input_tokens=tokens[0],
            output_tokens=tokens[1], compute_ms=10))
        clock.advance(100)

    use("a1", "acme", "1.0", (3, 7))
    use("a2", "acme", "1.0", (1, 1))
    use("a3", "acme", "1.1", (2, 2))
    use("g1", "globex", "1.0", (5, 5))
    report = store.usage_report()
    assert [(r.tenant_id, r.version, r.requests, r.input_tokens, r.output_tokens, r.compute_ms)
            for r in report] == [("acme", "1.0", 2, 4, 8, 20), ("acme", "1.1", 1, 2, 2, 10),
                                 ("globex", "1.0", 1, 5, 5, 10)]
    # [since, until): the second and third records only.
    window = store.usage_report(since_ms=start + 100, until_ms=start + 300)
    assert [(r.tenant_id, r.version, r.requests) for r in window] == [
        ("acme", "1.0", 1), ("acme", "1.1", 1)]
    assert [r.tenant_id for r in store.usage_report(tenant_id="globex")] == ["globex"]
    assert store.usage_report(since_ms=start + 10_000) == []


def test_worker_admissions_are_kept_and_a_revocation_is_remembered(
    store: MetadataStore,
) -> None:
    a, b = bytes(range(32)), bytes(range(1, 33))
    assert store.worker_admissions() == []
    row = store.admit_worker(a, name="gpu-1")
    assert (row.public_key, row.name, row.revoked) == (a.hex(), "gpu-1", False)
    store.admit_worker(a)  # a repeat keeps the name
    revoked = store.revoke_worker(b)  # never admitted: kept as revoked all the same
    assert revoked.revoked and revoked.revoked_unix_ms is not None
    store.revoke_worker(a)
    rows = {r.public_key: r for r in store.worker_admissions()}
    assert rows[a.hex()].name == "gpu-1" and rows[a.hex()].revoked and rows[b.hex()].revoked
    store.admit_worker(a)  # admitted again
    assert not {r.public_key: r for r in store.worker_admissions()}[a.hex()].revoked
