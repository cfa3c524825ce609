"""Group commit (``tether.metadata.group``) on SQLite and PostgreSQL (see conftest):
admissions that arrive together share one transaction, each undone alone when it fails;
finalisations are written behind, with the next batch or after the linger, never before
a flush returns."""

from __future__ import annotations

import functools

import pytest
import trio
import trio.testing

from tether import blocking
from tether.errors import AlreadyExists, NotFound, ResourceExhausted
from tether.metadata import MetadataStore
from tether.metadata.group import GroupCommit
from tether.v1 import infer_pb2, jobs_pb2


def admission(store: MetadataStore, cid: str, *, tenant: str = "acme", retry: str = "r1",
              tokens: int = 5) -> functools.partial:
    return functools.partial(store.admit_in, correlation_id=cid, retry_token=retry,
                             tenant_id=tenant, model_id="m", version="1.0", worker_id="w1",
                             quota_tokens=tokens, owner="o1")


def finish(store: MetadataStore, cid: str, tokens: int = 3) -> functools.partial:
    usage = infer_pb2.Usage(tenant_id="acme", model_id="m", version="1.0",
                            output_tokens=tokens)
    return functools.partial(store.finish_in, correlation_id=cid, owner="o1", usage=usage)


def run(store: MetadataStore, body) -> None:
    async def main() -> None:
        writer = GroupCommit(store, linger_s=0.05)
        with blocking.inline():  # under the virtual clock: no thread to wait for
            await with_writer(writer)

    async def with_writer(writer: GroupCommit) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await body(writer)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_concurrent_admissions_share_one_commit_and_fail_alone(store: MetadataStore) -> None:
    store.set_quota("metered", limit_tokens=8, period_ms=3_600_000)
    results: dict[str, object] = {}

    async def body(writer: GroupCommit) -> None:
        async def admit(cid: str, tenant: str = "acme") -> None:
            try:
                results[cid] = (await writer.write(admission(store, cid, tenant=tenant))).created
            except (ResourceExhausted, AlreadyExists) as exc:
                results[cid] = type(exc).__name__

        async with trio.open_nursery() as nursery:
            nursery.start_soon(admit, "a")
            nursery.start_soon(admit, "m1", "metered")
            nursery.start_soon(admit, "m2", "metered")  # one of the two cannot fit
            nursery.start_soon(admit, "b")
        await writer.write(admission(store, "a"))  # the same ids again: nothing written
        assert writer.batches == 2 and writer.written == 5

    run(store, body)
    assert results["a"] is True and results["b"] is True
    assert sorted(map(str, (results["m1"], results["m2"]))) == ["ResourceExhausted", "True"]
    refused = "m1" if results["m1"] == "ResourceExhausted" else "m2"
    with pytest.raises(NotFound):
        store.get_job(refused)  # nothing of the refused admission was left
    assert store.get_job("a").attempts == 1
    assert store.consume_quota("metered", 0) == 3


def test_finalisations_ride_with_the_next_admission(store: MetadataStore) -> None:
    async def body(writer: GroupCommit) -> None:
        await writer.write(admission(store, "j1"))
        await writer.defer(finish(store, "j1"))
        assert writer.pending == 1
        assert store.get_job("j1").state == jobs_pb2.JOB_STATE_DISPATCHED  # not yet
        await writer.write(admission(store, "j2"))  # one commit for both
        assert writer.pending == 0 and writer.batches == 2
        assert store.get_job("j1").state == jobs_pb2.JOB_STATE_SUCCEEDED
        assert store.usage_totals("acme") == (0, 3)

    run(store, body)


def test_a_lone_finalisation_is_flushed_after_the_linger(store: MetadataStore) -> None:
    async def body(writer: GroupCommit) -> None:
        await writer.write(admission(store, "j1"))
        await writer.defer(finish(store, "j1"))
        await trio.sleep(0.01)
        assert store.get_job("j1").state == jobs_pb2.JOB_STATE_DISPATCHED
        await trio.sleep(0.05)
        assert store.get_job("j1").state == jobs_pb2.JOB_STATE_SUCCEEDED

    run(store, body)


