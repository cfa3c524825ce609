"""A worker in a process of its own (``python -m tests.integration.worker_process``), so that
tests can kill it for real (SIGKILL: no goodbye on any connection). It runs the real
``WorkerService`` on a real ``SwarmNetwork``; only its engine is the harness's
``ScriptedEngine`` test double. It prints one line, ``ready``, once it has announced.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import trio

from tests.services.harness import MODEL, VERSION, ScriptedEngine, wall_ms
from tether.callers import CallerPolicy
from tether.keys import KeyPair
from tether.net.swarm import SwarmNetwork, parse_address
from worker.assembly import assemble
from worker.service import WorkerConfig, WorkerService


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", action="append", required=True)
    parser.add_argument("--orchestrator-key", required=True)
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--region", default="eu-west")
    parser.add_argument("--step-s", type=float, default=0.05)
    parser.add_argument("--key-file", required=True, help="the worker's key (admitted by the test)")
    args = parser.parse_args(argv)
    engine = ScriptedEngine([(MODEL, VERSION)], step_s=args.step_s)
    keypair = KeyPair.load_or_generate(Path(args.key_file))
    service = WorkerService(
        WorkerConfig(worker_id=args.worker_id, region=args.region, slots=16),
        engine,
        keypair,
        clock_ms=wall_ms,
        callers=CallerPolicy([bytes.fromhex(args.orchestrator_key)], role="orchestrator"),
    )
    net = SwarmNetwork(keypair, {}, bootstrap=[parse_address(b) for b in args.bootstrap])
    async with net.running():
        await assemble(service, args.region, engine.models).run(net)
        print("ready", flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, sys.argv[1:])
