"""The Tether Orchestrator service (`bazel run //orchestrator`, `tether orchestrator`).

Serves ``tether.v1.Orchestrator`` on ``tether/control/<region>``; discovers
workers on ``tether/presence/<region>`` (and ``--watch-region`` regions),
finds the registry on ``tether/registry/<region>``, and keeps jobs and
reservations in the Metadata Store, under a lease that says it is alive. Only
admitted workers get work (``tether.admission``: the store's ``tether admit`` list,
and the worker keys of its own data folder). SIGINT/SIGTERM drain it: it leaves the
control topic and refuses new requests, lets those in flight finish for up to
``--drain-timeout-s``, and fails the rest naming itself as the cause.
"""

from __future__ import annotations

import argparse
import functools
import sys

import trio

from orchestrator.breaker import CircuitBreakers
from orchestrator.control import ControlService
from orchestrator.discovery import DiscoverySub
from orchestrator.service import OrchestratorService
from tether import process, topics
from tether.admission import Admissions
from tether.callers import CallerPolicy, parse_key
from tether.metadata.group import LINGER_S
from tether.net.swarm import SwarmNetwork
from tether.rpc import collect_handlers

DESCRIPTION = (
    "Tether Orchestrator: discovers healthy workers, scores and places requests, "
    "reserves capacity and streams chunks back."
)


def build_parser() -> argparse.ArgumentParser:
    parser = process.ArgumentParser(prog="tether orchestrator", description=DESCRIPTION)
    process.add_common_arguments(parser, "orchestrator")
    parser.add_argument(
        "--watch-region",
        action="append",
        default=[],
        help="also discover workers of this region (repeatable)",
    )
    failures, seconds, off_or_seconds = process.whole(1), process.positive(), process.positive(
        zero=True)
    parser.add_argument(
        "--breaker-failures",
        type=failures,
        default=process.env_value("TETHER_BREAKER_FAILURES", "5", failures),
        help="consecutive worker failures that open a (model, region) breaker (default 5)",
    )
    parser.add_argument(
        "--breaker-open-s",
        type=seconds,
        default=process.env_value("TETHER_BREAKER_OPEN_S", "30", seconds),
        help="seconds a breaker stays open before a probe (default 30)",
    )
    parser.add_argument(
        "--slow-first-chunk-s",
        type=off_or_seconds,
        default=process.env_value("TETHER_SLOW_FIRST_CHUNK_S", "0", off_or_seconds),
        help="also open a breaker when the p95 time to first chunk of its pool is over "
        "this many seconds (default: off)",
    )
    parser.add_argument(
        "--drain-timeout-s",
        type=off_or_seconds,
        default=process.env_value("TETHER_DRAIN_TIMEOUT_S", "30", off_or_seconds),
        help="on SIGTERM, how long requests in flight may run on before they are failed "
        "(default 30)",
    )
    parser.add_argument(
        "--write-behind-s",
        type=seconds,
        default=process.env_value("TETHER_WRITE_BEHIND_S", str(LINGER_S), seconds),
        help="how long a finished job's outcome and usage may wait to ride with the next "
        f"admission's commit before they are written alone (default {LINGER_S:g}); a crash "
        "within it fails the job instead (see the orchestrator's README)",
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
    drain_timeout_s: float = 30.0,
    *,
    write_behind_s: float = LINGER_S,
) -> None:
    store = await trio.to_thread.run_sync(config.open_store)
    network = SwarmNetwork(
        config.keypair(), {}, bootstrap=config.bootstrap, host=config.host, port=config.udp_port
    )
    discovery = DiscoverySub(network, admissions=Admissions.from_store(store, config.data_dir))
    service = OrchestratorService(
        callers=config.callers("gateway"),
        network=network,
        discovery=discovery,
        store=store,
        region=config.region,
        registry_topic=topics.registry(config.region),
        breakers=breakers,
    )
    service.writer.linger_s = write_behind_s
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

    async def drain() -> None:  # hooks run newest first: this one before the close
        await network.leave(topics.control(config.region))
        await service.drain(drain_timeout_s)

    process.on_stop(drain)
    try:
        regions = list(dict.fromkeys([config.region, *watch_regions]))
        # Topics DiscoverySub looks up again periodically; model topics join it as the
        # registry lists models.
        refreshed = [topics.presence(r) for r in regions]
        async with network.running(), trio.open_nursery() as nursery:
            await nursery.start(functools.partial(discovery.run, refresh=refreshed))
            # Jobs a previous run of this orchestrator left are failed before it serves.
            await nursery.start(service.keep_lease)
            await nursery.start(service.writer.run)
            await network.join(topics.control(config.region), server=True, client=False)
            await network.join(topics.registry(config.region), server=False, client=True)
            for topic in list(refreshed):
                await network.join(topic, server=False, client=True)
            nursery.start_soon(service.follow_model_topics, regions, refreshed)
            process.announce_ready("orchestrator", network.public_key, region=config.region)
            await trio.sleep_forever()
    finally:
        store.close()


def configure(
    argv: list[str] | None,
) -> tuple[argparse.Namespace, process.ServiceConfig, list[bytes]]:
    """The orchestrator's checked settings and operator keys (ConfigError if wrong)."""
    args, config = process.configure(build_parser(), argv, "orchestrator", store=True)
    for region in args.watch_region:
        process.region(region)
    try:
        operators = [parse_key(k) for k in args.allow_operator]
    except ValueError as exc:
        raise process.ConfigError(f"--allow-operator: {exc}") from None
    return args, config, operators


def main(argv: list[str] | None = None) -> int:
    with process.exit_on_config_error("orchestrator"):
        args, config, operators = configure(argv)
    process.setup_telemetry(config)
    breakers = CircuitBreakers(
        failure_threshold=args.breaker_failures,
        open_s=args.breaker_open_s,
        slow_first_chunk_s=args.slow_first_chunk_s or None,
    )
    return process.run_service(
        "orchestrator",
        lambda: serve(config, args.watch_region, breakers, operators, args.drain_timeout_s,
                      write_behind_s=args.write_behind_s),
        stop_timeout_s=args.drain_timeout_s + process.STOP_TIMEOUT_S,
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
