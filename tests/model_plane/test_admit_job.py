"""admit_job: quota, reservation and job written in one transaction before dispatch,
on SQLite and PostgreSQL (see conftest)."""

from __future__ import annotations

import pytest

from tether.errors import AlreadyExists, FailedPrecondition, NotFound, ResourceExhausted
from tether.metadata import MetadataStore
from tether.v1 import infer_pb2, jobs_pb2, status_pb2


def admit(store: MetadataStore, cid: str, retry: str = "r1", tenant: str = "acme", tokens: int = 5):
    return store.admit_job(
        cid, retry, tenant, model_id="m", version="1.0", worker_id="w1", quota_tokens=tokens
    )


def test_admission_records_reservation_and_dispatched_job_once(store: MetadataStore) -> None:
    first = admit(store, "c1")
    assert first.created
    job = store.get_job("c1")
    assert (job.state, job.worker_id, job.attempts) == (jobs_pb2.JOB_STATE_DISPATCHED, "w1", 1)
    again = admit(store, "c1")
    assert not again.created
    assert store.get_job("c1").attempts == 1  # the repeat changed nothing
    retried = admit(store, "c1", retry="r2")
    assert retried.created
    assert store.get_job("c1").attempts == 2
    with pytest.raises(AlreadyExists):
        admit(store, "c1", retry="r3", tenant="other")


def test_a_quota_that_does_not_fit_writes_nothing(store: MetadataStore) -> None:
    store.set_quota("metered", limit_tokens=8, period_ms=3_600_000)
    assert admit(store, "q1", tenant="metered", tokens=5).created
    with pytest.raises(ResourceExhausted):
        admit(store, "q2", tenant="metered", tokens=5)
    # No reservation and no job were left behind by the refused request.
    assert admit(store, "q2", tenant="metered", tokens=3).created
    assert store.consume_quota("metered", 0) == 0


def test_failed_jobs_wait_in_the_dead_letter_queue(store: MetadataStore) -> None:
    admit(store, "d1")
    request = infer_pb2.Infer.Request(
        correlation_id="d1", retry_token="r1", tenant_id="acme", model_id="m", version="1.0"
    )
    request.input.text = "poison"
    error = status_pb2.Error(code=status_pb2.STATUS_CODE_INTERNAL, message="engine crashed")
    store.dead_letter(request, error)
    (letter,) = store.dead_letters()
    assert (letter.correlation_id, letter.worker_id, letter.attempts) == ("d1", "w1", 1)
    assert (letter.error_code, letter.error_message) == (13, "engine crashed")
    assert infer_pb2.Infer.Request.FromString(letter.request) == request


def test_a_dead_letter_is_claimed_for_replay_once(store: MetadataStore) -> None:
    admit(store, "d2")
    request = infer_pb2.Infer.Request(correlation_id="d2", retry_token="r1", tenant_id="acme")
    store.dead_letter(request, status_pb2.Error(code=status_pb2.STATUS_CODE_UNAVAILABLE))
    (letter,) = store.dead_letters()
    assert (letter.replayed_as, letter.replayed_unix_ms) == ("", None)
    letter_id = letter.id
    assert letter_id is not None
    claimed = store.claim_dead_letter(letter_id, "replay-1")
    assert claimed.replayed_as == "replay-1" and claimed.replayed_unix_ms is not None
    with pytest.raises(FailedPrecondition, match="replayed already, as replay-1"):
        store.claim_dead_letter(letter_id, "replay-2")
    assert store.claim_dead_letter(letter_id, "replay-3", again=True).replayed_as == "replay-3"
    with pytest.raises(NotFound):
        store.claim_dead_letter(letter_id + 100, "replay-4")


def test_unadmitting_gives_the_quota_back_and_frees_the_ids(store: MetadataStore) -> None:
    """A request refused after admission for the client's error or by shedding: its quota
    is refunded (not below zero, not into a later period), its ids may be used again, the
    job is FAILED with the error, and nothing is dead-lettered."""
    store.set_quota("metered", limit_tokens=10, period_ms=3_600_000)
    assert admit(store, "u1", tenant="metered", tokens=6).created
    shed = status_pb2.Error(code=status_pb2.STATUS_CODE_RESOURCE_EXHAUSTED, message="full")
    store.unadmit_job("u1", "r1", "metered", quota_tokens=6, error=shed)
    job = store.get_job("u1")
    assert (job.state, job.error.code) == (jobs_pb2.JOB_STATE_FAILED, shed.code)
    assert store.consume_quota("metered", 0) == 10
    assert store.dead_letters() == []
    assert admit(store, "u1", tenant="metered", tokens=6).created  # same ids, admitted again
    assert store.get_job("u1").state == jobs_pb2.JOB_STATE_DISPATCHED
    # A new period began since admission: the refund is not taken from it.
    store.test_clock.advance(3_600_001)  # type: ignore[attr-defined]
    assert store.consume_quota("metered", 4) == 6
    store.unadmit_job("u1", "r1", "metered", quota_tokens=6, error=shed)
    assert store.consume_quota("metered", 0) == 6
