"""End-to-end sealed requests (``tether.sealing``) through real service code.

Gateway -> Orchestrator -> Worker on the in-memory network double in virtual time
(and, for the scenarios marked so, on real Hyperswarm in ``tests/integration``),
with a real SQLite store. The orchestrator's ``Submit`` (and, for a client that
seals itself, the gateway's ``Infer``) is spied on: every request and chunk it
receives and sends is scanned for the prompt and the answer, as is every table
of the Metadata Store and its files on disk.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
import trio
import trio.testing
from sqlalchemy import inspect, text

from tests.services.harness import MODEL, Fleet, ScriptedEngine, fleet
from tether import blocking, operator, sealing
from tether.client import GatewayClient
from tether.errors import FailedPrecondition, Internal
from tether.keys import KeyPair
from tether.net import Peer, dial
from tether.rpc import RpcError, StatusCode
from tether.v1 import infer_pb2, jobs_pb2, services_rpc

OpenFleet = Callable[..., AbstractAsyncContextManager[Fleet]]
Scenario = Callable[[OpenFleet], Awaitable[None]]
SCENARIOS: list[Scenario] = []
#: The scenarios also run on real Hyperswarm (tests/integration/test_sealed_swarm.py).
SWARM_SCENARIOS: list[Scenario] = []

SUBMIT = "/tether.v1.Orchestrator/Submit"
GATEWAY_INFER = "/tether.v1.Gateway/Infer"
PROMPT = "PROMPT-7f3a9c: the tenant's secret question"
ANSWER_WORD = "zebra"  # the scripted engine answers " zebra0 zebra1 ..."
SECRETS = (PROMPT.encode(), ANSWER_WORD.encode())


def scenario(*, swarm: bool = False) -> Callable[[Scenario], Scenario]:
    def register(fn: Scenario) -> Scenario:
        SCENARIOS.append(fn)
        if swarm:
            SWARM_SCENARIOS.append(fn)
        return fn

    return register


def request(n: int = 4, correlation_id: str = "") -> infer_pb2.Infer.Request:
    req = infer_pb2.Infer.Request(model_id=MODEL, correlation_id=correlation_id)
    req.input.text = PROMPT
    req.params.max_tokens = n
    return req


def answer(n: int) -> str:
    return "".join(f" {ANSWER_WORD}{i}" for i in range(n))


async def collect(stub, req, metadata) -> list[infer_pb2.Infer.Chunk]:
    async with stub.Infer(req, metadata=metadata) as chunks:
        return [c async for c in chunks]


def assert_never_held(seen: list[bytes], who: str) -> None:
    assert seen, f"the spy on the {who} saw nothing"
    for message in seen:
        for secret in SECRETS:
            assert secret not in message, f"the {who} saw {secret!r} in clear"


def store_holds(f: Fleet, secret: bytes) -> list[str]:
    """Where ``secret`` is in the Metadata Store: every column of every table (text and
    blobs), and the raw bytes of the database files (SQLite and its write-ahead log)."""
    found = []
    with f.store.engine.connect() as conn:
        for table in inspect(f.store.engine).get_table_names():
            for row in conn.execute(text(f'SELECT * FROM "{table}"')):
                for value in row:
                    raw = value if isinstance(value, bytes) else str(value).encode()
                    if secret in raw:
                        found.append(table)
    database = f.store.engine.url.database
    if database:
        for suffix in ("", "-wal"):
            path = Path(database + suffix)
            if path.exists() and secret in path.read_bytes():
                found.append(path.name)
    return found


def assert_store_never_held(f: Fleet) -> None:
    for secret in SECRETS:
        assert store_holds(f, secret) == [], f"the store holds {secret!r}"


async def worker_stub(f: Fleet, worker_id: str) -> services_rpc.WorkerStub:
    """The worker as the orchestrator reaches it (the only caller workers take work from)."""
    with trio.fail_after(30):
        peer = await dial(f.orchestrator_net, f.workers[worker_id].keypair.public_key)
    return services_rpc.WorkerStub(peer.rpc)


def engine(**kw) -> ScriptedEngine:
    return ScriptedEngine([(MODEL, "1.0")], word=ANSWER_WORD, **kw)


@scenario(swarm=True)
async def a_sealed_tenants_prompt_never_reaches_the_orchestrator_or_the_store(
    open_fleet: OpenFleet,
) -> None:
    seen: list[bytes] = []
    async with open_fleet(spies={SUBMIT: seen}) as f:
        f.store.set_tenant_e2e("acme", True)
        worker_engine = engine()
        await f.add_worker("w1", engine=worker_engine)
        await f.discovery.wait_for(lambda s: len(s) == 1)
        gw = await f.gateway()
        token = f.token("acme")
        chunks = await collect(gw, request(n=4, correlation_id="job-s1"), token)
        # The client (here, of the gateway's Hyperswarm edge) gets the answer in clear ...
        assert "".join(c.payload.text for c in chunks) == answer(4)
        assert [c.seq for c in chunks] == [0, 1, 2, 3] and chunks[-1].done
        assert worker_engine.requests[-1].input.text == PROMPT  # the worker read it
        # ... while the orchestrator had ciphertext and clear metadata only.
        assert_never_held(seen, "orchestrator")
        submitted = infer_pb2.Infer.Request.FromString(seen[0])
        assert submitted.HasField("sealed") and not submitted.HasField("input")
        assert submitted.tenant_id == "acme" and submitted.correlation_id == "job-s1"
        await f.settled()  # outcomes are written behind the response
        assert f.store.get_job("job-s1").state == jobs_pb2.JOB_STATE_SUCCEEDED
        assert f.store.usage_totals("acme") == (0, 4)  # billing still works
        assert_store_never_held(f)

        # A failure dead-letters the request: the store keeps only its ciphertext.
        worker_engine.fail_with = Internal("the engine broke")
        seen.clear()
        with pytest.raises(RpcError) as info:
            await collect(gw, request(n=4, correlation_id="job-s2"), token)
        assert info.value.code == StatusCode.INTERNAL
        assert f.store.get_job("job-s2").state == jobs_pb2.JOB_STATE_FAILED
        [letter] = f.store.dead_letters()
        kept = infer_pb2.Infer.Request.FromString(letter.request)
        assert kept.HasField("sealed") and not kept.HasField("input")
        assert_never_held(seen, "orchestrator")
        assert_store_never_held(f)
        # An operator cannot replay it (it could not read it either).
        orchestrator = await f.orchestrator()
        with pytest.raises(FailedPrecondition, match="sealed request"):
            [c async for c in operator.replay(f.store, orchestrator, letter.id)]  # type: ignore[arg-type]


@scenario(swarm=True)
async def a_client_that_seals_itself_hides_the_prompt_from_the_gateway_too(
    open_fleet: OpenFleet,
) -> None:
    at_gateway: list[bytes] = []
    at_orchestrator: list[bytes] = []
    async with open_fleet(spies={GATEWAY_INFER: at_gateway, SUBMIT: at_orchestrator}) as f:
        worker_engine = engine()
        await f.add_worker("w1", engine=worker_engine)
        await f.discovery.wait_for(lambda s: len(s) == 1)
        # The tenant has no e2e policy: the client asks for it.
        client = GatewayClient(await f.gateway(), f.store.issue_token("acme"),
                               clock_ms=f.clock_ms)
        chunks = [c async for c in client.generate(MODEL, PROMPT, max_tokens=3, sealed=True)]
        assert "".join(c.payload.text for c in chunks) == answer(3)
        assert worker_engine.requests[-1].input.text == PROMPT
        assert worker_engine.requests[-1].tenant_id == "acme"
        assert_never_held(at_gateway, "gateway")
        assert_never_held(at_orchestrator, "orchestrator")
        assert_store_never_held(f)


@scenario()
async def a_sealed_stream_resumes_on_another_worker_after_a_lost_one(
    open_fleet: OpenFleet,
) -> None:
    seen: list[bytes] = []
    async with open_fleet(spies={SUBMIT: seen}) as f:
        f.store.set_tenant_e2e("acme", True)
        engines = {w: engine(step_s=0.2) for w in ("w1", "w2")}
        for worker_id, e in engines.items():
            await f.add_worker(worker_id, engine=e)
        await f.discovery.wait_for(lambda s: len(s) == 2)
        gw = await f.gateway()
        got: list[infer_pb2.Infer.Chunk] = []
        with trio.fail_after(60):
            async with gw.Infer(request(n=12, correlation_id="job-r"),
                                metadata=f.token("acme")) as chunks:
                async for c in chunks:
                    got.append(c)
                    if len(got) == 3:
                        f.kill_worker(c.worker_id)
        # The other worker had a key slot too; its sealed chunks matched the ones sent.
        assert "".join(c.payload.text for c in got) == answer(12)
        assert [c.seq for c in got] == list(range(12))
        assert len({c.worker_id for c in got}) == 2
        assert f.store.get_job("job-r").attempts == 2
        assert_never_held(seen, "orchestrator")


@scenario()
async def a_replayed_sealed_request_is_refused_by_the_worker(open_fleet: OpenFleet) -> None:
    seen: list[bytes] = []
    async with open_fleet(spies={SUBMIT: seen}) as f:
        f.store.set_tenant_e2e("acme", True)
        worker_engine = engine()
        await f.add_worker("w1", engine=worker_engine)
        await f.discovery.wait_for(lambda s: len(s) == 1)
        gw = await f.gateway()
        await collect(gw, request(n=2, correlation_id="job-p"), f.token("acme"))
        # Whoever holds the sealed request (an orchestrator, a relay, a database dump)
        # sends it to the worker again: refused, and nothing runs.
        captured = infer_pb2.Infer.Request.FromString(seen[0])
        worker = await worker_stub(f, "w1")
        with pytest.raises(RpcError) as info:
            await collect(worker, captured, {})
        assert info.value.code == StatusCode.PERMISSION_DENIED
        assert info.value.details["reason"] == "replayed"
        assert "replay" in info.value.message
        assert worker_engine.started == 1


@scenario()
async def a_request_sealed_to_another_workers_key_is_refused_clearly(
    open_fleet: OpenFleet,
) -> None:
    async with open_fleet() as f:
        for worker_id in ("w1", "w2"):
            await f.add_worker(worker_id, engine=engine())
        await f.discovery.wait_for(lambda s: len(s) == 2)
        bound = request(correlation_id="job-o")
        bound.tenant_id = "acme"
        to_w2, _ = sealing.seal_request(
            bound, [f.workers["w2"].keypair.public_key], now_ms=f.clock_ms()
        )
        with pytest.raises(RpcError) as info:
            await collect(await worker_stub(f, "w1"), to_w2, {})
        assert info.value.code == StatusCode.PERMISSION_DENIED
        assert info.value.details["reason"] == "other_worker"
        assert "sealed to other workers" in info.value.message
        # Through the gateway, a request sealed to no worker of the fleet is not placed
        # anywhere: the orchestrator says to place and seal it again.
        stranger, _ = sealing.seal_request(
            bound, [KeyPair.generate().public_key], now_ms=f.clock_ms()
        )
        with pytest.raises(RpcError) as info:
            await collect(await f.gateway(), stranger, f.token("acme"))
        assert info.value.code == StatusCode.UNAVAILABLE
        assert info.value.details["reason"] == sealing.RESEAL
        assert not any(f.workers[w].engine.started for w in ("w1", "w2"))  # type: ignore[attr-defined]


@scenario()
async def a_tampered_sealed_request_is_refused(open_fleet: OpenFleet) -> None:
    async with open_fleet() as f:
        worker_engine = engine()
        await f.add_worker("w1", engine=worker_engine)
        await f.discovery.wait_for(lambda s: len(s) == 1)
        bound = request(correlation_id="job-t")
        bound.tenant_id = "acme"
        sealed, _ = sealing.seal_request(
            bound, [f.workers["w1"].keypair.public_key], now_ms=f.clock_ms()
        )
        data = bytearray(sealed.sealed.ciphertext)
        data[40] ^= 0x80
        sealed.sealed.ciphertext = bytes(data)
        with pytest.raises(RpcError) as info:
            await collect(await worker_stub(f, "w1"), sealed, {})
        assert info.value.code == StatusCode.PERMISSION_DENIED
        assert info.value.details["reason"] == "tampered"
        assert worker_engine.started == 0


@scenario()
async def the_worker_validates_an_input_only_it_could_read(open_fleet: OpenFleet) -> None:
    async with open_fleet() as f:
        worker_engine = engine()
        await f.add_worker("w1", engine=worker_engine)
        await f.discovery.wait_for(lambda s: len(s) == 1)
        client = GatewayClient(await f.gateway(), f.store.issue_token("acme"),
                               clock_ms=f.clock_ms)
        with pytest.raises(RpcError) as info:
            [c async for c in client.generate(MODEL, "x" * 20_000, sealed=True)]
        assert info.value.code == StatusCode.INVALID_ARGUMENT
        assert "prompt longer than" in info.value.message
        assert worker_engine.started == 0


@scenario()
async def the_gateway_seals_again_when_its_workers_left_before_submit(
    open_fleet: OpenFleet,
) -> None:
    async with open_fleet() as f:
        f.store.set_tenant_e2e("acme", True)
        await f.add_worker("w1", engine=engine())
        await f.discovery.wait_for(lambda s: len(s) == 1)
        real = f.gateway_service._stub
        places: list[int] = []

        class WorkersLeftAfterPlace:
            """The orchestrator, except that its first placement names a worker that
            has left by the time the request is submitted."""

            def __init__(self, stub: services_rpc.OrchestratorStub) -> None:
                self.stub = stub

            async def Place(self, request, **kw):
                placed = await self.stub.Place(request, **kw)
                places.append(len(placed.workers))
                if len(places) == 1:
                    del placed.workers[:]
                    placed.workers.add(worker_id="gone", pub_key=KeyPair.generate().public_key)
                return placed

            def Submit(self, *args, **kw):
                return self.stub.Submit(*args, **kw)

        def stub(peer: Peer) -> WorkersLeftAfterPlace:
            return WorkersLeftAfterPlace(real(peer))

        f.gateway_service._stub = stub  # type: ignore[method-assign,assignment]
        chunks = await collect(await f.gateway(), request(n=3), f.token("acme"))
        assert "".join(c.payload.text for c in chunks) == answer(3)
        assert places == [1, 1]


def test_the_http_edge_seals_for_a_sealed_tenant(tmp_path: Path) -> None:
    from tests.services.test_http_edge import exchange, in_fleet, raw_request

    seen: list[bytes] = []

    async def body(f: Fleet, api) -> None:
        f.store.set_tenant_e2e("acme", True)
        ask = {"model": MODEL, "prompt": PROMPT, "max_tokens": 3}
        [reply] = await exchange(
            api, raw_request("POST", "/v1/completions", ask, f.store.issue_token("acme"))
        )
        assert reply.status == 200
        assert reply.json()["choices"][0]["text"] == " w0 w1 w2"
        assert_never_held(seen, "orchestrator")
        assert_store_never_held(f)

    in_fleet(tmp_path, body, spies={SUBMIT: seen})


@pytest.mark.parametrize("fn", SCENARIOS, ids=[f.__name__ for f in SCENARIOS])
def test_sealed_scenario_on_the_local_network(fn: Scenario, tmp_path: Path) -> None:
    async def main() -> None:
        await fn(functools.partial(fleet, tmp_path))

    with blocking.inline():
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_tether_token_e2e_sets_the_tenants_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from app import cli
    from tether.metadata.store import MetadataStore, sqlite_url

    base = ["token", "--tenant", "acme", "--data-dir", str(tmp_path)]
    assert cli.main([*base, "--e2e"]) == 0
    token = capsys.readouterr().out.strip()
    store = MetadataStore(sqlite_url(tmp_path / "metadata.db"))
    try:
        assert store.verify_token(token) == "acme" and store.tenant_e2e("acme")
        assert cli.main(base) == 0  # another token; the policy stays
        assert store.tenant_e2e("acme")
        assert cli.main([*base, "--no-e2e"]) == 0
        assert not store.tenant_e2e("acme")
    finally:
        store.close()
