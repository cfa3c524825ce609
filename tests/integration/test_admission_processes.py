"""Worker admission between real processes: the network `tether up` starts, and a second
`tether worker` with a data folder (and key) of its own.

The stranger is refused (the registry does not answer it, and it says how to admit it);
`tether admit` lets it in and it gets requests; `tether revoke` takes it out of placement
within one heartbeat period while it keeps running and announcing."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from app import cli
from app.localnet import LocalNet, local_network
from tether.admission import worker_keys_dir
from tether.client import connect_gateway

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def stranger_argv(net: LocalNet, data_dir: Path) -> list[str]:
    replicas = [str(net.data_dir / "artifacts" / f"r{i}") for i in range(3)]
    return [
        sys.executable, "-m", "worker.main", "--data-dir", str(data_dir),
        "--bootstrap", net.bootstrap_text, "--worker-id", "a-stranger",
        *[a for r in replicas for a in ("--artifacts", r)], "--model", "kjv-textgen",
    ]


def orchestrator_key(net: LocalNet) -> str:
    [key] = [p.ready["public_key"] for p in net.processes if p.name == "orchestrator"]
    return str(key)


async def workers_of(net: LocalNet) -> set[str]:
    """The workers whose chunks answer a short greedy request: one, or two when the
    request was under way on a worker that left (it resumes on another)."""
    async with connect_gateway(
        net.bootstrap, net.token, gateway_key=bytes.fromhex(net.gateway_key)
    ) as client:
        chunks = [c async for c in client.generate(
            "kjv-textgen", "And God said", max_tokens=4, greedy=True, timeout=60
        )]
    assert chunks[-1].done
    return {c.worker_id for c in chunks}


async def served_by(net: LocalNet) -> str:
    """Which worker alone answers a short greedy request ("(resumed)" when it moved to
    another worker mid-stream: its worker was revoked while it ran)."""
    workers = await workers_of(net)
    return sorted(workers)[0] if len(workers) == 1 else "(resumed)"


@pytest.mark.timeout(400)
def test_a_stranger_worker_is_refused_until_admitted_and_leaves_when_revoked(
    tmp_path: Path,
) -> None:
    shared, elsewhere = tmp_path / "shared", tmp_path / "elsewhere"
    store = ["--data-dir", str(shared)]

    async def main() -> None:
        async with local_network(shared) as net:
            assert await served_by(net) == "worker-1"
            with trio.fail_after(120):
                refused = await trio.run_process(
                    stranger_argv(net, elsewhere), capture_stdout=True, capture_stderr=True,
                    check=False, cwd=str(ROOT), env=ENV,
                )
            key = (worker_keys_dir(elsewhere) / "a-stranger.pub").read_text().strip()
            assert refused.returncode != 0 and refused.stdout == b""
            assert f"tether admit {key}".encode() in refused.stderr, refused.stderr[-2000:]

            assert cli.main(["admit", key, "--name", "a-stranger", *store]) == 0
            async with trio.open_nursery() as nursery:
                # The worker, with its own data folder, knows the orchestrator by flag.
                argv = [*stranger_argv(net, elsewhere), "--allow-caller", orchestrator_key(net)]
                proc: trio.Process = await nursery.start(functools.partial(
                    trio.run_process, argv, stdout=subprocess.PIPE, check=False,
                    cwd=str(ROOT), env=ENV,
                ))
                try:
                    # Placement prefers "a-stranger" among equals, once it is admitted.
                    with trio.fail_after(120):
                        while await served_by(net) != "a-stranger":  # noqa: ASYNC110
                            await trio.sleep(1)
                    assert cli.main(["revoke", key, *store]) == 0
                    revoked_at = trio.current_time()
                    with trio.fail_after(60):
                        while await served_by(net) != "worker-1":  # noqa: ASYNC110
                            await trio.sleep(0.5)
                    # One heartbeat period, plus this slow machine's request time.
                    assert trio.current_time() - revoked_at < 5.0 + 5.0
                    for _ in range(4):
                        assert await workers_of(net) == {"worker-1"}
                    assert proc.returncode is None  # it still runs and announces
                finally:
                    proc.terminate()

    trio.run(main)
