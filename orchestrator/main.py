"""The Tether Orchestrator service (`bazel run //orchestrator`, `tether orchestrator`).

Serves ``tether.v1.Orchestrator`` on ``tether/control/<region>``; discovers
workers on ``tether/presence/<region>`` (and ``--watch-region`` regions),
finds the registry on ``tether/registry/<region>``, and keeps jobs and
reservations in the Metadata Store.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import trio

from orchestrator.breaker import CircuitBreakers
from orchestrator.control import ControlService
from orchestrator.discovery import DiscoverySub
from orchestrator.service import OrchestratorService
from tether import process, topics
from tether.callers import CallerPolicy, parse_key
from tether.net.swarm import SwarmNetwork
from tether.rpc import collect_handlers

DESCRIPTION = (
    "Tether Orchestrator: discovers healthy workers, scores and places requests, "
    "reserves capacity and streams chunks back."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tether orchestrator", description=DESCRIPTION)
    process.add_common_arguments(parser, "orchestrator")
    parser.add_argument(
        "--watch-region",
        action="append",
        default=[],
        help="also discover workers of this region (repeatable)",
    )
    env = os.environ.get
    parser.add_argument(
        "--breaker-failures",
        type=int,
        default=int(env("TETHER_BREAKER_FAILURES", "5")),
        help="consecutive worker failures that open a (model, region) breaker (default 5)",
    )
    parser.add_argument(
        "--breaker-open-s",
        type=float,
        default=float(env("TETHER_BREAKER_OPEN_S", "30")),
        help="seconds a breaker stays open before a probe (default 30)",
    )
    parser.add_argument(
        "--slow-first-chunk-s",
        type=float,
        default=float(env("TETHER_SLOW_FIRST_CHUNK_S", "0")) or None,
        help="also open a breaker when the p95 time to first chunk of its pool is over "
        "this many seconds (default: off)",
    )
    parser.add_argument(
        "--allow-operator",
        action="append",
        default=[],
        metavar="KEY",
        help="public key (64 hex) of an operator allowed to send control messages "
        "(repeatable; the keys in <data-dir>/keys/operator*.pub always are)",
    )
    return parser


async def serve(
    config: process.ServiceConfig,
    watch_regions: list[str],
    breakers: CircuitBreakers | None = None,
    operators: list[bytes] | None = None,
) -> None:
    store = await trio.to_thread.run_sync(config.open_store)
    network = SwarmNetwork(
        config.keypair(), {}, bootstrap=config.bootstrap, host=config.host, port=config.udp_port
    )
    discovery = DiscoverySub(network)
    service = OrchestratorService(
        callers=config.callers("gateway"),
        network=network,
        discovery=discovery,
        store=store,
        region=config.region,
        registry_topic=topics.registry(config.region),
        breakers=breakers,
    )
    control = ControlService(
        service.rollouts,
        discovery,
        region=config.region,
        operators=CallerPolicy(
            operators or [],
            keys_dir=config.data_dir / "keys",
            pattern="operator*.pub",
            role="operator",
            allow_any=config.allow_any_caller,
        ),
    )
    network.handlers.update(collect_handlers(service, control))
    process.on_stop(network.close)
    try:
        regions = list(dict.fromkeys([config.region, *watch_regions]))
        # Topics DiscoverySub looks up again periodically; model topics join it as the
        # registry lists models.
        refreshed = [topics.presence(r) for r in regions]
        async with network.running(), trio.open_nursery() as nursery:
            await nursery.start(functools.partial(discovery.run, refresh=refreshed))
            await network.join(topics.control(config.region), server=True, client=False)
            await network.join(topics.registry(config.region), server=False, client=True)
            for topic in list(refreshed):
                await network.join(topic, server=False, client=True)
            nursery.start_soon(service.follow_model_topics, regions, refreshed)
            process.announce_ready("orchestrator", network.public_key, region=config.region)
            await trio.sleep_forever()
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    args = process.parse_args(build_parser(), argv, "orchestrator")
    config = process.config_from_args(args)
    process.setup_telemetry(config)
    breakers = CircuitBreakers(
        failure_threshold=args.breaker_failures,
        open_s=args.breaker_open_s,
        slow_first_chunk_s=args.slow_first_chunk_s,
    )
    try:
        operators = [parse_key(k) for k in args.allow_operator]
    except ValueError as exc:
        raise SystemExit(f"orchestrator: --allow-operator: {exc}") from None
    trio.run(
        process.run_until_signalled,
        lambda: serve(config, args.watch_region, breakers, operators),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
