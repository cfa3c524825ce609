"""Workers must be admitted: a signed presence from a key no operator admitted gets no
work, a revoked key leaves placement within one heartbeat period, and the worker keys of
the orchestrator's own data folder are admitted with no setup (``tether.admission``).

The scenarios run here on the in-memory network in virtual time, and in
``tests/integration/test_admission_swarm.py`` on real Hyperswarm connections."""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
import trio
import trio.testing
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from tests.services.harness import MODEL, Fleet, ScriptedEngine, fleet, metrics_reader, points
from tether import blocking, process
from tether.admission import Admissions, claim_worker_key, worker_keys_dir
from tether.errors import FailedPrecondition, InvalidArgument
from tether.keys import KeyPair
from tether.metadata.store import MetadataStore
from tether.metadata.tables import AdmittedWorker
from tether.v1 import infer_pb2, services_pb2
from worker import main as worker_main

OpenFleet = Callable[..., AbstractAsyncContextManager[Fleet]]
Scenario = Callable[[OpenFleet], Awaitable[None]]
SCENARIOS: list[Scenario] = []


def scenario(fn: Scenario) -> Scenario:
    SCENARIOS.append(fn)
    return fn


def request(n: int = 4) -> infer_pb2.Infer.Request:
    req = infer_pb2.Infer.Request(model_id=MODEL)
    req.input.text = "a tenant's secret prompt"
    req.params.max_tokens = n
    return req


async def collect(f: Fleet, req: infer_pb2.Infer.Request) -> list[infer_pb2.Infer.Chunk]:
    gw = await f.gateway()
    async with gw.Infer(req, metadata=f.token("acme")) as chunks:
        return [c async for c in chunks]


async def until(predicate: Callable[[], bool], *, timeout: float = 30) -> None:
    """Poll a counter the code under test keeps (it has no event to wait on)."""
    with trio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.5)


def ids(f: Fleet) -> list[str]:
    return [e.worker_id for e in f.discovery.snapshot()]


@scenario
async def a_worker_under_an_unadmitted_key_gets_no_requests(open_fleet: OpenFleet) -> None:
    async with open_fleet() as f:
        # The stranger sorts first among equals, so it would be placed if it counted.
        stranger = await f.add_worker("a-stranger", admitted=False)
        admitted = await f.add_worker("w1")
        with trio.fail_after(30):
            await f.discovery.wait_for(lambda s: len(s) == 1)
        await until(lambda: f.discovery.rejected_unadmitted >= 2)  # two heartbeats at least
        for _ in range(8):
            chunks = await collect(f, request())
            assert {c.worker_id for c in chunks} == {"w1"}
        assert ids(f) == ["w1"]
        assert stranger.engine.started == 0  # type: ignore[attr-defined]
        assert admitted.engine.started == 8  # type: ignore[attr-defined]
        orchestrator = await f.orchestrator()
        fleet_view = await orchestrator.GetFleet(services_pb2.GetFleetRequest(), timeout=10)
        assert [w.worker_id for w in fleet_view.workers] == ["w1"]


@scenario
async def a_revoked_worker_leaves_placement_within_one_heartbeat_and_its_stream_moves(
    open_fleet: OpenFleet,
) -> None:
    async with open_fleet() as f:
        key = KeyPair.generate()
        slow = functools.partial(ScriptedEngine, [(MODEL, "1.0")], step_s=0.5)
        revoked = await f.add_worker("a-revoked", keypair=key, engine=slow())
        kept = await f.add_worker("b-kept", engine=slow())
        with trio.fail_after(30):
            await f.discovery.wait_for(lambda s: len(s) == 2)
        got: list[infer_pb2.Infer.Chunk] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: _extend(got, collect(f, request(n=20))))
            with trio.fail_after(30):
                await revoked.engine.running.wait()  # type: ignore[attr-defined]
            await blocking.run_sync(lambda: f.store.revoke_worker(key.public_key))
            revoked_at = trio.current_time()
            with trio.fail_after(30):
                await f.discovery.wait_for(lambda s: [e.worker_id for e in s] == ["b-kept"])
            assert trio.current_time() - revoked_at <= 5.0 + 1.0
        # The request did not end: it went on from the kept worker, chunks in order.
        assert "".join(c.payload.text for c in got) == "".join(f" w{i}" for i in range(20))
        assert got[0].worker_id == "a-revoked" and got[-1].worker_id == "b-kept"
        assert kept.engine.started == 1  # type: ignore[attr-defined]
        chunks = await collect(f, request())
        assert {c.worker_id for c in chunks} == {"b-kept"}


async def _extend(into: list[infer_pb2.Infer.Chunk], chunks: Awaitable[list]) -> None:
    into.extend(await chunks)


