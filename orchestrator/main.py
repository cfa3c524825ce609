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

import sys
from dataclasses import dataclass

import trio

from orchestrator.assembly import assemble
from orchestrator.breaker import CircuitBreakers
from orchestrator.control import ControlService
from orchestrator.discovery import DiscoverySub
from orchestrator.service import OrchestratorService
from tether import process, topics
from tether.admission import Admissions
from tether.callers import CallerPolicy, parse_key
from tether.metadata.group import LINGER_S
from tether.net.swarm import SwarmNetwork

DESCRIPTION = (
    "Tether Orchestrator: discovers healthy workers, scores and places requests, "
    "reserves capacity and streams chunks back."
)


def build_parser() -> process.ArgumentParser:
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
    parser.setting(
        "--breaker-failures", env="TETHER_BREAKER_FAILURES", default=5, type=failures,
        help="consecutive worker failures that open a (model, region) breaker (default 5)",
    )
    parser.setting(
        "--breaker-open-s", env="TETHER_BREAKER_OPEN_S", default=30.0, type=seconds,
        help="seconds a breaker stays open before a probe (default 30)",
    )
    parser.setting(
        "--slow-first-chunk-s", env="TETHER_SLOW_FIRST_CHUNK_S", default=0.0,
        type=off_or_seconds,
        help="also open a breaker when the p95 time to first chunk of its pool is over "
        "this many seconds (default: off)",
    )
    parser.setting(
        "--drain-timeout-s", env="TETHER_DRAIN_TIMEOUT_S", default=30.0, type=off_or_seconds,
        help="on SIGTERM, how long requests in flight may run on before they are failed "
        "(default 30)",
    )
    parser.setting(
        "--write-behind-s", env="TETHER_WRITE_BEHIND_S", default=LINGER_S, type=seconds,
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
    runtime: process.Runtime | None = None,
    write_behind_s: float = LINGER_S,
) -> None:
    runtime = runtime or process.Runtime()
    store = await trio.to_thread.run_sync(config.open_store)
    reads = config.open_read_store(store)
    network = SwarmNetwork(
        config.keypair(), {}, bootstrap=config.bootstrap, host=config.host, port=config.udp_port
    )
    discovery = DiscoverySub(network, admissions=Admissions.from_store(reads, config.data_dir))
    service = OrchestratorService(
        callers=config.callers("gateway"),
        network=network,
        discovery=discovery,
        store=store,
        read_store=reads,
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
    runtime.on_stop(network.close)

    async def drain() -> None:  # hooks run newest first: this one before the close
        await network.leave(topics.control(config.region))
        await service.drain(drain_timeout_s)

    runtime.on_stop(drain)
    try:
        assembly = assemble(service, control, discovery, [config.region, *watch_regions])
        # Jobs a previous run of this orchestrator left are failed before it serves.
        async with assembly.running(network):
            process.announce_ready("orchestrator", network.public_key, region=config.region)
            await trio.sleep_forever()
    finally:
        store.close()
        reads.close()


@dataclass(frozen=True)
class Settings:
    """The orchestrator's settings, typed and checked (:func:`configure`)."""

    common: process.ServiceConfig
    watch_regions: list[str]
    breaker_failures: int
    breaker_open_s: float
    #: None: off.
    slow_first_chunk_s: float | None
    drain_timeout_s: float
    operators: list[bytes]
    write_behind_s: float

    def breakers(self) -> CircuitBreakers:
        return CircuitBreakers(
            failure_threshold=self.breaker_failures,
            open_s=self.breaker_open_s,
            slow_first_chunk_s=self.slow_first_chunk_s,
        )


def configure(argv: list[str] | None) -> Settings:
    """The orchestrator's checked settings and operator keys (ConfigError if wrong)."""
    args, config = process.configure(build_parser(), argv, "orchestrator", store=True)
    for region in args.watch_region:
        process.region(region)
    try:
        operators = [parse_key(k) for k in args.allow_operator]
    except ValueError as exc:
        raise process.ConfigError(f"--allow-operator: {exc}") from None
    return Settings(
        common=config, watch_regions=list(args.watch_region),
        breaker_failures=args.breaker_failures, breaker_open_s=args.breaker_open_s,
        slow_first_chunk_s=args.slow_first_chunk_s or None,
        drain_timeout_s=args.drain_timeout_s, operators=operators,
        write_behind_s=args.write_behind_s,
    )


def main(argv: list[str] | None = None) -> int:
    with process.exit_on_config_error("orchestrator"):
        settings = configure(argv)
    settings.common.prepare()
    process.setup_telemetry(settings.common)
    runtime = process.Runtime(stop_timeout_s=settings.drain_timeout_s + process.STOP_TIMEOUT_S)
    return runtime.run("orchestrator", lambda: serve(
        settings.common, settings.watch_regions, settings.breakers(), settings.operators,
        settings.drain_timeout_s, runtime=runtime, write_behind_s=settings.write_behind_s))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