def test_flush_returns_once_every_deferred_write_is_committed(store: MetadataStore) -> None:
    async def body(writer: GroupCommit) -> None:
        for i in range(3):
            await writer.write(admission(store, f"f{i}"))
            await writer.defer(finish(store, f"f{i}"))
        start = trio.current_time()
        await writer.flush()
        assert trio.current_time() - start < 0.05  # at once, not after the linger
        assert {store.get_job(f"f{i}").state for i in range(3)} == {
            jobs_pb2.JOB_STATE_SUCCEEDED}
        assert store.usage_totals("acme") == (0, 9)

    run(store, body)


def test_the_write_behind_queue_is_bounded(store: MetadataStore) -> None:
    async def body(_: GroupCommit) -> None:
        writer = GroupCommit(store, linger_s=10.0, max_pending=2)
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            for i in range(5):
                await writer.write(admission(store, f"b{i}"))
            start = trio.current_time()
            for i in range(5):
                await writer.defer(finish(store, f"b{i}"))
                assert writer.pending <= 2
            assert trio.current_time() - start < 10.0  # full: flushed, not lingering
            await writer.flush()
            nursery.cancel_scope.cancel()
        assert store.usage_totals("acme") == (0, 15)

    run(store, body)


def test_a_halted_writer_writes_nothing_more(store: MetadataStore) -> None:
    async def body(writer: GroupCommit) -> None:
        await writer.write(admission(store, "h1"))
        await writer.defer(finish(store, "h1"))
        writer.halt()  # a kill: what was deferred is lost, the job stays running
        await trio.sleep(1.0)
        assert store.get_job("h1").state == jobs_pb2.JOB_STATE_DISPATCHED
        assert store.owned_jobs("o1") == ["h1"]  # for the owner's restart to fail it

    run(store, body)


def test_a_stopped_writer_writes_what_was_pending(store: MetadataStore) -> None:
    async def body(_: GroupCommit) -> None:
        writer = GroupCommit(store, linger_s=10.0)
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await writer.write(admission(store, "s1"))
            await writer.defer(finish(store, "s1"))
            nursery.cancel_scope.cancel()  # a stop (not a kill) before the linger ran out
        assert store.get_job("s1").state == jobs_pb2.JOB_STATE_SUCCEEDED
        await writer.defer(finish(store, "s1"))  # not running: written at once
        assert store.usage_totals("acme") == (0, 6)

    run(store, body)


def test_a_late_finalisation_does_not_undo_a_peers_failure(store: MetadataStore) -> None:
    """A job a peer failed (this orchestrator's lease ran out) stays FAILED when this one's
    finalisation arrives after all."""
    from tether.v1 import status_pb2

    store.admit_job("late", "r1", "acme", model_id="m", version="1.0", worker_id="w1",
                    quota_tokens=5, owner="o1")
    error = status_pb2.Error(code=status_pb2.STATUS_CODE_UNAVAILABLE, message="lease ran out")
    assert store.fail_job("late", error, owner="o1")
    [result] = store.write_batch([finish(store, "late")])
    assert result is False
    assert store.get_job("late").state == jobs_pb2.JOB_STATE_FAILED


def test_flush_waits_for_the_batch_being_committed(store: MetadataStore) -> None:
    """A flush that comes while the writer commits the batch holding the last deferred
    write (no longer in the queue by then) returns only once that batch is committed."""
    import threading
    from typing import cast

    release, entered = threading.Event(), threading.Event()

    class HeldStore:
        """Test double around the real store: a commit waits until the test releases it."""

        def write_batch(self, ops: list) -> list:
            entered.set()
            release.wait(10)
            return store.write_batch(ops)

    async def main() -> None:
        store.write_batch([admission(store, "s1")])
        writer = GroupCommit(cast(MetadataStore, HeldStore()), linger_s=0.0)
        flushed = trio.Event()

        async def flush() -> None:
            await writer.flush()
            flushed.set()

        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await writer.defer(finish(store, "s1"))
            await trio.to_thread.run_sync(entered.wait, 10)  # the batch is committing
            assert writer.pending == 0
            nursery.start_soon(flush)
            await trio.testing.wait_all_tasks_blocked()
            assert not flushed.is_set()  # before the fix: returned with nothing committed
            release.set()
            with trio.fail_after(10):
                await flushed.wait()
            assert store.get_job("s1").state == jobs_pb2.JOB_STATE_SUCCEEDED
            nursery.cancel_scope.cancel()

    trio.run(main)
