"""Orchestrators killed (SIGKILL) and stopped (SIGTERM) during 16 streams, between real
processes: every service a ``python -m <service>.main`` process on a loopback DHT, one
SQLite store, a CPU worker running ``kjv-textgen`` greedily. The scenarios are those of
``bench/orchestrator_failover.py``, which also prints their figures."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import trio

pytestmark = [pytest.mark.interop, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "orchestrator_failover_bench", ROOT / "bench" / "orchestrator_failover.py"
)
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench  # dataclasses look their module up there
_spec.loader.exec_module(bench)


def scenario(name: str, **kw: object) -> dict:
    return trio.run(lambda: bench.run_scenario(name, ROOT, 512, 40, kw.get("drain_s")))


def test_a_killed_orchestrators_streams_continue_through_its_peer() -> None:
    f = scenario("kill-peer")
    assert f["affected"] == 0, f["errors"]
    assert f["complete_and_identical"]
    assert f["longest_pause_s"] < 10
    assert f["next_request"]["ok"] and f["next_request"]["s"] < 5
    assert f["jobs_after"]["unfinished"] == 0 and f["jobs_after"]["dead_letters"] == 0


def test_a_restarted_orchestrator_fails_and_dead_letters_what_a_kill_left() -> None:
    f = scenario("kill")
    assert f["affected"] == 16
    assert f["jobs_20s_later"]["unfinished"] == 16  # nobody else could take them
    after = f["jobs_after_restart"]
    assert after["unfinished"] == 0 and after["failed"] == 16 and after["dead_letters"] == 16
    assert "already ran: FAILED (UNAVAILABLE: orchestrator" in f["retry_same_token"]
    assert "stopped before the job finished" in f["retry_same_token"]


def test_a_stopped_orchestrator_drains_its_streams() -> None:
    f = scenario("term")
    assert f["affected"] == 0, f["errors"]
    assert f["complete_and_identical"]
    assert f["next_request"]["ok"] and f["next_request"]["s"] < 5  # loose: a loaded CI machine
    assert f["jobs_after"]["unfinished"] == 0


def test_a_drain_that_runs_out_names_the_orchestrator() -> None:
    f = scenario("term", drain_s=0.5)
    assert f["affected"] > 0
    assert all("stopped before the job finished" in e and "orchestrator" in e
               for e in f["errors"]), f["errors"]
    assert f["jobs_after"]["unfinished"] == 0
    assert f["jobs_after"]["dead_letters"] == f["affected"]
