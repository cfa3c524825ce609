"""Usage as a billing system takes it: `tether usage` sums the Metadata Store per tenant
and model version over a period, and the orchestrator counts tokens as jobs finish."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
import trio.testing
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from app import cli
from tests.services.harness import MODEL, fleet, metrics_reader, points
from tests.services.test_request_path import collect, request
from tether import blocking
from tether.metadata.store import MetadataStore, sqlite_url
from tether.v1 import infer_pb2


def test_tether_usage_prints_one_line_per_tenant_and_model_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = [1_800_000_000_000]
    store = MetadataStore(sqlite_url(tmp_path / "metadata.db"), clock=lambda: now[0])
    store.migrate()
    for cid, tenant, version in (("a", "acme", "1.0"), ("b", "acme", "1.0"), ("c", "zeta", "1.1")):
        store.record_usage(cid, infer_pb2.Usage(tenant_id=tenant, model_id="kjv-textgen",
                                                version=version, input_tokens=2,
                                                output_tokens=5, compute_ms=3))
        now[0] += 86_400_000  # a day apart
    store.close()
    base = ["usage", "--data-dir", str(tmp_path)]
    assert cli.main(base) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(x["tenant"], x["model"], x["requests"], x["output_tokens"]) for x in lines] == [
        ("acme", "kjv-textgen@1.0", 2, 10), ("zeta", "kjv-textgen@1.1", 1, 5)]
    # 1_800_000_000_000 ms is 2027-01-15T08:00Z: from the second day on, by ISO date/time.
    assert cli.main([*base, "--since", "2027-01-16T08:00", "--tenant", "acme"]) == 0
    [line] = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert (line["requests"], line["since_unix_ms"]) == (1, 1_800_086_400_000)
    with pytest.raises(SystemExit) as info:
        cli.main([*base, "--since", "last tuesday"])
    assert info.value.code == 2
    assert capsys.readouterr().err.startswith(
        "tether usage: --since 'last tuesday' is neither unix ms nor an ISO")


def output_tokens(reader: InMemoryMetricReader) -> dict[str, int]:
    return {p.attributes["tenant"]: p.value for p in points(reader, "tether.tokens")
            if p.attributes["direction"] == "output" and p.attributes["model"] == f"{MODEL}@1.0"}


def test_the_orchestrator_counts_tokens_per_tenant_as_jobs_finish(tmp_path: Path) -> None:
    reader = metrics_reader()
    before = output_tokens(reader)

    async def main() -> None:
        async with fleet(tmp_path) as f:
            await f.add_worker("w1")
            await f.discovery.wait_for(lambda s: len(s) == 1)
            gw = await f.gateway()
            for tenant, n in (("acme", 3), ("acme", 2), ("globex", 4)):
                await collect(gw, request(n=n), f.token(tenant))

    with blocking.inline():
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    after = output_tokens(reader)
    grown = {t: after[t] - before.get(t, 0) for t in after if after[t] != before.get(t, 0)}
    assert grown == {"acme": 5, "globex": 4}