@scenario
async def an_admission_applies_without_restarting_anything(open_fleet: OpenFleet) -> None:
    async with open_fleet() as f:
        key = KeyPair.generate()
        await f.add_worker("w-late", keypair=key, admitted=False)
        await until(lambda: f.discovery.rejected_unadmitted >= 1)
        assert ids(f) == []
        await blocking.run_sync(lambda: f.store.admit_worker(key.public_key, name="w-late"))
        admitted_at = trio.current_time()
        with trio.fail_after(30):
            await f.discovery.wait_for(lambda s: len(s) == 1)
        assert trio.current_time() - admitted_at <= 5.0 + 1.0  # its next heartbeat
        chunks = await collect(f, request())
        assert {c.worker_id for c in chunks} == {"w-late"}


@pytest.mark.parametrize("fn", SCENARIOS, ids=[f.__name__ for f in SCENARIOS])
def test_scenario_on_the_local_network(fn: Scenario, tmp_path: Path) -> None:
    async def main() -> None:
        with blocking.inline():
            await fn(functools.partial(fleet, tmp_path))

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_unadmitted_presence_is_logged_once_per_key_not_per_heartbeat(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reader = metrics_reader()
    before = rejected_metric(reader)

    async def main() -> None:
        with blocking.inline():
            async with fleet(tmp_path) as f:
                a = await f.add_worker("a", admitted=False)
                await f.add_worker("b", admitted=False)
                await until(lambda: f.discovery.rejected_unadmitted >= 6, timeout=60)
                assert rejected_metric(reader) - before == f.discovery.rejected_unadmitted
                lines = [r.getMessage() for r in caplog.records if "unadmitted" in r.getMessage()]
                assert len(lines) == 2
                assert any(a.keypair.public_key.hex() in line for line in lines)
                assert f"tether admit {a.keypair.public_key.hex()}" in "\n".join(lines)

    caplog.set_level(logging.WARNING, logger="tether.orchestrator.discovery")
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def rejected_metric(reader: InMemoryMetricReader) -> int:
    return sum(
        p.value for p in points(reader, "tether.presence.rejected")
        if p.attributes.get("reason") == "unadmitted"
    )


def row(key: bytes, *, revoked: bool = False) -> AdmittedWorker:
    return AdmittedWorker(public_key=key.hex(), admitted_unix_ms=1, revoked=revoked)


def test_the_data_folders_worker_keys_are_admitted_unless_revoked(tmp_path: Path) -> None:
    local, stranger = KeyPair.generate(), KeyPair.generate()
    rows: list[AdmittedWorker] = []
    admissions = Admissions(lambda: rows, keys_dir=worker_keys_dir(tmp_path))

    async def main() -> None:
        with blocking.inline():
            await admissions.reload()
            assert not admissions.admits(local.public_key)
            local.save_public(worker_keys_dir(tmp_path) / "worker-1.pub")
            assert admissions.admits(local.public_key)  # a new file is read at once
            assert not admissions.admits(stranger.public_key)
            rows.append(row(local.public_key, revoked=True))
            await admissions.reload()
            assert not admissions.admits(local.public_key)  # the store's revocation wins

    trio.run(main)


def test_a_store_that_cannot_be_read_keeps_the_last_list() -> None:
    key = KeyPair.generate().public_key
    state: dict[str, object] = {"rows": [row(key)]}

    def load() -> list[AdmittedWorker]:
        if isinstance(state["rows"], Exception):
            raise state["rows"]
        return state["rows"]  # type: ignore[return-value]

    admissions = Admissions(load)

    async def main() -> None:
        with blocking.inline():
            await admissions.reload()
            assert admissions.admits(key)
            state["rows"] = ConnectionError("database down")
            await admissions.reload()
            assert admissions.admits(key)
            state["rows"] = []
            await admissions.reload()
            assert not admissions.admits(key)

    trio.run(main)


def test_tether_admit_revoke_and_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from app import cli

    data = ["--data-dir", str(tmp_path)]
    a, b, local = (KeyPair.generate() for _ in range(3))
    a.save_public(tmp_path / "a.pub")
    local.save_public(worker_keys_dir(tmp_path) / "worker-1.pub")
    assert cli.main(["admit", a.public_key.hex(), "--name", "gpu-a", *data]) == 0
    assert cli.main(["admit", str(tmp_path / "a.pub"), *data]) == 0  # a .pub file works too
    assert cli.main(["revoke", b.public_key.hex(), *data]) == 0
    capsys.readouterr()
    assert cli.main(["admit", "--list", *data]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    listed = {line["key"]: line for line in lines}
    assert listed[a.public_key.hex()]["admitted"] and listed[a.public_key.hex()]["name"] == "gpu-a"
    assert not listed[b.public_key.hex()]["admitted"]
    assert listed[local.public_key.hex()] == {
        "key": local.public_key.hex(), "name": "worker-1", "admitted": True, "by": "data folder"
    }
    # Malformed keys: one clear line, exit status 2, nothing written.
    for bad in ("abc", "zz" * 32, str(tmp_path / "missing.pub"), ""):
        assert cli.main(["admit", bad, *data]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("tether admit: ") and "\n" not in err
    assert cli.main(["revoke", "abc", *data]) == 2
    assert "not a public key (64 hex characters)" in capsys.readouterr().err
    assert cli.main(["admit", *data]) == 2  # neither a key nor --list
    store = MetadataStore.sqlite(tmp_path / "metadata.db")
    assert len(store.worker_admissions()) == 2
    store.close()


def test_two_workers_on_one_data_folder_get_their_own_keys(tmp_path: Path) -> None:
    first = claim_worker_key(tmp_path)
    second = claim_worker_key(tmp_path)
    assert (first.path.name, second.path.name) == ("worker-1.key", "worker-2.key")
    assert first.keypair.public_key != second.keypair.public_key
    assert (worker_keys_dir(tmp_path) / "worker-2.pub").read_text().strip() == (
        second.keypair.public_key.hex()
    )
    with pytest.raises(FailedPrecondition, match="in use by another running worker"):
        claim_worker_key(tmp_path, worker_id="worker-1")
    with pytest.raises(FailedPrecondition, match="in use by another running worker"):
        claim_worker_key(tmp_path, key_file=second.path)
    first.release()
    again = claim_worker_key(tmp_path)  # a restarted worker gets its key back
    assert again.path == first.path and again.keypair.public_key == first.keypair.public_key
    named = claim_worker_key(tmp_path, worker_id="gpu-a")
    assert named.path == worker_keys_dir(tmp_path) / "gpu-a.key"
    for bad in ("../x", "a/b", ".hidden", ""):
        with pytest.raises(InvalidArgument, match="cannot name a key file"):
            claim_worker_key(tmp_path, worker_id=bad)
    for claim in (second, again, named):
        claim.release()


def test_worker_processes_on_one_data_folder_get_their_own_keys_and_are_admitted_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's own start-up path (flags, key claim), one worker in another process:
    the lock is what keeps them apart. The orchestrator of that data folder admits both;
    a worker with a data folder of its own is admitted by nobody."""
    for name in ("TETHER_KEY_FILE", "TETHER_WORKER_ID"):
        monkeypatch.delenv(name, raising=False)
    shared, elsewhere = tmp_path / "shared", tmp_path / "elsewhere"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_A_KEY, str(shared)],
        stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert holder.stdout is not None
        other_key = holder.stdout.readline().strip()  # it holds worker-1 now
        assert len(other_key) == 64
        ours = worker_main.claim_key(worker_config(shared), worker_main.build_parser()
                                     .parse_args(worker_flags(shared)))
        assert ours.path == worker_keys_dir(shared) / "worker-2.key"
        assert ours.keypair.public_key.hex() != other_key
        stranger = worker_main.claim_key(worker_config(elsewhere), worker_main.build_parser()
                                         .parse_args(worker_flags(elsewhere)))
        store = MetadataStore.sqlite(tmp_path / "meta.db")
        store.migrate()
        admissions = Admissions.from_store(store, shared)

        async def main() -> None:
            with blocking.inline():
                await admissions.reload()

        trio.run(main)
        assert admissions.admits(bytes.fromhex(other_key))
        assert admissions.admits(ours.keypair.public_key)
        assert not admissions.admits(stranger.keypair.public_key)
        store.close()
        ours.release()
        stranger.release()
    finally:
        holder.communicate("", timeout=30)


HOLD_A_KEY = """
import sys
from pathlib import Path
from tether.admission import claim_worker_key
claimed = claim_worker_key(Path(sys.argv[1]))
print(claimed.keypair.public_key.hex(), flush=True)
sys.stdin.read()
"""
REPO = Path(__file__).resolve().parents[2]


def worker_flags(data_dir: Path) -> list[str]:
    return ["--bootstrap", "127.0.0.1:1", "--data-dir", str(data_dir)]


def worker_config(data_dir: Path) -> process.ServiceConfig:
    args = worker_main.build_parser().parse_args(worker_flags(data_dir))
    return process.config_from_args(args)


def test_tether_key_prints_the_key_a_worker_will_start_with(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Across machines a worker is admitted before it first starts: `tether key worker`
    makes and prints the key that `tether worker --worker-id` then claims."""
    from app import cli

    argv = ["key", "worker", "--worker-id", "w1", "--data-dir", str(tmp_path)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out.strip()
    assert cli.main(argv) == 0  # made once, printed again
    assert capsys.readouterr().out.strip() == printed
    claimed = claim_worker_key(tmp_path, worker_id="w1")
    try:
        assert claimed.keypair.public_key.hex() == printed
    finally:
        claimed.release()
    assert cli.main(["key", "gateway", "--data-dir", str(tmp_path)]) == 0
    gateway_pub = (tmp_path / "keys" / "gateway.pub").read_text().strip()
    assert capsys.readouterr().out.strip() == gateway_pub
    assert cli.main(["key", "worker", "--worker-id", "../x", "--data-dir", str(tmp_path)]) == 1
    assert "cannot name a key file" in capsys.readouterr().err
